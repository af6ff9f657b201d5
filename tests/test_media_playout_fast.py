"""The sender's compiled fast path (``_rtp.Outbound.send_due``) against the track's Python.

Silence, and speech in mid-utterance, go out with no Python per frame; everything
else through :meth:`PlayoutTrack.poll`. Both step one clock (``_rtp.PlayoutState``),
whose arithmetic is held here to the Python one (:class:`PythonPlayoutState`)
under any tick times; and a sender with the fast path puts on the wire, byte for
byte, what the same sender with every frame through ``poll`` does, with the same
counters and playback bookkeeping, through stalls (bursts and skips), pauses,
flushes, PCM and pre-encoded speech, taps, callbacks and a disabled sender.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtcpParameters, RTCRtpSendParameters
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media import native
from gateway.media.audio import load_wav
from gateway.media.opus import FRAME_TICKS
from gateway.media.pacing import EARLY, FRAME_SECONDS, PythonPlayoutState
from gateway.media.playback import Playback
from gateway.media.playout import PlayoutTrack
from gateway.media.sender import PlayoutSender

from .test_media_sender import OPUS, RecordingTransport
from .virtual_clock import VirtualClockLoop, on_virtual_clock, stall

_rtp = native._rtp
AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0.0, max_value=0.2),
            # On the grid, and a hair either side of it (the early margin's edge).
            st.sampled_from([0.02, 0.02 - EARLY, 0.02 - EARLY * 1.01, 0.0199999999]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(min_value=1, max_value=5),
    st.floats(min_value=0.0, max_value=1e6),
)
def test_the_compiled_clock_steps_as_the_python_one(
    steps: list[float], max_burst: int, start: float
) -> None:
    compiled = _rtp.PlayoutState(max_burst, FRAME_TICKS, FRAME_SECONDS, EARLY)
    python = PythonPlayoutState(max_burst, FRAME_TICKS, FRAME_SECONDS, EARLY)
    for state in (compiled, python):
        state.start = start
    now = start
    for step in steps:
        now += step
        while True:
            got = compiled.due(now)
            assert got == python.due(now)
            fields = ("pts", "next_pts", "frames_sent", "late_frames", "skipped_frames", "behind")
            assert [getattr(compiled, f) for f in fields] == [getattr(python, f) for f in fields]
            if got is None:
                break


def test_a_frame_exactly_the_early_margin_ahead_is_due_on_both_clocks() -> None:
    """The margin's edge itself (``late == -EARLY``, which random times never hit): due.
    Near 0 the floats are fine enough for the edge to be met exactly."""
    for start in (-0.0195, -0.019):
        due = start + FRAME_TICKS / 48000
        now = due - EARLY
        assert now - due == -EARLY
        states = (
            _rtp.PlayoutState(3, FRAME_TICKS, FRAME_SECONDS, EARLY),
            PythonPlayoutState(3, FRAME_TICKS, FRAME_SECONDS, EARLY),
        )
        for state in states:
            state.start = start
            assert state.due(now) == 0 and state.behind  # the next is due at now too
            assert state.due(now) == FRAME_TICKS


def test_the_compiled_clock_refuses_to_step_before_it_starts() -> None:
    state = _rtp.PlayoutState(3, FRAME_TICKS, FRAME_SECONDS, EARLY)
    assert state.start is None
    with pytest.raises(RuntimeError):
        state.due(1.0)
    state.start = 1.0
    assert state.due(1.0) == 0 and state.due(1.0) is None


Scenario = Callable[[PlayoutTrack, PlayoutSender], Awaitable[list[Playback]]]


async def run(scenario: Scenario, monkeypatch: pytest.MonkeyPatch, *, fast: bool) -> Any:
    """What a PlayoutSender sends through ``scenario``, with the fast path or without it
    (every frame through poll): packets, counters, playbacks, and how many polls."""
    monkeypatch.setattr("gateway.media.sender.random_sequence_number", lambda: 32000)
    monkeypatch.setattr("gateway.media.sender.random32", lambda: 0xFFFFF000)
    if not fast:
        monkeypatch.setattr(PlayoutTrack, "_arm", lambda self: self._state.disarm())
    transport = RecordingTransport()
    track = PlayoutTrack()
    polls = 0
    poll = track.poll

    def counted(now: float) -> Any:
        nonlocal polls
        polls += 1
        return poll(now)

    track.poll = counted  # type: ignore[method-assign]
    sender = PlayoutSender.adopt(RTCRtpSender(track, transport))  # type: ignore[arg-type]
    sender._ssrc = 0x12345678
    await sender.send(
        RTCRtpSendParameters(codecs=[OPUS], muxId="audio", rtcp=RTCRtcpParameters(cname="gw"))
    )
    playbacks = await scenario(track, sender)
    await asyncio.sleep(0.1)
    stats = track.stats
    await sender.stop()
    monkeypatch.undo()
    frames = [(p.frames, p.frames_sent, p.interrupted, p.pauses) for p in playbacks]
    return transport.rtp, stats, frames, polls


def speech(seconds: float) -> np.ndarray:
    return load_wav(AUDIO / "cards-005.wav")[: int(16000 * seconds)]


async def stalls_pauses_and_flushes(track: PlayoutTrack, sender: PlayoutSender) -> list[Playback]:
    await asyncio.sleep(0.1)
    stall(0.05)  # a burst of 3 silence frames
    await asyncio.sleep(0.1)
    first = track.play(speech(1.0))
    await asyncio.sleep(0.2)
    stall(0.045)  # a burst in mid-utterance
    await asyncio.sleep(0.1)
    stall(0.3)  # a skip in mid-utterance
    await asyncio.sleep(0.1)
    track.pause()
    await asyncio.sleep(0.1)
    track.resume()  # a fresh encoder: its first frame is Python's again
    await asyncio.sleep(0.1)
    sender._enabled = False  # encoded, not sent
    await asyncio.sleep(0.06)
    sender._enabled = True
    await first.wait()
    whole = track.play_packets([bytes([0x48, i]) for i in range(8)])  # played to its end
    await whole.wait()
    second = track.play_packets([bytes([0x48, i, i]) for i in range(30)])
    await asyncio.sleep(0.2)
    stall(0.25)  # a skip in pre-encoded speech
    await asyncio.sleep(0.1)
    third = track.play(speech(0.5))  # queued behind the packets
    track.pause()
    await asyncio.sleep(0.06)
    track.flush()  # ends the pause, drops both
    fourth = track.play(speech(0.4))
    await asyncio.sleep(0.1)
    track.tap = []  # the rest of it through poll, encoded first
    await fourth.wait()
    track.tap = None
    track.on_frame_sent = lambda pts, is_speech: None
    fifth = track.play(speech(0.3))
    await asyncio.sleep(0.1)
    track.on_frame_sent = None
    await fifth.wait()
    stall(0.07)  # a skip in silence
    return [first, second, third, fourth, fifth, whole]


def test_the_fast_path_sends_what_poll_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each on a loop of its own: the same virtual times, the same frame grid.
    runs = []
    for fast_path in (True, False):
        with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
            runs.append(runner.run(run(stalls_pauses_and_flushes, monkeypatch, fast=fast_path)))
    fast, python = runs
    packets, stats, playbacks, polls = fast
    assert packets == python[0]
    assert stats == python[1]
    assert playbacks == python[2]
    # The scenario did what it says: bursts and skips, speech of both kinds, a flush.
    assert stats.late_frames > 3 and stats.skipped_frames > 10
    assert stats.speech_frames > 50
    assert playbacks[2][2] and playbacks[1][2] and not playbacks[0][2]
    assert playbacks[5][:3] == (8, 8, False)
    # ... and most frames went without poll(): the first and last of each utterance,
    # the pause, the disabled stretch, the tap and the callback are poll()'s.
    assert python[3] >= stats.frames_sent
    assert polls < stats.frames_sent / 3


@on_virtual_clock
async def test_what_the_track_says_the_fast_path_may_send() -> None:
    track = PlayoutTrack()
    state = track._state
    assert state.fast == "silence"
    track.on_frame_sent = lambda pts, is_speech: None
    assert state.fast == ""
    track.on_frame_sent = None
    playback = track.play_packets([b"\x48\x01", b"\x48\x02", b"\x48\x03"])
    assert state.fast == "packets"
    track._start = asyncio.get_running_loop().time()
    assert track.poll(track.next_due) == (b"\x48\x01", 0)
    track.pause()
    assert state.fast == ""
    track.resume()
    assert state.fast == "packets"
    pcm = track.play(speech(0.2))
    track.flush()
    assert playback.interrupted and pcm.interrupted and state.fast == "silence"
    track.play(speech(0.2))
    assert state.fast == ""  # no encoder yet: the first frame makes it
    track.poll(track.next_due)
    assert state.fast == "pcm"
    track.tap = []
    assert state.fast == ""
    track.stop()
    assert state.fast == ""
