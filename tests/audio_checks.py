"""Comparing audio in tests: energy envelopes, not "some bytes arrived"."""

from __future__ import annotations

import numpy as np

FRAME = 320  # 20 ms at 16 kHz


def envelope(pcm: np.ndarray) -> np.ndarray:
    """RMS per 20 ms frame."""
    n = len(pcm) // FRAME
    frames = pcm[: n * FRAME].astype(np.float32).reshape(n, FRAME)
    return np.sqrt((frames**2).mean(axis=1))


def find_in(haystack: np.ndarray, needle: np.ndarray) -> tuple[float, int]:
    """Best normalized correlation of ``needle``'s envelope inside ``haystack``'s, and its frame."""
    h, n = envelope(haystack), envelope(needle)
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
    return int(np.count_nonzero(envelope(pcm) > rms))
