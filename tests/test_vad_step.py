"""The compiled VAD step (gateway/pipeline/_vadstep.c) against the Python step it replaces.

Frame by frame on every shared recording, on pink noise with a DC offset, on
full-scale and strided frames: the same WebRTC verdict, the same ring, and a
level within float tolerance (the C step sums squares exactly in integers, the
Python step in float32, whose rounding is relative to the frame's mean square:
for a variance under a large offset that is more than the level's last bits).
Frames of the wrong length, dtype or shape, a slot outside the ring and a
malformed ring are refused with ValueError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import webrtcvad
from numpy.typing import NDArray

from gateway.media.audio import load_wav
from gateway.pipeline._vadstep import VadStep
from gateway.pipeline.vad import FRAME_SAMPLES, compiled
from gateway.pipeline.vad.compiled import make_step
from gateway.pipeline.vad.core import LEVEL_NONE, LEVEL_POWER, LEVEL_VARIANCE
from gateway.pipeline.vad.fallback import PythonStep
from gateway.pipeline.vad.webrtc import process_address

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
RECORDINGS = ["cards-001", "cards-002", "cards-003", "cards-004", "cards-005"]
RECORDINGS += ["forever-2", "goforward", "numbers"]
ROWS = 7
LEVELS = [LEVEL_NONE, LEVEL_POWER, LEVEL_VARIANCE]


def _frames(pcm: NDArray[np.int16]) -> NDArray[np.int16]:
    n = len(pcm) // FRAME_SAMPLES
    return pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)


def _exact_db(frame: NDArray[np.int16], level: int) -> float:
    """The level in float64 from exact integer sums."""
    samples = frame.astype(np.int64)
    power = float(np.sum(samples * samples))
    if level == LEVEL_VARIANCE:
        total = float(np.sum(samples))
        power -= total * total / FRAME_SAMPLES
    return float(10.0 * np.log10(power / FRAME_SAMPLES + 1.0))


def _power(db: float) -> float:
    return float(10.0 ** (db / 10.0) - 1.0)


def _agree(frames: NDArray[np.int16], level: int, aggressiveness: int = 2) -> int:
    """Run both steps over ``frames``; assert they agree on each; return the voiced count."""
    c_ring = np.zeros((ROWS, FRAME_SAMPLES), np.int16)
    py_ring = np.zeros((ROWS, FRAME_SAMPLES), np.int16)
    c_step = make_step(c_ring, webrtcvad.Vad(aggressiveness), level)
    py_step = make_step(py_ring, webrtcvad.Vad(aggressiveness), level, native=False)
    assert isinstance(py_step, PythonStep) and not isinstance(c_step, PythonStep)
    voiced_frames = 0
    for index, frame in enumerate(frames):
        slot = index % ROWS
        c_voiced, c_db = c_step(frame, slot)
        py_voiced, py_db = py_step(frame, slot)
        assert c_voiced is py_voiced, index
        if level == LEVEL_NONE:
            assert c_db == py_db == 0.0
        else:
            assert c_db == pytest.approx(_exact_db(frame, level), rel=1e-12), index
            # float32's rounding: a few ulps of the sum of squares, whatever is subtracted.
            mean_square = float(np.mean(frame.astype(np.float64) ** 2))
            assert _power(c_db) == pytest.approx(_power(py_db), abs=1e-5 * mean_square + 1e-3), (
                index
            )
        assert np.array_equal(c_ring[slot], frame), index
        voiced_frames += c_voiced
    assert np.array_equal(c_ring, py_ring)
    return voiced_frames


def test_the_compiled_step_is_built() -> None:
    # make install compiles it; the Python step is only the fallback of an install without it.
    assert compiled.available()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", RECORDINGS)
def test_steps_agree_on_the_recordings(name: str, level: int) -> None:
    frames = _frames(load_wav(AUDIO / f"{name}.wav"))
    voiced = _agree(frames, level)
    assert 0 < voiced < len(frames)  # speech and pauses both: the verdicts were compared


def test_steps_agree_on_noise_with_an_offset_and_at_full_scale() -> None:
    rng = np.random.default_rng(14)
    white = rng.normal(0, 1, 200 * FRAME_SAMPLES)
    pink = np.cumsum(white) * 0.02  # a random walk: most of its power low, a wandering mean
    noise = np.clip(np.round(pink * 3000 + 2000), -32768, 32767).astype(np.int16)
    loud = np.tile(np.array([32767, -32768], np.int16), 20 * FRAME_SAMPLES // 2)
    dc = np.full(10 * FRAME_SAMPLES, -32768, np.int16)
    frames = _frames(np.concatenate([noise, loud, dc, np.zeros(FRAME_SAMPLES, np.int16)]))
    for level in LEVELS:
        _agree(frames, level, aggressiveness=3)


def test_strided_frames_are_copied_like_contiguous_ones() -> None:
    pcm = load_wav(AUDIO / "numbers.wav")
    wide = np.repeat(pcm[: 50 * FRAME_SAMPLES], 2).reshape(50, 2 * FRAME_SAMPLES)
    strided = [row[::2] for row in wide]  # every other sample: stride 4 bytes
    assert not strided[0].flags.c_contiguous
    ring = np.zeros((ROWS, FRAME_SAMPLES), np.int16)
    step = make_step(ring, webrtcvad.Vad(2), LEVEL_VARIANCE)
    reference = make_step(np.zeros_like(ring), webrtcvad.Vad(2), LEVEL_VARIANCE, native=False)
    for index, frame in enumerate(strided):
        assert step(frame, index % ROWS)[0] is reference(frame, index % ROWS)[0]
        assert np.array_equal(
            ring[index % ROWS], pcm[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]
        )


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    "frame",
    [
        np.zeros(FRAME_SAMPLES - 1, np.int16),
        np.zeros(FRAME_SAMPLES + 1, np.int16),
        np.zeros(FRAME_SAMPLES, np.float32),
        np.zeros(FRAME_SAMPLES, np.int32),
        np.zeros(FRAME_SAMPLES, np.uint16),
        np.zeros(FRAME_SAMPLES, ">i2"),
        np.zeros((2, FRAME_SAMPLES), np.int16),
        np.zeros((1, FRAME_SAMPLES), np.int16),
    ],
)
def test_wrong_frames_are_refused(frame: NDArray[np.generic], native: bool) -> None:
    ring = np.zeros((ROWS, FRAME_SAMPLES), np.int16)
    step = make_step(ring, webrtcvad.Vad(2), LEVEL_POWER, native=native)
    with pytest.raises(ValueError, match=f"{FRAME_SAMPLES} int16 samples"):
        step(frame, 0)  # type: ignore[arg-type]
    assert not ring.any()  # nothing was written


@pytest.mark.parametrize("frame", [bytes(2 * FRAME_SAMPLES), [0] * FRAME_SAMPLES, None])
def test_what_is_no_array_is_refused(frame: object) -> None:
    step = VadStep(
        np.zeros((ROWS, FRAME_SAMPLES), np.int16), process_address(), webrtcvad.Vad(2)._vad, 1
    )
    with pytest.raises(ValueError, match=f"{FRAME_SAMPLES} int16 samples"):
        step.step(frame, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("slot", [-1, ROWS, 2**40])
def test_a_slot_outside_the_ring_is_refused(slot: int) -> None:
    step = make_step(np.zeros((ROWS, FRAME_SAMPLES), np.int16), webrtcvad.Vad(2), LEVEL_POWER)
    with pytest.raises((ValueError, OverflowError)):
        step(np.zeros(FRAME_SAMPLES, np.int16), slot)


@pytest.mark.parametrize(
    "ring",
    [
        np.zeros((ROWS, FRAME_SAMPLES), np.float32),
        np.zeros((ROWS, FRAME_SAMPLES - 1), np.int16),
        np.zeros(FRAME_SAMPLES, np.int16),
        np.zeros((0, FRAME_SAMPLES), np.int16),
        np.zeros((2 * ROWS, FRAME_SAMPLES), np.int16)[::2],
    ],
)
def test_a_malformed_ring_is_refused(ring: NDArray[np.generic]) -> None:
    with pytest.raises(ValueError):
        VadStep(ring, process_address(), webrtcvad.Vad(2)._vad, LEVEL_POWER)


def test_bad_arguments_are_refused() -> None:
    ring = np.zeros((ROWS, FRAME_SAMPLES), np.int16)
    vad = webrtcvad.Vad(2)._vad
    with pytest.raises(ValueError, match="NULL"):
        VadStep(ring, 0, vad, LEVEL_POWER)
    with pytest.raises(ValueError, match="level"):
        VadStep(ring, process_address(), vad, 3)
    with pytest.raises(ValueError):  # not WebRTC's capsule
        VadStep(ring, process_address(), object(), LEVEL_POWER)
    with pytest.raises((ValueError, BufferError)):  # read-only: the step writes the ring
        ring.flags.writeable = False
        VadStep(ring, process_address(), vad, LEVEL_POWER)


def test_webrtcs_vad_is_the_wheels_own_copy() -> None:
    # The address handed to the C step lies in the one mapping of _webrtcvad: no second library.
    address = process_address()
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines()]
    mapped = [fields for fields in maps if fields[-1] == webrtcvad._webrtcvad.__file__]
    assert len({fields[-1] for fields in maps if "_webrtcvad" in fields[-1]}) == 1
    spans = [tuple(int(x, 16) for x in fields[0].split("-")) for fields in mapped]
    assert any(start <= address < end for start, end in spans)


def test_the_vads_old_import_paths_name_the_same_objects() -> None:
    # pipeline/vad.py and pipeline/vadstep.py became the pipeline/vad/ package: code that
    # imports the old names gets the package's own objects, not copies.
    import gateway.pipeline as pipeline
    import gateway.pipeline.vad as vad
    import gateway.pipeline.vadstep as vadstep
    from gateway.pipeline.vad import compiled, core, fallback, segmenter, webrtc

    assert vad.VadSegmenter is segmenter.VadSegmenter is pipeline.VadSegmenter
    assert vad.VadConfig is pipeline.VadConfig
    assert vadstep.__all__
    for name in vadstep.__all__:
        old = getattr(vadstep, name)
        assert any(vars(m).get(name) is old for m in (compiled, core, fallback, webrtc)), name
