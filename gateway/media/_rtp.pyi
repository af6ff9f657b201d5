"""Types of the compiled per-packet path (gateway/media/csrc/; see gateway.media.native)."""

from collections.abc import Callable
from typing import Any, Final

BUFFER_SIZE: Final[int]

def parse(data: bytes) -> tuple[int, int, int, int, int, int, int] | None:
    """(payload_type, marker, seq, timestamp, ssrc, payload start, payload end), or None."""

def opus_duration(payload: bytes) -> int:
    """An Opus packet's duration in 48 kHz samples, or -1 if its TOC cannot say."""

class Inbound:
    rx_packets: Final[int]
    rx_bytes: Final[int]
    fast_packets: Final[int]
    fast_bytes: Final[int]
    auth_failures: Final[int]
    malformed: Final[int]
    too_long: Final[int]
    @property
    def tracked_ssrc(self) -> int | None: ...
    @property
    def armed(self) -> bool: ...
    def __init__(
        self,
        unprotect: int,
        session: int,
        session_owner: object,
        slow: Callable[[bytes, int], object],
        on_error: Callable[[BaseException], object],
        unprotect_rtcp: int | None = None,
        on_rtcp: Callable[[bytes], object] | None = None,
    ) -> None: ...
    def __call__(self, data: bytes) -> None: ...
    def receive(self, data: bytes) -> None: ...
    def configure(
        self,
        decode: int,
        decoder: int,
        decoder_owner: object,
        on_frame: Callable[[Any], object],
        empty: Callable[..., Any],
        dtype: object,
        receiver: object,
    ) -> None: ...
    def arm(self, ssrc: int, opus_pt: int, next_timestamp: int, slot: int, /) -> None: ...
    def disarm(self) -> tuple[int, int] | None: ...
    def release(self) -> None: ...
    def track(self, ssrc: int, /) -> None: ...
    def count(self, sequence_number: int, timestamp: int, /) -> None: ...
    def statistics(self) -> tuple[int | None, int | None, int, int, int]: ...

class Port:
    def __init__(self, inbound: Inbound, other: Callable[[bytes, Any], object]) -> None: ...
    def __call__(self, data: bytes, addr: Any) -> None: ...

READ_BATCH: Final[int]

class Reader:
    """Reads sockets in batches (``recvmmsg``) through their :class:`Port`, at a tick."""

    datagrams: Final[int]
    drains: Final[int]
    kernel_times: Final[int]
    waited: Final[float]
    """Seconds the kernel-stamped datagrams waited in their socket for the read, summed."""
    def __init__(self, on_error: Callable[[BaseException], object]) -> None: ...
    def drain(
        self,
        port: Port,
        sock: Any,
        error_received: Callable[[OSError], object],
        limit: int,
        /,
    ) -> int:
        """Read up to ``limit`` datagrams of ``sock`` through ``port`` without blocking;
        how many (a socket error counts one), -1 if ``sock`` is closed."""
    def drain_each(
        self,
        entries: list[Any],
        start: int,
        deadline: float,
        time: Callable[[], float] | None,
        limit: int,
        failed: list[Any],
        /,
    ) -> int:
        """:meth:`drain` each entry's ``(protocol, port, sock, transport, error_received)``
        in turn from ``start`` (wrapping) until ``time()`` (None: the monotonic clock) is
        past ``deadline`` (infinite: never looked at); how many were read. A closing
        transport, a closed socket or a read that raised: ``(protocol, exc or None)``
        appended to ``failed``, and the turn goes on."""
    def timestamp_arrivals(self, sock: Any, on: bool, /) -> None:
        """``SO_TIMESTAMPNS`` on ``sock``: :meth:`drain` reads the kernel's arrival times."""

class Route:
    tx_packets: Final[int]
    tx_bytes: Final[int]
    fallbacks: Final[int]
    backlog: bool
    @property
    def open(self) -> bool: ...
    def __init__(
        self,
        protect: int,
        session: int,
        session_owner: object,
        sock: Any,
        host: str,
        port: int,
        fallback: Callable[[bytes], object],
        protect_rtcp: int | None = None,
    ) -> None: ...
    def close(self) -> None: ...
    def send_rtcp(self, packet: bytes, /) -> None:
        """Protect an RTCP compound (SRTCP) and send it; ConnectionError once closed."""

class Encoder:
    @property
    def closed(self) -> bool: ...
    def __init__(self, encode: int, destroy: int, state: int, frame_samples: int) -> None: ...
    def encode(self, pcm: Any, /) -> bytes:
        """One Opus packet from a C-contiguous buffer of exactly frame_samples int16."""
    def close(self) -> None: ...

class PlayoutState:
    """A PlayoutTrack's clock, and which frames its sender may send without Python."""

    pts: Final[int]
    next_pts: Final[int]
    frames_sent: Final[int]
    speech_frames: int
    late_frames: Final[int]
    skipped_frames: Final[int]
    behind: Final[bool]
    max_burst: Final[int]
    start: float | None
    """Loop time of pts 0, None until set."""
    @property
    def fast(self) -> str:
        """What send_due may send alone: '', 'silence', 'pcm' or 'packets'."""
    def __init__(
        self, max_burst: int, frame_ticks: int, frame_seconds: float, early: float
    ) -> None: ...
    def due(self, now: float, /) -> int | None:
        """The pts of the frame due at ``now`` (the clock steps), or None."""
    def disarm(self) -> None: ...
    def arm_silence(self, payload: bytes, /) -> None: ...
    def arm_speech(
        self,
        encoder: Encoder | None,
        source: Any,
        item: Any,
        playback: Any,
        index: int,
        end: int,
        /,
    ) -> None:
        """Frames index..end-1 of the head item (PCM with encoder, else packets)."""

class Outbound:
    packets: Final[int]
    octets: Final[int]
    ntp_timestamp: Final[int]
    rtp_timestamp: Final[int]
    sequence_number: Final[int]
    def __init__(
        self,
        transport: object,
        first_byte: int,
        second_byte: int,
        ssrc: int,
        extensions: bytes,
        sequence_number: int,
        timestamp_origin: int,
    ) -> None: ...
    def send(self, payload: bytes, pts: int, /) -> bytes | None: ...
    def send_pcm(self, encoder: Any, pcm: Any, pts: int, /) -> bytes | None:
        """Encode pcm with encoder._native_encoder (an Encoder) and send it as send() does."""
    def send_due(self, state: PlayoutState, now: float, /) -> bytes | bool | None:
        """Send the frames of ``state`` due at ``now`` that need no Python: None once none
        is due, False if the next is Python's, or a packet in clear for the Python path."""
