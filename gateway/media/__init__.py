"""The media layer: WAV files, Opus, outbound and inbound RTP audio, DTMF.

Past this package audio is 16 kHz mono int16 samples (:mod:`gateway.media.pcm`:
``array('h')`` made here, any int16 buffer taken) in 20 ms frames of 320
samples; no ``av.AudioFrame`` leaves it, and no numpy array is made on the way.
"""

from gateway.media.audio import frames, load_wav, save_wav
from gateway.media.dtmf import (
    DtmfDetector,
    DtmfEvent,
    DtmfSender,
    add_telephone_event_codec,
    encode_digit,
    parse_event,
)
from gateway.media.ice import use_host_addresses
from gateway.media.inbound import InboundAudio, InboundStats
from gateway.media.jitter import JitterBuffer
from gateway.media.opus import OpusDecoder, OpusEncoder, packet_duration, silence_packet
from gateway.media.pcm import FRAME_MS, FRAME_SAMPLES, PCM, SAMPLE_RATE, AudioBuffer, as_samples
from gateway.media.playout import Playback, PlayoutStats, PlayoutTrack

__all__ = [
    "FRAME_MS",
    "FRAME_SAMPLES",
    "PCM",
    "SAMPLE_RATE",
    "AudioBuffer",
    "DtmfDetector",
    "DtmfEvent",
    "DtmfSender",
    "InboundAudio",
    "InboundStats",
    "JitterBuffer",
    "OpusDecoder",
    "OpusEncoder",
    "Playback",
    "PlayoutStats",
    "PlayoutTrack",
    "add_telephone_event_codec",
    "as_samples",
    "encode_digit",
    "frames",
    "load_wav",
    "packet_duration",
    "parse_event",
    "save_wav",
    "silence_packet",
    "use_host_addresses",
]
