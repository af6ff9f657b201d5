"""Opus encoding and decoding of real speech."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.media.audio import FRAME_SAMPLES, frame_rms, load_wav
from gateway.media.opus import (
    ENCODER_DELAY,
    OpusDecoder,
    OpusEncoder,
    frames_for,
    packet_duration,
    silence_packet,
)
from gateway.media.pcm import PCM

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"


def rms(pcm: NDArray[np.int16] | PCM) -> float:
    return float(np.sqrt(np.mean(np.asarray(pcm, dtype=np.float64) ** 2)))


@pytest.fixture(scope="module")
def speech() -> NDArray[np.int16]:
    return load_wav(AUDIO / "cards-005.wav")


@pytest.fixture(scope="module")
def packets(speech: NDArray[np.int16]) -> list[bytes]:
    return OpusEncoder().encode_pcm(speech)


def encode_with_pyav(pcm: NDArray[np.int16], frame_ms: int, stereo: bool = False) -> list[bytes]:
    """Packets of other durations or channel counts, as another Opus sender would make."""
    rate = 48000 if stereo else 16000
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = rate
    codec.layout = "stereo" if stereo else "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.time_base = fractions.Fraction(1, rate)
    codec.options = {"application": "voip", "frame_duration": str(frame_ms)}
    size = rate * frame_ms // 1000
    out: list[bytes] = []
    for i in range(len(pcm) // size):
        chunk = pcm[i * size : (i + 1) * size]
        data = np.stack([chunk, chunk], axis=1).reshape(1, -1) if stereo else chunk.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=codec.layout.name)
        frame.sample_rate = rate
        frame.pts = i * size
        out.extend(bytes(p) for p in codec.encode(frame))
    return out


# --- encoder ------------------------------------------------------------------------


def test_one_packet_per_frame(speech: NDArray[np.int16]) -> None:
    encoder = OpusEncoder()
    for i in range(50):
        packet = encoder.encode(speech[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        assert isinstance(packet, bytes)
        assert packet
        assert packet_duration(packet) == 960  # 20 ms at Opus' 48 kHz clock


def test_encode_pcm_covers_the_lookahead(speech: NDArray[np.int16], packets: list[bytes]) -> None:
    assert len(packets) == frames_for(len(speech)) == -(-(len(speech) + ENCODER_DELAY) // 320)
    assert OpusEncoder().encode_pcm(speech[:0]) == []


def test_bitrate_is_near_20_kbit(speech: NDArray[np.int16], packets: list[bytes]) -> None:
    bits_per_second = sum(map(len, packets)) * 8 / (len(packets) * 0.020)
    assert 14000 < bits_per_second < 22000
    louder = OpusEncoder(bitrate=40000).encode_pcm(speech)
    assert sum(map(len, louder)) > 1.5 * sum(map(len, packets))


def test_encoder_refuses_wrong_frames(speech: NDArray[np.int16]) -> None:
    encoder = OpusEncoder()
    with pytest.raises(ValueError):
        encoder.encode(speech[:319])
    with pytest.raises(ValueError):
        encoder.encode(speech[:320].astype(np.float32))


def test_silence_packet_is_cached_and_silent() -> None:
    packet = silence_packet()
    assert silence_packet() is packet
    assert packet_duration(packet) == 960
    assert len(packet) < 12
    decoder = OpusDecoder()
    for _ in range(5):
        out = decoder.decode(packet)
        assert len(out) == FRAME_SAMPLES
        assert np.max(np.abs(out)) <= 4


# --- decoder ------------------------------------------------------------------------


def test_every_20ms_packet_decodes_to_320_samples(packets: list[bytes]) -> None:
    decoder = OpusDecoder()
    lengths = {len(decoder.decode(p)) for p in packets}
    assert lengths == {FRAME_SAMPLES}


def test_round_trip_matches_the_recording(speech: NDArray[np.int16], packets: list[bytes]) -> None:
    decoder = OpusDecoder()
    decoded = np.concatenate([decoder.decode(p) for p in packets])
    delay = ENCODER_DELAY
    # The delay is where the waveforms line up best.
    n = len(speech) - 400
    scores = [np.dot(decoded[lag : lag + n].astype(np.float64), speech[:n]) for lag in range(200)]
    assert int(np.argmax(scores)) == delay
    aligned = decoded[delay : delay + len(speech)]
    # Measured: waveform 0.84, envelope 0.994 (cards-005 at 20 kbit/s).
    assert np.corrcoef(aligned, speech)[0, 1] > 0.75
    assert np.corrcoef(frame_rms(aligned), frame_rms(speech))[0, 1] > 0.98


def test_stereo_packets_decode_to_mono(speech: NDArray[np.int16]) -> None:
    up = np.repeat(speech, 3)  # crude 48 kHz; only the channel handling matters here
    decoder = OpusDecoder()
    out = [decoder.decode(p) for p in encode_with_pyav(up, 20, stereo=True)]
    assert {len(o) for o in out} == {FRAME_SAMPLES}
    assert rms(np.concatenate(out)) > 0.5 * rms(speech)


@pytest.mark.parametrize(("frame_ms", "ticks"), [(10, 480), (20, 960), (40, 1920), (60, 2880)])
def test_other_packet_durations(speech: NDArray[np.int16], frame_ms: int, ticks: int) -> None:
    packets = encode_with_pyav(speech, frame_ms)
    decoder = OpusDecoder()
    for packet in packets:
        assert packet_duration(packet) == ticks
        assert len(decoder.decode(packet)) == ticks // 3


def test_packet_duration_of_multi_frame_packets() -> None:
    assert packet_duration(bytes([(1 << 3) | 1])) == 1920  # code 1: two 20 ms SILK frames
    assert packet_duration(bytes([(31 << 3) | 3, 6])) == 6 * 960  # code 3: six 20 ms CELT frames
    for bad in (b"", bytes([3]), bytes([3, 0]), bytes([(31 << 3) | 3, 7])):
        with pytest.raises(ValueError):
            packet_duration(bad)


def test_corrupt_and_empty_payloads_raise_and_leave_the_decoder_usable(
    packets: list[bytes],
) -> None:
    decoder = OpusDecoder()
    decoder.decode(packets[0])
    with pytest.raises(ValueError):
        decoder.decode(b"")
    with pytest.raises(ValueError):
        decoder.decode(b"\xff\xff\xff")
    assert len(decoder.decode(packets[1])) == FRAME_SAMPLES


# --- concealment ------------------------------------------------------------------------


def test_conceal_before_any_packet_is_silence() -> None:
    out = OpusDecoder().conceal()
    assert len(out) == FRAME_SAMPLES
    assert not any(out)


def test_conceal_continues_the_voice_then_fades(packets: list[bytes]) -> None:
    decoder = OpusDecoder()
    loud = 75  # packets[:75] end in the middle of a vowel
    for packet in packets[:loud]:
        last = decoder.decode(packet)
    assert rms(last) > 1000
    concealed = [decoder.conceal() for _ in range(12)]
    assert {len(c) for c in concealed} == {FRAME_SAMPLES}
    # Measured after a voiced frame of RMS ~4500: 4341, 3265, 2103, 909, 243, 58, ~40...
    assert rms(concealed[0]) > 0.3 * rms(last)
    assert rms(concealed[-1]) < 0.05 * rms(last)
    # The decoder goes on decoding real packets afterwards.
    assert len(decoder.decode(packets[loud + 12])) == FRAME_SAMPLES


# --- libopus directly -------------------------------------------------------------------


def test_packets_are_those_ffmpegs_encoder_made(speech: NDArray[np.int16]) -> None:
    # Same libopus, same settings as the PyAV encoder the gateway used before.
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 16000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 20000
    codec.time_base = fractions.Fraction(1, 16000)
    codec.options = {"application": "voip", "frame_duration": "20", "compression_level": "5"}
    ours = OpusEncoder()
    for i in range(100):
        chunk = speech[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = i * FRAME_SAMPLES
        assert ours.encode(chunk) == bytes(codec.encode(frame)[0])


def test_closed_codecs_refuse_work(packets: list[bytes]) -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    decoder.decode(packets[0])
    encoder.close()
    decoder.close()
    decoder.close()  # twice is fine
    with pytest.raises(ValueError):
        encoder.encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    with pytest.raises(ValueError):
        decoder.decode(packets[1])
    assert not any(decoder.conceal())


def test_encoding_and_decoding_leak_nothing_per_frame() -> None:
    # Per-frame work must leave nothing behind (PyAV 16's encoder and resampler
    # leaked 81 bytes per frame). Count what survives 500 frames each way.
    import gc
    import tracemalloc

    encoder, decoder = OpusEncoder(), OpusDecoder()
    silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    packet = encoder.encode(silence)
    decoder.decode(packet)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(500):
            decoder.decode(encoder.encode(silence))
        gc.collect()
        grown = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()
    blocks = sum(max(0, stat.count_diff) for stat in grown)
    assert blocks < 100, [str(s) for s in grown[:5]]
