"""The PCM type on the standard library (gateway/media/pcm.py) and the plugin API over it:
array('h') and memoryviews in the gateway, numpy arrays for the bots that want them."""

from __future__ import annotations

import asyncio
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.media.audio import FRAME_SAMPLES, load_wav
from gateway.media.opus import OpusEncoder
from gateway.media.pcm import as_samples, silence, to_ndarray
from gateway.media.playout import PlayoutTrack
from gateway.pipeline.bot import Utterance
from gateway.pipeline.turns import SpeechEnded
from gateway.pipeline.vad import VadSegmenter

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"


@pytest.fixture(scope="module")
def speech() -> NDArray[np.int16]:
    return load_wav(AUDIO / "cards-005.wav")


def _buffers(pcm: NDArray[np.int16]) -> dict[str, Any]:
    """The same samples as every kind of buffer a bot may hand the gateway."""
    raw = pcm.tobytes()
    return {
        "ndarray": pcm,
        "array('h')": array("h", raw),
        "memoryview 'h'": memoryview(array("h", raw)),
        "bytes": raw,
        "bytearray": bytearray(raw),
        "strided ndarray": np.repeat(pcm, 2)[::2],
    }


def test_as_samples_views_every_int16_buffer_without_numpy_semantics(
    speech: NDArray[np.int16],
) -> None:
    pcm = speech[:1000]
    for name, buffer in _buffers(pcm).items():
        view = as_samples(buffer)
        assert (view.format, view.ndim, len(view)) == ("h", 1, 1000), name
        assert view.tolist() == pcm.tolist(), name
    # No copy where there is one buffer already: the view is the caller's memory.
    samples = array("h", pcm.tobytes())
    as_samples(samples)[0] = 1234
    assert samples[0] == 1234


def test_as_samples_refuses_what_is_not_int16_unless_asked_to_convert() -> None:
    for bad in (np.zeros(320, np.float32), [1, 2, 3], array("i", [1, 2])):
        with pytest.raises(ValueError, match="int16"):
            as_samples(bad)
    with pytest.raises(ValueError, match="even number of bytes"):
        as_samples(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="1-D"):
        as_samples(np.zeros((2, 320), np.int16))
    # The bot API's play() converts as np.asarray(audio, np.int16) always did.
    assert as_samples(np.array([0.0, 1.9, -2.0]), convert=True).tolist() == [0, 1, -2]
    assert as_samples([5, -5], convert=True).tolist() == [5, -5]


def test_a_bot_reading_utterance_pcm_gets_the_same_int16_samples(
    speech: NDArray[np.int16],
) -> None:
    # Turns as the VAD closes them: array('h') the gateway never turned into numpy.
    segmenter = VadSegmenter()
    events = [e for frame in _frames(speech) for e in segmenter.push(frame)]
    events += segmenter.flush()
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert ended
    for event in ended:
        assert isinstance(event.audio, array) and event.audio.typecode == "h"
        utterance = Utterance(event.audio, event.started_at_ms, event.at_ms)
        pcm = utterance.pcm
        assert isinstance(pcm, np.ndarray) and pcm.dtype == np.int16 and pcm.ndim == 1
        assert pcm.tolist() == utterance.audio.tolist()
        assert np.array_equal(pcm, event.pcm)
        assert utterance.pcm is pcm  # made once per utterance
        assert np.shares_memory(pcm, np.frombuffer(utterance.audio, np.int16))
        assert utterance.duration_ms == len(pcm) * 1000 // 16000
        # The samples are the caller's: a stretch of what was pushed, unchanged.
        assert speech.tobytes().find(pcm.tobytes()) % 2 == 0


def test_an_utterance_made_from_a_numpy_array_keeps_its_samples(
    speech: NDArray[np.int16],
) -> None:
    utterance = Utterance(speech[:800], 0, 50)
    assert isinstance(utterance.audio, array) and utterance.audio.typecode == "h"
    assert np.array_equal(utterance.pcm, speech[:800])
    assert to_ndarray(utterance.audio).tolist() == speech[:800].tolist()


async def test_playout_sends_the_same_packets_for_every_kind_of_buffer(
    speech: NDArray[np.int16],
) -> None:
    pcm = speech[: FRAME_SAMPLES * 25 + 123]  # a partial last frame: the padded tail too
    sent = {name: await _played(buffer) for name, buffer in _buffers(pcm).items()}
    reference = OpusEncoder().encode_pcm(pcm)
    for name, packets in sent.items():
        assert packets == reference, name


def test_encoder_takes_int16_frames_and_refuses_others() -> None:
    encoder = OpusEncoder()
    encoder.encode(silence(FRAME_SAMPLES))
    encoder.encode(np.zeros(FRAME_SAMPLES, np.int16))
    encoder.encode(memoryview(silence(FRAME_SAMPLES)))
    for bad in (silence(FRAME_SAMPLES - 1), bytes(2 * FRAME_SAMPLES), np.zeros(320, np.int32)):
        with pytest.raises(ValueError, match="320 int16 samples"):
            encoder.encode(bad)


async def _played(audio: Any) -> list[bytes]:
    """The speech packets a fresh track sends for ``audio``, driven frame by frame."""
    track = PlayoutTrack()
    playback = track.play(audio)
    loop = asyncio.get_running_loop()
    packets: list[bytes] = []
    now = loop.time()
    while len(packets) < playback.frames:
        frame = track.poll(now if not packets else track.next_due)
        assert frame is not None
        # A speech frame comes as PCM, for the poller to encode (the sender: in C).
        payload = frame[0]
        packets.append(payload if isinstance(payload, bytes) else track.encode(payload))
    assert playback.done.done() and not playback.interrupted
    track.stop()
    return packets


def _frames(pcm: NDArray[np.int16]) -> list[array[int]]:
    """The pushed frames as the decoder hands them on: array('h')."""
    whole = len(pcm) - len(pcm) % FRAME_SAMPLES
    return [
        array("h", pcm[i : i + FRAME_SAMPLES].tobytes()) for i in range(0, whole, FRAME_SAMPLES)
    ]
