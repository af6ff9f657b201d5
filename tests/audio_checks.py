"""Comparing audio in tests: energy envelopes, not "some bytes arrived"."""

from __future__ import annotations

import numpy as np

from gateway.media.audio import frame_rms


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
