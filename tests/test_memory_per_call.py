"""What a call holds between its caller's turns (issue 14: RSS with 10 calls up).

Measured with tracemalloc around real speech through the real VAD: no RSS figure,
which would depend on the machine's page cache and glibc's heap. (The DTLS
connection's released buffers: tests/test_rtc_certificate.py.)
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from gateway.media.audio import load_wav
from gateway.pipeline.vad import FRAME_SAMPLES, SpeechEnded, VadEvent, VadSegmenter

from .conftest import AUDIO

ONE_SECOND = 16000 * 2  # bytes of 16 kHz int16


def test_a_long_turn_s_buffer_is_let_go_when_the_turn_ends() -> None:
    pcm = load_wav(AUDIO / "forever-2.wav")
    # A 3.5 s turn, then 2 s of silence to close it.
    pcm = np.concatenate([pcm, np.zeros(32000, np.int16)])
    frames = pcm[: len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    segmenter = VadSegmenter()
    events: list[VadEvent] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for frame in frames:
            events += segmenter.push(frame)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert ended and max(len(e.pcm) for e in ended) * 2 > 2 * ONE_SECOND  # a long turn
    # What the bot was handed is the bot's; the segmenter itself keeps at most a
    # 1 s buffer (and a few small objects), not the 4-8 s the long turn grew to.
    handed = sum(e.pcm.nbytes for e in ended)
    assert held - handed < ONE_SECOND + 16 * 1024
