"""WAV loading, conversion to the pipeline format, framing."""

from __future__ import annotations

import os
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.errors import AudioFileError
from gateway.media.audio import FRAME_SAMPLES, SAMPLE_RATE, frames, load_wav, save_wav

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"

# Durations from the recordings' README.
RECORDINGS = {
    "cards-001.wav": 1.10,
    "cards-002.wav": 1.96,
    "cards-003.wav": 1.54,
    "cards-004.wav": 1.55,
    "cards-005.wav": 3.50,
    "goforward.wav": 2.79,
    "numbers.wav": 4.02,
    "forever-2.wav": 3.35,
}


def raw_samples(name: str) -> NDArray[np.int16]:
    with wave.open(str(AUDIO / name), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def write_wav(
    path: Path,
    data: bytes,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = SAMPLE_RATE,
    bits: int = 16,
    extensible: bool = False,
    extra_chunks: bytes = b"",
    data_size: int | None = None,
) -> Path:
    """A WAV file written byte by byte, so tests control every header field."""
    block_align = channels * bits // 8
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack(
            "<HHIIHHHHI", 0xFFFE, channels, rate, rate * block_align, block_align, bits, 22, bits, 0
        )
        fmt += struct.pack("<H", tag) + guid_tail
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block_align, block_align, bits)
    size = len(data) if data_size is None else data_size
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + extra_chunks
        + b"data"
        + struct.pack("<I", size)
        + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def fft_resample(x: NDArray[np.float64], new_length: int) -> NDArray[np.float64]:
    """Band-limited resampling by zero-padding or truncating the spectrum (a reference)."""
    spectrum = np.fft.rfft(x)
    out = np.zeros(new_length // 2 + 1, dtype=complex)
    keep = min(len(spectrum), len(out))
    out[:keep] = spectrum[:keep]
    result: NDArray[np.float64] = np.fft.irfft(out, new_length) * (new_length / len(x))
    return result


def snr_db(reference: NDArray[np.generic], test: NDArray[np.generic]) -> float:
    ref = reference.astype(np.float64)
    err = test.astype(np.float64) - ref
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(err**2), 1e-9)))


# --- reading the recordings ------------------------------------------------------------


@pytest.mark.parametrize(("name", "seconds"), sorted(RECORDINGS.items()))
def test_recordings_load_as_16k_mono_int16(name: str, seconds: float) -> None:
    pcm = load_wav(AUDIO / name)
    assert pcm.dtype == np.int16
    assert pcm.ndim == 1
    assert len(pcm) / SAMPLE_RATE == pytest.approx(seconds, abs=0.006)
    assert np.array_equal(pcm, raw_samples(name))
    assert pcm.flags.writeable


def test_accepts_str_paths() -> None:
    assert len(load_wav(str(AUDIO / "cards-001.wav"))) == len(raw_samples("cards-001.wav"))


# --- conversions -------------------------------------------------------------------


@pytest.fixture
def speech() -> NDArray[np.int16]:
    return raw_samples("cards-001.wav")


def test_stereo_is_averaged(tmp_path: Path, speech: NDArray[np.int16]) -> None:
    right = (speech // 3).astype(np.int16)
    stereo = np.stack([speech, right], axis=1).astype("<i2").tobytes()
    pcm = load_wav(write_wav(tmp_path / "s.wav", stereo, channels=2))
    expected = (speech.astype(np.float64) + right) / 2
    assert np.max(np.abs(pcm - expected)) <= 0.5


def test_multichannel_extensible_24_bit(tmp_path: Path, speech: NDArray[np.int16]) -> None:
    # Four identical channels of 24-bit samples, in a WAVE_FORMAT_EXTENSIBLE header.
    ints = speech.astype(np.int32) << 8
    b = np.stack([ints & 0xFF, (ints >> 8) & 0xFF, (ints >> 16) & 0xFF], axis=1).astype(np.uint8)
    frames_4ch = np.repeat(b[:, None, :], 4, axis=1).tobytes()
    path = write_wav(tmp_path / "x.wav", frames_4ch, channels=4, bits=24, extensible=True)
    assert np.array_equal(load_wav(path), speech)


def test_32_bit_int_and_float(tmp_path: Path, speech: NDArray[np.int16]) -> None:
    as_int32 = (speech.astype("<i4") << 16).tobytes()
    assert np.array_equal(load_wav(write_wav(tmp_path / "i.wav", as_int32, bits=32)), speech)
    as_float = (speech.astype("<f4") / 32768).tobytes()
    float_path = write_wav(tmp_path / "f.wav", as_float, tag=3, bits=32)
    assert np.array_equal(load_wav(float_path), speech)
    as_double = (speech.astype("<f8") / 32768).tobytes()
    assert np.array_equal(
        load_wav(write_wav(tmp_path / "d.wav", as_double, tag=3, bits=64)), speech
    )


def test_8_bit_unsigned(tmp_path: Path, speech: NDArray[np.int16]) -> None:
    as_u8 = ((speech.astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes()
    pcm = load_wav(write_wav(tmp_path / "u8.wav", as_u8, bits=8))
    assert np.max(np.abs(pcm.astype(np.int32) - speech)) < 256  # 8-bit quantization only
    assert snr_db(speech, pcm) > 25


@pytest.mark.parametrize("rate", [48000, 44100, 22050])
def test_higher_rates_are_resampled(tmp_path: Path, speech: NDArray[np.int16], rate: int) -> None:
    x = speech[: len(speech) // 320 * 320].astype(np.float64)  # whole samples at 22.05 kHz
    upsampled = fft_resample(x, len(x) * rate // SAMPLE_RATE)
    data = np.clip(np.rint(upsampled), -32768, 32767).astype("<i2").tobytes()
    pcm = load_wav(write_wav(tmp_path / "up.wav", data, rate=rate))
    assert abs(len(pcm) - len(x)) <= 1
    n = min(len(pcm), len(x))
    # Not aligned, or not band-limited properly, this would be far below 30 dB.
    assert snr_db(x[:n], pcm[:n]) > 30


def test_8k_is_upsampled(tmp_path: Path, speech: NDArray[np.int16]) -> None:
    x = speech[: len(speech) // 2 * 2].astype(np.float64)
    narrow = fft_resample(x, len(x) // 2)
    data = np.clip(np.rint(narrow), -32768, 32767).astype("<i2").tobytes()
    pcm = load_wav(write_wav(tmp_path / "nb.wav", data, rate=8000))
    assert abs(len(pcm) - len(x)) <= 1
    # Compare with the original low-passed to 4 kHz: all an 8 kHz file can hold.
    reference = fft_resample(narrow, len(x))
    n = min(len(pcm), len(reference))
    assert snr_db(reference[:n], pcm[:n]) > 25


def test_skips_unknown_chunks_including_odd_sized(
    tmp_path: Path, speech: NDArray[np.int16]
) -> None:
    extra = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00" + b"fact" + struct.pack("<I", 4)
    extra += struct.pack("<I", len(speech))
    path = write_wav(tmp_path / "c.wav", speech.astype("<i2").tobytes(), extra_chunks=extra)
    assert np.array_equal(load_wav(path), speech)


def test_truncated_data_chunk_uses_what_is_there(tmp_path: Path, speech: NDArray[np.int16]) -> None:
    # A recorder killed mid-write: the header claims more than the file holds (and an odd byte).
    data = speech.astype("<i2").tobytes()[:-3]
    path = write_wav(tmp_path / "t.wav", data, data_size=0xFFFFFFF0)
    assert np.array_equal(load_wav(path), speech[:-2])


# --- refusing broken files ------------------------------------------------------------


def refusal(path: Path | str) -> AudioFileError:
    with pytest.raises(AudioFileError) as info:
        load_wav(path)
    assert info.value.path == str(path)
    return info.value


def test_bad_wav_header_only() -> None:
    # fmt chunk size is "ffff" (0x66666666): nothing after it can be trusted.
    reason = refusal(AUDIO / "bad.wav").reason
    assert "'fmt '" in reason
    assert "1717986918" in reason
    assert "only 24" in reason
    assert "no usable format or audio" in reason


def test_evil_wav_garbage_chunk_instead_of_data() -> None:
    reason = refusal(AUDIO / "evil.wav").reason
    assert "no 'data' chunk" in reason
    assert "'HURF'" in reason
    assert "960051513" in reason


def test_null_wav_has_zero_samples() -> None:
    assert refusal(AUDIO / "null.wav").reason == "the 'data' chunk is empty: 0 samples"


def test_missing_file(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nope.wav").reason == "no such file"


def test_not_a_wav_file() -> None:
    reason = refusal(AUDIO / "README.md").reason
    assert reason.startswith("not a WAV file")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    assert refusal(tmp_path / "empty.wav").reason == "not a WAV file: only 0 bytes long"


def test_directory(tmp_path: Path) -> None:
    assert "directory" in refusal(tmp_path).reason


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.wav")
    assert refusal(tmp_path / "pipe.wav").reason == "not a regular file"


def test_compressed_format(tmp_path: Path) -> None:
    reason = refusal(write_wav(tmp_path / "ulaw.wav", b"\x00" * 100, tag=7, bits=8)).reason
    assert "0x0007" in reason
    assert "mu-law" in reason


def test_unsupported_bit_depth(tmp_path: Path) -> None:
    reason = refusal(write_wav(tmp_path / "b12.wav", b"\x00" * 100, bits=12)).reason
    assert "12-bit" in reason


def test_data_before_fmt(tmp_path: Path) -> None:
    path = tmp_path / "order.wav"
    body = b"WAVE" + b"data" + struct.pack("<I", 4) + b"\x00" * 4
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert "before 'fmt '" in refusal(path).reason


def test_zero_channels(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "c0.wav", b"\x00" * 8, channels=0)
    assert "0 channels" in refusal(path).reason


# --- frames and saving --------------------------------------------------------------


def test_frames_are_views_and_the_last_is_padded() -> None:
    pcm = raw_samples("cards-001.wav")
    chunks = list(frames(pcm))
    assert len(chunks) == -(-len(pcm) // FRAME_SAMPLES)
    assert all(len(c) == FRAME_SAMPLES and c.dtype == np.int16 for c in chunks)
    assert all(np.shares_memory(c, pcm) for c in chunks[:-1])
    tail = len(pcm) % FRAME_SAMPLES
    assert tail  # this recording does not end on a frame boundary
    assert np.array_equal(chunks[-1][:tail], pcm[-tail:])
    assert not chunks[-1][tail:].any()
    assert np.array_equal(np.concatenate(chunks)[: len(pcm)], pcm)


def test_frames_exact_multiple_and_empty() -> None:
    pcm = raw_samples("cards-001.wav")[: 3 * FRAME_SAMPLES]
    assert len(list(frames(pcm))) == 3
    assert list(frames(pcm[:0])) == []


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    pcm = raw_samples("cards-003.wav")
    save_wav(tmp_path / "out.wav", pcm)
    assert np.array_equal(load_wav(tmp_path / "out.wav"), pcm)
    with wave.open(str(tmp_path / "out.wav"), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)


def test_save_refuses_non_int16(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_wav(tmp_path / "f.wav", np.zeros(10, dtype=np.float32))
    with pytest.raises(AudioFileError):
        save_wav(tmp_path / "missing-dir" / "x.wav", np.zeros(10, dtype=np.int16))


def test_truncated_or_mangled_headers_never_escape_as_other_errors(tmp_path: Path) -> None:
    original = (AUDIO / "cards-001.wav").read_bytes()
    rng = np.random.default_rng(4733)
    variants = [original[:cut] for cut in range(0, 64)]
    for _ in range(300):
        mangled = bytearray(original[:2000])
        for pos in rng.integers(0, 48, size=int(rng.integers(1, 4))):
            mangled[pos] = int(rng.integers(0, 256))
        variants.append(bytes(mangled))
    outcomes = {"loaded": 0, "refused": 0}
    for i, data in enumerate(variants):
        path = tmp_path / f"v{i}.wav"
        path.write_bytes(data)
        try:
            pcm = load_wav(path)
        except AudioFileError as exc:
            assert exc.reason
            outcomes["refused"] += 1
        else:
            assert pcm.dtype == np.int16 and pcm.ndim == 1 and len(pcm) > 0
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 64
    assert outcomes["loaded"] > 0
