"""Comparing audio in tests: energy envelopes, not "some bytes arrived"."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.media.audio import frame_rms
from gateway.media.opus import FRAME_TICKS, OpusDecoder
from gateway.media.playout import PlayoutTrack
from gateway.sandbox.user import UserCall


def find_in(haystack: np.ndarray, needle: np.ndarray) -> tuple[float, int]:
    """Best normalized correlation of ``needle``'s envelope inside ``haystack``'s, and its frame."""
    h, n = frame_rms(haystack), frame_rms(needle)
    if len(h) < len(n) or len(n) == 0:
        return 0.0, -1
    n = (n - n.mean()) / (n.std() + 1e-9)
    best, at = -1.0, -1
    for i in range(len(h) - len(n) + 1):
        w = h[i : i + len(n)]
        c = float(np.dot(n, (w - w.mean()) / (w.std() + 1e-9)) / len(n))
        if c > best:
            best, at = c, i
    return best, at


def loud_frames(pcm: np.ndarray, rms: float = 300.0) -> int:
    """How many 20 ms frames are louder than ``rms``."""
    return int(np.count_nonzero(frame_rms(pcm) > rms))


class SentSpeech:
    """The speech a :class:`PlayoutTrack` sends from now on (read through its tap), to
    compare what the far end heard with what was sent, where it was sent.

    After an event-loop stall of more than ``max_burst`` frames a track skips RTP time,
    by design: the far end conceals those slots, so it hears the speech as sent, with a
    gap where the track skipped. :meth:`audio` is the speech as sent, back to back (what
    was said); :meth:`timeline` lays it out by its timestamps (what the far end plays).
    """

    def __init__(self, track: PlayoutTrack) -> None:
        assert track.tap is None, "the track's tap is taken (a recording?)"
        self.track = track
        self.packets: list[tuple[int, bytes]] = []
        self.skipped_before = track.stats.skipped_frames
        track.tap = self.packets

    def close(self) -> None:
        self.track.tap = None

    def _decoded(self) -> list[tuple[int, np.ndarray]]:
        decoder = OpusDecoder()
        return [(pts, np.frombuffer(decoder.decode(p), np.int16)) for pts, p in self.packets]

    def audio(self) -> np.ndarray:
        """The speech frames sent, decoded, back to back."""
        frames = [frame for _, frame in self._decoded()]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    def timeline(self) -> np.ndarray:
        """The speech frames sent, each at its timestamp (from the first one's), decoded as
        the far end does: the slots between (skipped, or silence) concealed."""
        if not self.packets:
            return np.zeros(0, np.int16)
        decoder = OpusDecoder()
        by_slot = {pts // FRAME_TICKS: payload for pts, payload in self.packets}
        first, last = min(by_slot), max(by_slot)
        frames = []
        for slot in range(first, last + 1):
            payload = by_slot.get(slot)
            frame = decoder.conceal() if payload is None else decoder.decode(payload)
            frames.append(np.frombuffer(frame, np.int16))
        return np.concatenate(frames)

    @property
    def gaps(self) -> int:
        """Frame slots skipped (or silent) between the first speech frame and the last."""
        if not self.packets:
            return 0
        return (self.packets[-1][0] - self.packets[0][0]) // FRAME_TICKS + 1 - len(self.packets)

    @property
    def skipped(self) -> int:
        """Frame slots the track skipped after stalls since this began."""
        return self.track.stats.skipped_frames - self.skipped_before

    def compare(self, heard: np.ndarray, said: np.ndarray) -> tuple[float, float]:
        """How well the speech sent matches ``said``, and ``heard`` the speech as sent (on
        its timeline): envelope correlations (:func:`find_in`)."""
        return find_in(self.audio(), said)[0], find_in(heard, self.timeline())[0]

    async def heard(self, call: UserCall, *, within: float = 20) -> np.ndarray:
        """Wait until the track has sent speech and all it queued, and ``call`` heard it;
        then what ``call`` heard."""
        async with asyncio.timeout(within):
            while not self.packets or self.track.is_playing:
                await asyncio.sleep(0.02)
            # Frames reach the caller in order: a few more than its jitter buffer may
            # hold, sent after the last speech frame, and that one was heard too.
            after = call.frames_heard + call.jitter_window + 3
            while call.frames_heard < after:
                await asyncio.sleep(0.02)
        return call.heard
