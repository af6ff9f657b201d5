"""WAV files in and out of the pipeline's audio format (:mod:`gateway.media.pcm`).

Everything past the media module speaks one format: 16 kHz, mono, int16, cut
into 20 ms frames of 320 samples. :func:`load_wav` turns any PCM or float WAV
into that format (downmix, resample) and refuses broken files with an
:class:`~gateway.errors.AudioFileError` that says what is wrong with them.
The WAV functions work in numpy, imported when one is first called: a gateway
that never reads a WAV file (the echo bot) never loads it.
"""

from __future__ import annotations

import fractions
import os
import stat
import struct
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Final

from gateway.errors import AudioFileError
from gateway.media.pcm import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, Int16Array

if TYPE_CHECKING:
    import av
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "FRAME_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "frame_rms",
    "frames",
    "load_wav",
    "save_wav",
]

_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_IEEE_FLOAT: Final = 0x0003
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_MIN_RATE: Final = 1000
_MAX_RATE: Final = 768000
_FORMAT_NAMES: Final = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0055: "MP3",
}


def load_wav(path: str | os.PathLike[str]) -> Int16Array:
    """Read a WAV file as 16 kHz mono int16 samples.

    Accepts 8/16/24/32-bit integer PCM and 32/64-bit float, any sample rate and
    channel count (channels are averaged). Raises :class:`AudioFileError` with a
    precise reason for anything else, including files without audio samples.
    """
    name = os.fspath(path)
    try:
        with _open_regular_file(name) as f:
            fmt, data = _read_wav(name, f)
        pcm = _to_pipeline_format(fmt, data)
    except AudioFileError:
        raise
    except OSError as exc:
        raise AudioFileError(name, f"cannot read the file: {exc.strerror or exc}") from exc
    except Exception as exc:
        # Promise callers a single exception type whatever the file contains.
        raise AudioFileError(name, f"unreadable audio ({type(exc).__name__}: {exc})") from exc
    if not len(pcm):
        raise AudioFileError(name, f"too short: no samples left at {SAMPLE_RATE} Hz")
    return pcm


def save_wav(path: str | os.PathLike[str], pcm: Int16Array, sample_rate: int = SAMPLE_RATE) -> None:
    """Write int16 mono samples as a 16-bit PCM WAV file."""
    import numpy as np

    samples = np.asarray(pcm)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError(f"expected 1-D int16 samples, got {samples.ndim}-D {samples.dtype}")
    name = os.fspath(path)
    try:
        with open(name, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(samples.astype("<i2", copy=False).tobytes())
    except OSError as exc:
        raise AudioFileError(name, f"cannot write the file: {exc.strerror or exc}") from exc


def frames(pcm: Int16Array) -> Iterator[Int16Array]:
    """Cut samples into 320-sample frames: views of ``pcm``, the last one zero-padded."""
    import numpy as np

    whole = len(pcm) - len(pcm) % FRAME_SAMPLES
    for start in range(0, whole, FRAME_SAMPLES):
        yield pcm[start : start + FRAME_SAMPLES]
    if whole < len(pcm):
        last = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        last[: len(pcm) - whole] = pcm[whole:]
        yield last


def frame_rms(pcm: Int16Array) -> NDArray[np.float32]:
    """RMS level of each whole 20 ms frame (a trailing partial frame is left out)."""
    import numpy as np

    n = len(pcm) // FRAME_SAMPLES
    whole = pcm[: n * FRAME_SAMPLES].astype(np.float32).reshape(n, FRAME_SAMPLES)
    rms: NDArray[np.float32] = np.sqrt((whole**2).mean(axis=1))
    return rms


# --- WAV parsing -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WavFormat:
    """What the ``fmt `` chunk says about the samples."""

    is_float: bool
    channels: int
    rate: int
    bits: int

    @property
    def block_align(self) -> int:
        return self.channels * self.bits // 8


def _open_regular_file(name: str) -> BinaryIO:
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise AudioFileError(name, "no such file") from None
    # Opening a FIFO or a device such as /dev/zero could block or never end.
    if stat.S_ISDIR(st.st_mode):
        raise AudioFileError(name, "is a directory, not a WAV file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioFileError(name, "not a regular file")
    return open(name, "rb")


def _chunk_name(chunk_id: bytes) -> str:
    if all(0x20 <= b < 0x7F for b in chunk_id):
        return repr(chunk_id.decode("ascii"))
    return f"with the garbage id {chunk_id!r}"


def _read_wav(name: str, f: BinaryIO) -> tuple[_WavFormat, bytes]:
    """Walk the RIFF chunks; return the format and the raw sample bytes."""
    file_size = os.fstat(f.fileno()).st_size
    header = f.read(12)
    if len(header) < 12:
        raise AudioFileError(name, f"not a WAV file: only {len(header)} bytes long")
    if header[:4] == b"RIFX":
        raise AudioFileError(name, "big-endian (RIFX) WAV files are not supported")
    if header[:4] == b"RF64":
        raise AudioFileError(name, "RF64 (64-bit) WAV files are not supported")
    if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise AudioFileError(name, f"not a WAV file: starts with {header[:12]!r}, not RIFF....WAVE")

    fmt: _WavFormat | None = None
    offset = 12
    while True:
        chunk_header = f.read(8)
        if len(chunk_header) < 8:
            what = "no 'fmt ' chunk" if fmt is None else "no 'data' chunk"
            raise AudioFileError(
                name, f"{what} (the file ends at byte {file_size}: header only, no audio data)"
            )
        chunk_id, size = struct.unpack("<4sI", chunk_header)
        body_offset = offset + 8
        remaining = file_size - body_offset

        if chunk_id == b"data":
            if fmt is None:
                raise AudioFileError(name, f"'data' chunk at byte {offset} comes before 'fmt '")
            if size == 0:
                raise AudioFileError(name, "the 'data' chunk is empty: 0 samples")
            # Recorders killed mid-write leave a size beyond the end of the file
            # (or 0xFFFFFFFF): use the samples that are there.
            usable = min(size, remaining)
            usable -= usable % fmt.block_align
            if usable == 0:
                raise AudioFileError(
                    name,
                    f"the 'data' chunk claims {size} bytes but the file ends after "
                    f"{remaining}: not one whole sample",
                )
            size = usable
            data = f.read(size)
            if len(data) != size:
                raise AudioFileError(name, "the file shrank while it was being read")
            return fmt, data

        if size > remaining:
            claim = f"claims {size} bytes but only {remaining} follow in the {file_size}-byte file"
            if chunk_id == b"fmt ":
                raise AudioFileError(
                    name,
                    f"corrupt 'fmt ' chunk at byte {offset}: it {claim} "
                    "(header only, no usable format or audio data)",
                )
            raise AudioFileError(
                name,
                f"no 'data' chunk: the chunk {_chunk_name(chunk_id)} at byte {offset} {claim}",
            )
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(name, f.read(size))
        else:
            # LIST, fact, cue and friends carry nothing we need.
            f.seek(size, os.SEEK_CUR)
        offset = body_offset + size + (size & 1)  # chunks are padded to even sizes
        if size & 1:
            f.seek(1, os.SEEK_CUR)


def _parse_fmt(name: str, body: bytes) -> _WavFormat:
    if len(body) < 16:
        raise AudioFileError(name, f"'fmt ' chunk is {len(body)} bytes, at least 16 are needed")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise AudioFileError(name, "WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is truncated")
        # The real format tag is the first two bytes of the sub-format GUID.
        (tag,) = struct.unpack_from("<H", body, 24)
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT):
        kind = _FORMAT_NAMES.get(tag, "unknown")
        raise AudioFileError(
            name, f"unsupported encoding: format tag 0x{tag:04x} ({kind}); need PCM or float"
        )
    is_float = tag == _WAVE_FORMAT_IEEE_FLOAT
    if channels == 0:
        raise AudioFileError(name, "the 'fmt ' chunk says 0 channels")
    if not _MIN_RATE <= rate <= _MAX_RATE:
        raise AudioFileError(
            name, f"implausible sample rate {rate} Hz (need {_MIN_RATE}-{_MAX_RATE})"
        )
    supported = (32, 64) if is_float else (8, 16, 24, 32)
    if bits not in supported:
        kind = "float" if is_float else "integer PCM"
        raise AudioFileError(name, f"{bits}-bit {kind} samples are not supported")
    fmt = _WavFormat(is_float=is_float, channels=channels, rate=rate, bits=bits)
    if block_align != fmt.block_align:
        raise AudioFileError(
            name,
            f"inconsistent 'fmt ' chunk: block align {block_align}, expected "
            f"{fmt.block_align} for {channels} x {bits}-bit",
        )
    return fmt


# --- conversion ----------------------------------------------------------------------


def _to_pipeline_format(fmt: _WavFormat, data: bytes) -> Int16Array:
    import numpy as np

    if not fmt.is_float and fmt.bits == 16 and fmt.channels == 1 and fmt.rate == SAMPLE_RATE:
        return np.frombuffer(data, dtype="<i2").astype(np.int16)  # the common case: a copy

    samples = _decode_samples(fmt, data)  # float32, shape (frames, channels), in [-1, 1]
    mono = samples[:, 0] if fmt.channels == 1 else samples.mean(axis=1, dtype=np.float32)
    if fmt.rate != SAMPLE_RATE:
        return _resample(mono, fmt.rate)
    return _float_to_int16(mono)


def _decode_samples(fmt: _WavFormat, data: bytes) -> NDArray[np.float32]:
    import numpy as np

    count = len(data) // fmt.block_align
    if fmt.is_float:
        raw = np.frombuffer(data, dtype="<f4" if fmt.bits == 32 else "<f8")
        values = np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(values, -1.0, 1.0, out=values)
    elif fmt.bits == 8:
        values = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif fmt.bits == 16:
        values = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif fmt.bits == 24:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints -= (ints & 0x800000) << 1  # sign-extend from 24 bits
        values = ints.astype(np.float32) / float(1 << 23)
    else:
        values = np.frombuffer(data, dtype="<i4").astype(np.float32) / float(1 << 31)
    return values.reshape(count, fmt.channels)


def _float_to_int16(samples: NDArray[np.float32]) -> Int16Array:
    import numpy as np

    scaled: NDArray[np.float32] = np.rint(samples * np.float32(32768.0))
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


def _resample(mono: NDArray[np.float32], rate: int) -> Int16Array:
    """Resample with libswresample (windowed-sinc, delay-compensated)."""
    import av
    import numpy as np

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(mono).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, rate)
    out = resampler.resample(frame) + resampler.resample(None)
    if not out:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([samples_of(f) for f in out])


def samples_of(frame: av.AudioFrame) -> Int16Array:
    """The samples of a mono s16 frame, as a view of the frame's own buffer (no copy).

    The array keeps the frame's buffer alive; FFmpeg reuses it only once both are gone.
    """
    import numpy as np

    return np.frombuffer(memoryview(frame.planes[0]), dtype=np.int16, count=frame.samples)
