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
import pytest

from gateway.media.audio import load_wav
from gateway.pipeline.bot import BaseBot, CallControl, Utterance
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import BotSession, session_factory
from gateway.recording import recording_name
from gateway.recording.call import clock_offset
from gateway.recording.ogg import ogg_crc, self_delimited

from .conftest import API_KEY, AUDIO, answered_call, start_stack, stop_stack

CALLER = load_wav(AUDIO / "cards-001.wav")
BOT = load_wav(AUDIO / "cards-002.wav")


class AnswerBot(BaseBot):
    """Answers the caller's turn with a different recording; notes its frames as they left."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, int]] = []  # (wall time, pts)

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        assert isinstance(call, BotSession)
        playout = call.call.playout
        inner = playout.on_frame_sent

        def sent(pts: int, is_speech: bool) -> None:
            if is_speech:
                self.sent.append((time.time(), pts))
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


def matches(channel: np.ndarray, reference: np.ndarray) -> tuple[float, int, float]:
    """Where the first voiced 0.5 s of ``reference`` is in ``channel`` (s), which frame of the
    reference that piece starts at, and how well the whole is there: the median correlation
    of its voiced pieces, each found near where it should be (on a loaded machine the playout
    may skip a few frames, which shifts the rest of the speech)."""
    size = 8000
    ref = reference.astype(np.float64)
    energy = float(np.mean(ref**2))
    voiced = [
        s
        for s in range(0, len(ref) - size + 1, size)
        if np.mean(ref[s : s + size] ** 2) > 0.1 * energy
    ]
    first = voiced[0]
    lag, _ = best_match(channel, ref[first : first + size])
    start = lag - first / 16000
    scores = []
    for piece in voiced:
        lo = max(0, int(16000 * start) + piece - 1600)
        hi = min(len(channel), lo + size + 11200)
        if hi - lo < size:
            scores.append(0.0)
            continue
        scores.append(best_match(channel[lo:hi], ref[piece : piece + size])[1])
    return lag, first // 320, float(np.median(scores))


async def test_recorded_call_is_stereo_aligned_and_served(tmp_path: Path) -> None:
    bot = AnswerBot()
    stack = await start_stack(
        session=session_factory(lambda: bot, default_tts()),
        api_key=API_KEY,
        env={"GATEWAY_RECORDINGS_DIR": str(tmp_path)},
    )
    try:
        call = await answered_call(stack)
        recordings = stack.gateway.recordings
        assert recordings is not None
        live = recordings.live(call.call_id)
        assert live is not None

        spoke: list[tuple[float, int]] = []  # the caller's speech frames: (wall time, pts)

        def user_sent(pts: int, is_speech: bool) -> None:
            if is_speech:
                spoke.append((time.time(), pts))

        call.playout.on_frame_sent = user_sent
        await call.play(CALLER).wait()
        async with asyncio.timeout(20):
            while not bot.sent:
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
    left_lag, left_frame, left_r = matches(left, CALLER)
    right_lag, right_frame, right_r = matches(right, BOT)
    assert left_r > 0.6 and right_r > 0.6, (left_r, right_r)
    assert matches(left, BOT)[2] < 0.3 and matches(right, CALLER)[2] < 0.3

    # Each side sits where it happened: within 20 ms of each other, whatever the offset.
    # Where those frames belong, from the senders' own clocks: on each sender's RTP timeline
    # (the one the far end plays), anchored at its least-late frame (a stalled loop sends
    # some frames late, then skips RTP time).
    def expected(frames: list[tuple[float, int]], index: int) -> float:
        anchor = min(sent - pts / 48000 for sent, pts in frames)
        return anchor + frames[index][1] / 48000 - live.started_wall

    expect_left = expected(spoke, left_frame)
    expect_right = expected(bot.sent, right_frame)
    assert abs((right_lag - left_lag) - (expect_right - expect_left)) <= 0.02
    assert abs(left_lag - expect_left) <= 0.04 and abs(right_lag - expect_right) <= 0.04


def test_the_loop_to_wall_offset_survives_a_preemption_between_the_reads() -> None:
    # The bot's channel is placed by loop time brought to wall time, the caller's by wall
    # time: an offset read across a 150 ms preemption would put them 150 ms apart.
    wall = [1000.0]
    preempted = [True]

    def loop_clock() -> float:
        if preempted[0]:
            preempted[0] = False
            wall[0] += 0.150  # descheduled between the first wall read and this one
        return wall[0] - 995.0

    now, offset = clock_offset(loop_clock, lambda: wall[0])
    assert offset == pytest.approx(995.0, abs=0.001) and now == wall[0]


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
