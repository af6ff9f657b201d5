"""Call metrics: a call observer for events (started, answered, ended) and a collector
that reads the media path's own counters at scrape time.

Nothing here runs per packet. The inbound and playout paths already count
packets, losses and late frames in plain ints (and aiortc's sender counts what
it sends, and its RTCP statistics keep the jitter); :class:`CallCollector`
sums them over live calls when ``/metrics`` is read, plus what ended calls
left behind. Session figures (response latency, barge-in stop time) are lists
the session appends to; they are moved into histograms at scrape and at call end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..events import Direction

if TYPE_CHECKING:
    from ..calls import Call, CallManager

SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 45.0)
RESPONSE_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
BARGE_IN_BUCKETS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)

# End reasons are free text (a bot may say why it hung up); the label is one of these.
_REASONS = (
    ("terminated by WhatsApp (completed)", "remote_hangup"),
    ("terminated by WhatsApp", "remote_failed"),
    ("rejected by the user", "rejected"),
    ("not answered within", "no_answer"),
    ("answer timed out", "answer_timeout"),
    ("bad offer", "bad_sdp"),
    ("bad SDP answer", "bad_sdp"),
    ("answer failed", "graph_error"),
    ("media path failed", "media_failed"),
    ("no media after answer", "media_failed"),
    ("no media within", "media_timeout"),
    ("no inbound media", "media_idle"),
    ("hung up through the API", "api_hangup"),
    ("gateway shutting down", "shutdown"),
    ("internal error", "error"),
    ("session error", "error"),
    ("bot error", "error"),
    ("terminated before it was answered", "remote_hangup"),
)


def end_reason_label(reason: str | None) -> str:
    """A bounded label for a call's end reason; ``bot_hangup`` for anything a bot said."""
    if not reason:
        return "unknown"
    for prefix, label in _REASONS:
        if reason.startswith(prefix):
            return label
    return "bot_hangup"


@dataclass
class MediaTotals:
    """Sums of the media counters; one for ended calls, one built per scrape for live ones."""

    received_packets: int = 0
    received_bytes: int = 0
    lost_packets: int = 0
    late_packets: int = 0
    concealed_frames: int = 0
    sent_packets: int = 0
    sent_bytes: int = 0
    playout_late_frames: int = 0
    playout_skipped_frames: int = 0

    def add_call(self, call: Call) -> None:
        """Add one call's counters (read, never reset)."""
        if call.inbound is not None:
            s = call.inbound.stats
            self.received_packets += s.packets
            self.received_bytes += s.bytes
            self.lost_packets += s.lost
            self.late_packets += s.late
            self.concealed_frames += s.concealed
        p = call.playout.stats
        self.playout_late_frames += p.late_frames
        self.playout_skipped_frames += p.skipped_frames
        packets, octets = sender_counts(call)
        self.sent_packets += packets
        self.sent_bytes += octets

    def plus(self, other: MediaTotals) -> MediaTotals:
        """Field-wise sum."""
        return MediaTotals(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


def sender_counts(call: Call) -> tuple[int, int]:
    """RTP packets and payload bytes aiortc's sender sent on this call (its RTCP SR counters)."""
    for transceiver in call.pc.getTransceivers():
        sender = transceiver.sender
        return (
            int(getattr(sender, "_RTCRtpSender__packet_count", 0)),
            int(getattr(sender, "_RTCRtpSender__octet_count", 0)),
        )
    return 0, 0


_MEDIA_HELP = {
    "received_packets": ("gateway_rtp_received_packets", "Opus RTP packets received"),
    "received_bytes": ("gateway_rtp_received_bytes", "Opus RTP payload bytes received"),
    "lost_packets": ("gateway_rtp_lost_packets", "Inbound audio packets that never came"),
    "late_packets": ("gateway_rtp_late_packets", "Inbound packets dropped as too late or twice"),
    "concealed_frames": (
        "gateway_rtp_concealed_frames",
        "Inbound frames made up by packet-loss concealment",
    ),
    "sent_packets": ("gateway_rtp_sent_packets", "RTP packets sent to callers"),
    "sent_bytes": ("gateway_rtp_sent_bytes", "RTP payload bytes sent to callers"),
    "playout_late_frames": (
        "gateway_playout_late_frames",
        "Outbound frames sent more than 20 ms after they were due",
    ),
    "playout_skipped_frames": (
        "gateway_playout_skipped_frames",
        "Outbound frame slots skipped after an event-loop stall",
    ),
}


class CallMetrics:
    """The call observer feeding the event-driven metrics, and the scrape-time collector."""

    def __init__(self, calls: CallManager, registry: CollectorRegistry) -> None:
        self.calls = calls
        self.started = Counter(
            "gateway_calls_started", "Calls started, by direction", ["direction"], registry=registry
        )
        self.ended = Counter(
            "gateway_calls",
            "Calls ended, by direction and end reason",
            ["direction", "end_reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "gateway_calls_rejected",
            "User calls rejected without answering, by reason",
            ["reason"],
            registry=registry,
        )
        self.setup = Histogram(
            "gateway_call_setup_seconds",
            "Call setup time from the connect webhook (or our dial) to accept, and to media up",
            ["direction", "stage"],
            buckets=SETUP_BUCKETS,
            registry=registry,
        )
        self.response = Histogram(
            "gateway_response_seconds",
            "Caller's turn end (VAD) to the first frame of the bot's answer leaving",
            buckets=RESPONSE_BUCKETS,
            registry=registry,
        )
        self.barge_in = Histogram(
            "gateway_barge_in_stop_seconds",
            "Caller's speech onset to the bot's audio being cut, on the media timeline",
            buckets=BARGE_IN_BUCKETS,
            registry=registry,
        )
        self.call_seconds_ended = 0.0
        self.media_ended = MediaTotals()
        # Per live call: how many of its session's latency figures were observed already.
        self._drained: dict[str, tuple[int, int]] = {}
        for direction in Direction:
            self.started.labels(str(direction))
        self.rejected.labels("capacity")
        registry.register(_Collector(self))

    # --- CallObserver --------------------------------------------------------

    def call_started(self, call: Call) -> None:
        self.started.labels(str(call.record.direction)).inc()
        observed = False

        def on_state() -> None:
            nonlocal observed
            if call.pc.connectionState == "connected" and not observed:
                observed = True
                self.setup.labels(str(call.record.direction), "media").observe(
                    max(0.0, time.time() - call.record.created_at)
                )

        call.pc.on("connectionstatechange", on_state)

    def call_answered(self, call: Call) -> None:
        record = call.record
        if record.accepted_at is not None:
            self.setup.labels(str(record.direction), "accept").observe(
                max(0.0, record.accepted_at - record.created_at)
            )

    def call_ended(self, call: Call) -> None:
        record = call.record
        self.ended.labels(str(record.direction), end_reason_label(record.end_reason)).inc()
        if record.accepted_at and record.ended_at:
            self.call_seconds_ended += record.ended_at - record.accepted_at
        self.media_ended.add_call(call)
        self.drain_session(call)
        self._drained.pop(call.id, None)

    def call_refused(self, call_id: str, reason: str) -> None:
        self.rejected.labels(reason).inc()

    # --- scrape time ---------------------------------------------------------

    def drain_session(self, call: Call) -> None:
        """Observe the session's latency figures not observed yet."""
        metrics: Any = getattr(call.session, "metrics", None)
        if metrics is None:
            return
        responses: list[float] = getattr(metrics, "response_latencies_ms", [])
        barge_ins: list[float] = getattr(metrics, "barge_in_stop_ms", [])
        seen_r, seen_b = self._drained.get(call.id, (0, 0))
        for ms in responses[seen_r:]:
            self.response.observe(ms / 1000)
        for ms in barge_ins[seen_b:]:
            self.barge_in.observe(ms / 1000)
        self._drained[call.id] = (len(responses), len(barge_ins))

    def drain_live(self) -> None:
        """Move live sessions' new latency figures into the histograms (before a scrape)."""
        for call in list(self.calls.calls.values()):
            self.drain_session(call)

    def live_call_seconds(self, now: float) -> float:
        """Answered seconds of the calls still up."""
        return sum(
            now - c.record.accepted_at for c in self.calls.calls.values() if c.record.accepted_at
        )


class _Collector(Collector):
    """Reads live calls' counters when ``/metrics`` is scraped."""

    def __init__(self, owner: CallMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterable[Any]:
        return list(self._collect())

    def _collect(self) -> Iterator[Any]:
        owner = self.owner
        live = list(owner.calls.calls.values())
        active = GaugeMetricFamily(
            "gateway_calls_active", "Calls up now (any state before ENDED)", labels=["direction"]
        )
        for direction in Direction:
            count = sum(1 for c in live if c.record.direction is direction)
            active.add_metric([str(direction)], count)
        yield active
        yield GaugeMetricFamily(
            "gateway_calls_capacity", "Concurrent call limit", value=owner.calls.max_calls
        )
        yield CounterMetricFamily(
            "gateway_call_seconds",
            "Seconds of answered calls, ended and live",
            value=owner.call_seconds_ended + owner.live_call_seconds(time.time()),
        )
        totals = MediaTotals()
        jitters: list[float] = []
        for call in live:
            totals.add_call(call)
            if call.inbound is not None:
                jitters.append(call.inbound.jitter_seconds)
        totals = totals.plus(owner.media_ended)
        for field_name, (name, help_text) in _MEDIA_HELP.items():
            yield CounterMetricFamily(name, help_text, value=getattr(totals, field_name))
        jitter = GaugeMetricFamily(
            "gateway_rtp_jitter_seconds",
            "Inbound interarrival jitter (RFC 3550) over live calls",
            labels=["stat"],
        )
        jitter.add_metric(["mean"], sum(jitters) / len(jitters) if jitters else 0.0)
        jitter.add_metric(["max"], max(jitters, default=0.0))
        yield jitter
