"""Call recordings: a real sandbox call gives a stereo Ogg Opus file, caller left, bot right,
aligned in time, as long as the call, served behind the API key."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import av
import httpx
import numpy as np

from gateway.calls import CallState
from gateway.media.audio import load_wav
from gateway.pipeline.bot import BaseBot, CallControl, Utterance
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import BotSession, session_factory
from gateway.recording import recording_name
from gateway.recording.ogg import ogg_crc, self_delimited
from gateway.sandbox.user import SimulatedUser

from .conftest import API_KEY, AUDIO, start_stack, stop_stack

CALLER = load_wav(AUDIO / "cards-001.wav")
BOT = load_wav(AUDIO / "cards-002.wav")


class AnswerBot(BaseBot):
    """Answers the caller's turn with a different recording, and notes when it started."""

    def __init__(self) -> None:
        self.first_frame_at: float | None = None

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        assert isinstance(call, BotSession)
        playout = call.call.playout
        inner = playout.on_frame_sent

        def sent(pts: int, is_speech: bool) -> None:
            if is_speech and self.first_frame_at is None:
                self.first_frame_at = time.time()
            if inner is not None:
                inner(pts, is_speech)

        playout.on_frame_sent = sent
        await call.play(BOT, interruptible=False)


def decode_stereo(data: bytes) -> np.ndarray:
    """The file decoded by FFmpeg (PyAV) to 16 kHz, shape (2, samples)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus" and stream.channels == 2
        resampler = av.AudioResampler(format="s16p", layout="stereo", rate=16000)
        chunks = [
            out.to_ndarray()
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
    return np.concatenate(chunks, axis=1).astype(np.float64)


def best_match(channel: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(lag in seconds, correlation coefficient) where ``reference`` best fits in ``channel``."""
    ref = reference.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(channel) + len(ref))))
    corr = np.fft.irfft(np.fft.rfft(channel, n) * np.conj(np.fft.rfft(ref, n)), n)
    lag = int(np.argmax(corr[: len(channel) - len(ref) + 1]))
    segment = channel[lag : lag + len(ref)]
    r = float(np.dot(segment, ref) / (np.linalg.norm(segment) * np.linalg.norm(ref) + 1e-9))
    return lag / 16000, r


async def test_recorded_call_is_stereo_aligned_and_served(tmp_path: Path) -> None:
    bot = AnswerBot()
    stack = await start_stack(
        session=session_factory(lambda: bot, default_tts()),
        api_key=API_KEY,
        env={"GATEWAY_RECORDINGS_DIR": str(tmp_path)},
    )
    try:
        call = await SimulatedUser(stack.sandbox, "15551230001", "Ana").place_call()
        async with asyncio.timeout(15):
            await call.media_up.wait()
            while stack.gateway.calls.get(call.call_id).state is not CallState.ACTIVE:
                await asyncio.sleep(0.01)
        recordings = stack.gateway.recordings
        assert recordings is not None
        live = recordings.live(call.call_id)
        assert live is not None

        spoke_at: list[float] = []

        def user_sent(pts: int, is_speech: bool) -> None:
            if is_speech and not spoke_at:
                spoke_at.append(time.time())

        call.playout.on_frame_sent = user_sent
        await call.play(CALLER).wait()
        async with asyncio.timeout(20):
            while bot.first_frame_at is None:
                await asyncio.sleep(0.05)
        await asyncio.sleep(len(BOT) / 16000 + 0.5)  # the bot's answer plays out
        await call.hang_up()
        gw = stack.gateway.calls.history
        async with asyncio.timeout(10):
            while call.call_id not in gw:
                await asyncio.sleep(0.01)
            await recordings.wait(call.call_id)
        record = gw[call.call_id]
        assert record.recording == str(tmp_path / recording_name(call.call_id))

        async with httpx.AsyncClient(base_url=stack.gateway.url) as client:
            url = f"/calls/{call.call_id}/recording"
            assert (await client.get(url)).status_code == 401
            response = await client.get(url, headers={"Authorization": f"Bearer {API_KEY}"})
            missing = await client.get(
                "/calls/wacid.nope/recording", headers={"Authorization": f"Bearer {API_KEY}"}
            )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("audio/ogg")
        assert missing.status_code == 404
    finally:
        await stop_stack(stack)

    audio = decode_stereo(response.content)
    left, right = audio
    # As long as the call (answer to end), to a frame or two.
    assert record.accepted_at is not None and record.ended_at is not None
    assert abs(audio.shape[1] / 16000 - (record.ended_at - record.accepted_at)) < 0.1

    # The caller's words are on the left and only there; the bot's on the right.
    left_lag, left_r = best_match(left, CALLER)
    right_lag, right_r = best_match(right, BOT)
    assert left_r > 0.6 and right_r > 0.6, (left_r, right_r)
    assert best_match(left, BOT)[1] < 0.3 and best_match(right, CALLER)[1] < 0.3

    # Each side sits where it happened: within 20 ms of each other, whatever the offset.
    expect_left = spoke_at[0] - live.started_wall
    expect_right = bot.first_frame_at - live.started_wall
    assert abs((right_lag - left_lag) - (expect_right - expect_left)) <= 0.02
    assert abs(left_lag - expect_left) <= 0.04 and abs(right_lag - expect_right) <= 0.04


def test_self_delimited_framing() -> None:
    # Code 0: a length byte after the TOC; two bytes from 252 on (RFC 6716 B).
    assert self_delimited(bytes([0x08, 1, 2, 3])) == bytes([0x08, 3, 1, 2, 3])
    long = bytes([0x08]) + bytes(300)
    framed = self_delimited(long)
    assert framed[1] == 252 + (300 & 3) and framed[1] + 4 * framed[2] == 300
    # Code 1 (two equal frames): one length, of each frame.
    assert self_delimited(bytes([0x09, 7, 7, 8, 8])) == bytes([0x09, 2, 7, 7, 8, 8])
    # Code 3 CBR with 2 frames of 2 bytes.
    assert self_delimited(bytes([0x0B, 0x02, 1, 2, 3, 4])) == bytes([0x0B, 0x02, 2, 1, 2, 3, 4])


def test_ogg_crc_matches_ffmpeg() -> None:
    # A page written by FFmpeg's Ogg muxer carries the checksum libogg computes.
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = buffer.getvalue()
    pages = 0
    at = 0
    while at < len(data):
        assert data[at : at + 4] == b"OggS"
        segments = data[at + 26]
        end = at + 27 + segments + sum(data[at + 27 : at + 27 + segments])
        page = data[at:end]
        assert ogg_crc(page[:22] + bytes(4) + page[26:]) == int.from_bytes(page[22:26], "little")
        at, pages = end, pages + 1
    assert pages >= 3


def test_recording_names_are_safe() -> None:
    assert recording_name("wacid.ABC_1-2") == "wacid.ABC_1-2.ogg"
    unsafe = recording_name("../../etc/passwd")
    assert "/" not in unsafe and not unsafe.startswith(".")
    assert recording_name("a/b") != recording_name("a_b")
