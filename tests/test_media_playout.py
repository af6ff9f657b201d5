"""PlayoutTrack: pacing, speech and silence, playbacks, barge-in."""

from __future__ import annotations

import asyncio
import fractions
import functools
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusEncoder as AiortcOpusEncoder
from aiortc.mediastreams import MediaStreamError
from numpy.typing import NDArray

import gateway.media.playout
from gateway.media.audio import FRAME_SAMPLES, frame_rms, load_wav
from gateway.media.frameclock import FrameClock, frame_clock
from gateway.media.opus import OpusDecoder, OpusEncoder, frames_for, silence_packet
from gateway.media.playout import PlayoutTrack

from .virtual_clock import on_virtual_clock, stall

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"


@pytest.fixture(scope="module")
def speech() -> NDArray[np.int16]:
    return load_wav(AUDIO / "cards-005.wav")


async def collect(track: PlayoutTrack, count: int) -> list[av.Packet]:
    return [await track.recv() for _ in range(count)]


@on_virtual_clock
async def test_idle_track_sends_silence_on_time() -> None:
    track = PlayoutTrack()
    loop = asyncio.get_running_loop()
    times = []
    packets = []
    for _ in range(6):
        packets.append(await track.recv())
        times.append(loop.time())
    assert [bytes(p) for p in packets] == [silence_packet()] * 6
    assert [p.pts for p in packets] == [0, 960, 1920, 2880, 3840, 4800]
    assert all(p.time_base == fractions.Fraction(1, 48000) for p in packets)
    # On time: frame k leaves k frames after the first was due (on the loop's frame
    # grid), never ahead of schedule (a track that bursts would be), nor behind.
    start = track._start
    assert start is not None
    assert [t - start for t in times] == pytest.approx([k * 0.020 for k in range(6)])
    stats = track.stats
    assert (stats.frames_sent, stats.speech_frames, stats.silence_frames) == (6, 0, 6)
    assert not track.is_playing


@on_virtual_clock
async def test_the_first_frame_is_due_at_the_time_the_poller_read() -> None:
    # A tick's callbacks all get the loop time the tick ran at; by the time a late one
    # polls a new track, the loop's clock may have passed the next grid line. The first
    # frame is due on the grid line at or before the time the poller was given.
    loop = asyncio.get_running_loop()
    track = PlayoutTrack()
    now = loop.time() - 0.025  # the tick ran 25 ms ago
    frame = track.poll(now)
    assert frame is not None and frame[1] == 0
    assert track.started_at is not None and now - 0.020 < track.started_at <= now


@on_virtual_clock
async def test_aiortc_packs_our_packets_with_pts_as_timestamp() -> None:
    track = PlayoutTrack()
    await track.recv()
    packet = await track.recv()
    payloads, timestamp = AiortcOpusEncoder().pack(packet)
    assert payloads == [silence_packet()]
    assert timestamp == 960


@on_virtual_clock
async def test_play_sends_the_speech_then_silence(speech: NDArray[np.int16]) -> None:
    pcm = speech[16000:32000]  # one second, mid-sentence
    track = PlayoutTrack()
    playback = track.play(pcm)
    count = frames_for(len(pcm))
    assert playback.frames == count
    assert track.is_playing

    packets = await collect(track, count)
    assert playback.done.done()
    assert playback.frames_sent == count
    assert not playback.interrupted
    assert not track.is_playing
    assert await playback.wait() is playback
    assert bytes(await track.recv()) == silence_packet()

    # Encoded frame by frame, it is exactly what one encoder makes of the whole.
    assert [bytes(p) for p in packets] == OpusEncoder().encode_pcm(pcm)
    decoder = OpusDecoder()
    decoded = np.concatenate([decoder.decode(bytes(p)) for p in packets])[119:]
    n = min(len(decoded), len(pcm))
    assert np.corrcoef(frame_rms(decoded[:n]), frame_rms(pcm[:n]))[0, 1] > 0.95
    stats = track.stats
    assert (stats.speech_frames, stats.silence_frames) == (count, 1)


@on_virtual_clock
async def test_pcm_is_encoded_lazily_one_frame_per_recv(
    speech: NDArray[np.int16], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = []

    class CountingEncoder(OpusEncoder):
        def encode(self, frame: NDArray[np.int16]) -> bytes:
            encoded.append(len(frame))
            return super().encode(frame)

    monkeypatch.setattr(gateway.media.playout, "OpusEncoder", CountingEncoder)
    track = PlayoutTrack()
    track.play(speech)  # 3.5 s
    assert encoded == []
    for sent in range(1, 4):
        await track.recv()
        assert encoded == [FRAME_SAMPLES] * sent


@on_virtual_clock
async def test_play_packets_and_queue_order(speech: NDArray[np.int16]) -> None:
    prompt = OpusEncoder().encode_pcm(speech[:3200])
    track = PlayoutTrack()
    first = track.play_packets(prompt)
    second = track.play(speech[:1600])
    third = track.play_packets(prompt[:2])
    packets = [bytes(p) for p in await collect(track, len(prompt) + frames_for(1600) + 2 + 1)]
    assert packets[: len(prompt)] == prompt
    assert packets[len(prompt) : -3] == OpusEncoder().encode_pcm(speech[:1600])
    assert packets[-3:] == [*prompt[:2], silence_packet()]
    assert all(p.done.done() and not p.interrupted for p in (first, second, third))


@on_virtual_clock
async def test_empty_playback_is_done_at_once() -> None:
    track = PlayoutTrack()
    playback = track.play(np.zeros(0, dtype=np.int16))
    assert playback.done.done()
    assert (playback.frames, playback.interrupted) == (0, False)
    assert not track.is_playing
    with pytest.raises(ValueError):
        track.play(np.zeros(320, dtype=np.float32))


@on_virtual_clock
async def test_flush_drops_the_queue_at_the_next_frame(speech: NDArray[np.int16]) -> None:
    track = PlayoutTrack()
    long = track.play(speech)
    queued = track.play_packets([silence_packet()] * 7)
    await collect(track, 5)
    dropped = track.flush()
    assert dropped == frames_for(len(speech)) - 5 + 7
    assert long.interrupted
    assert long.frames_sent == 5
    assert queued.interrupted
    assert queued.frames_sent == 0
    assert long.done.done() and queued.done.done()
    assert not track.is_playing
    assert bytes(await track.recv()) == silence_packet()
    assert track.flush() == 0
    assert track.stats.speech_frames == 5


@on_virtual_clock
async def test_pause_sends_silence_and_resume_goes_on_where_it_stopped(
    speech: NDArray[np.int16],
) -> None:
    track = PlayoutTrack()
    playback = track.play(speech)
    total = frames_for(len(speech))
    await collect(track, 10)
    track.pause()
    assert track.paused and track.is_playing
    held = await collect(track, 6)
    assert [bytes(p) for p in held] == [silence_packet()] * 6
    assert playback.frames_sent == 10 and not playback.done.done()
    track.resume()
    assert not track.paused
    await collect(track, total - 10)
    assert playback.done.done() and not playback.interrupted
    assert playback.frames_sent == total
    assert playback.pauses == [(10, 6)]
    stats = track.stats
    assert (stats.speech_frames, stats.silence_frames) == (total, 6)


@on_virtual_clock
async def test_resumed_speech_is_the_rest_of_the_audio(speech: NDArray[np.int16]) -> None:
    # What the caller hears after a pause is the same audio, from the same place.
    decoder = OpusDecoder()
    track = PlayoutTrack()
    track.play(speech)
    heard = [decoder.decode(bytes(p)) for p in await collect(track, 40)]
    track.pause()
    for packet in await collect(track, 5):
        decoder.decode(bytes(packet))
    track.resume()
    heard += [decoder.decode(bytes(p)) for p in await collect(track, frames_for(len(speech)) - 40)]
    got = frame_rms(np.concatenate(heard))
    want = frame_rms(speech)
    n = min(len(got), len(want))
    assert np.corrcoef(got[:n], want[:n])[0, 1] > 0.95


@on_virtual_clock
async def test_pause_with_nothing_queued_does_nothing_and_flush_ends_a_pause(
    speech: NDArray[np.int16],
) -> None:
    track = PlayoutTrack()
    track.pause()
    assert not track.paused
    track.play(speech)
    await collect(track, 3)
    track.pause()
    track.flush()
    assert not track.paused
    after = track.play(np.zeros(3 * FRAME_SAMPLES, dtype=np.int16))
    await collect(track, after.frames)
    assert after.done.done() and not after.interrupted


@on_virtual_clock
async def test_speech_after_a_flush_starts_clean(speech: NDArray[np.int16]) -> None:
    # Flushed in the middle of a vowel, the encoder still holds 6.5 ms of it in
    # its lookahead; a reused encoder would start the next utterance with a burst
    # of it (measured: peak 6136 of a silent utterance).
    track = PlayoutTrack()
    decoder = OpusDecoder()
    track.play(speech)
    for packet in await collect(track, 75):
        last = decoder.decode(bytes(packet))
    assert np.max(np.abs(last)) > 5000
    track.flush()
    for packet in await collect(track, 10):
        decoder.decode(bytes(packet))
    track.play(np.zeros(3 * FRAME_SAMPLES, dtype=np.int16))
    decoded = [decoder.decode(bytes(p)) for p in await collect(track, 3)]
    assert max(int(np.max(np.abs(d))) for d in decoded) < 100


@on_virtual_clock
async def test_stall_does_not_burst_more_than_a_little() -> None:
    track = PlayoutTrack(max_burst=3)
    await collect(track, 3)
    stall(0.2)  # 10 frames
    packet = await track.recv()
    stats = track.stats
    assert stats.late_frames >= 1
    assert stats.skipped_frames >= 5
    # The media clock jumped over the missed slots instead of sending them all now.
    assert packet.pts == (3 + stats.skipped_frames) * 960
    following = await collect(track, 3)
    assert [p.pts for p in following] == [packet.pts + 960 * k for k in (1, 2, 3)]


@on_virtual_clock
async def test_short_stall_catches_up_without_skipping() -> None:
    track = PlayoutTrack(max_burst=3)
    await collect(track, 3)
    stall(0.045)  # a bit over two frames
    packets = await collect(track, 4)
    assert [p.pts for p in packets] == [2880, 3840, 4800, 5760]
    assert track.stats.skipped_frames == 0


@on_virtual_clock
async def test_on_frame_sent_reports_each_frame(speech: NDArray[np.int16]) -> None:
    sent: list[tuple[int, bool]] = []
    track = PlayoutTrack(on_frame_sent=lambda pts, is_speech: sent.append((pts, is_speech)))
    await track.recv()
    track.play(speech[:640])  # two frames, plus one for the lookahead
    packets = await collect(track, 4)
    assert sent == [(0, False), (960, True), (1920, True), (2880, True), (3840, False)]
    assert [p.pts for p in packets] == [960, 1920, 2880, 3840]


@on_virtual_clock
async def test_a_failing_callback_does_not_stop_the_audio() -> None:
    def fail(pts: int, is_speech: bool) -> None:
        raise RuntimeError("boom")

    track = PlayoutTrack(on_frame_sent=fail)
    assert len(await collect(track, 2)) == 2


@on_virtual_clock
async def test_stop_interrupts_and_ends(speech: NDArray[np.int16]) -> None:
    track = PlayoutTrack()
    playback = track.play(speech)
    await track.recv()
    track.stop()
    assert playback.interrupted
    assert playback.done.done()
    assert track.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await track.recv()
    late = track.play(speech)
    assert late.interrupted and late.done.done()


@on_virtual_clock
async def test_all_tracks_of_a_loop_wait_on_one_timer_per_frame() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    tracks = [PlayoutTrack() for _ in range(30)]
    await asyncio.gather(*(t.next_payload() for t in tracks))  # each keeps time on the grid
    second = [asyncio.create_task(t.next_payload()) for t in tracks]
    await asyncio.sleep(0)
    # 30 tracks started together wait for one tick (two, if their starts straddled
    # a grid line): one or two timers, not 30.
    assert sum(len(w) for w in clock._waiters.values()) == 30
    assert len(clock._waiters) <= 2
    second[0].cancel()  # a call that ends wakes no other
    results = await asyncio.gather(*second[1:])
    assert {pts for _, pts in results} == {960}
    assert not clock._waiters


@on_virtual_clock
async def test_frame_clock_ticks_are_20ms_apart() -> None:
    loop = asyncio.get_running_loop()
    clock = FrameClock(loop)
    first = clock.next_tick()
    assert clock.last_tick() <= loop.time() <= first <= clock.last_tick() + 0.020
    await clock.sleep_until(first + 0.020)
    assert loop.time() >= first + 0.020 - 0.001
    assert clock.next_tick() >= first + 0.020


@on_virtual_clock
async def test_frame_clock_serves_first_then_the_others_then_last_whenever_they_came() -> None:
    clock = FrameClock(asyncio.get_running_loop())
    order: list[str] = []
    callbacks = {
        name: functools.partial(lambda name, now: order.append(name), name) for name in "abcde"
    }
    clock.subscribe(callbacks["a"], last=True)
    clock.subscribe(callbacks["b"])
    clock.subscribe(callbacks["c"], first=True)
    clock.subscribe(callbacks["d"])
    clock.subscribe(callbacks["e"], last=True)
    assert order == list("abcde")  # each called once at once, as it came
    assert clock.subscribers == 5
    order.clear()
    while len(order) < 10:
        await asyncio.sleep(0.01)
    assert order[:5] == list("cbdae") and order[5:10] == list("cbdae")
    clock.unsubscribe(callbacks["a"])
    clock.unsubscribe(callbacks["c"])
    assert clock.subscribers == 3
    for name in "bde":
        clock.unsubscribe(callbacks[name])
    assert clock._ticker is None


@on_virtual_clock
async def test_frame_clock_subscribers_tick_together_and_one_that_raises_goes_alone() -> None:
    loop = asyncio.get_running_loop()
    clock = FrameClock(loop)
    seen: dict[str, list[float]] = {"a": [], "b": [], "c": []}

    def tick(name: str) -> Callable[[float], None]:
        def callback(now: float) -> None:
            seen[name].append(now)
            if name == "b" and len(seen["b"]) == 3:
                raise RuntimeError("broken")

        return callback

    callbacks = {name: tick(name) for name in seen}
    for callback in callbacks.values():
        clock.subscribe(callback)  # each is called once at once
    assert [len(v) for v in seen.values()] == [1, 1, 1]
    await asyncio.sleep(0.15)
    assert len(seen["b"]) == 3 and clock.subscribers == 2
    assert len(seen["a"]) >= 4 and len(seen["c"]) == len(seen["a"])
    # One timer per tick called them all, with the same time.
    assert seen["a"][1:] == seen["c"][1:]
    assert seen["b"][1:3] == seen["a"][1:3]
    for callback in callbacks.values():
        clock.unsubscribe(callback)
    assert clock._ticker is None
