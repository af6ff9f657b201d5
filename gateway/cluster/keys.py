"""Every Redis key the cluster uses, in one place.

One Redis database serves one cluster (one business phone number's gateways).
"""

from __future__ import annotations

PREFIX = "gw:"

# HASH worker id -> its load as JSON ({"calls", "max", "draining", "host", "pid"}).
WORKERS = PREFIX + "workers"
# HASH call id -> owning worker id.
OWNERS = PREFIX + "owners"
# SET of the ids of every live call in the cluster (its size is the cluster's load).
LIVE = PREFIX + "live"
# ZSET dedupe key of every webhook event handled -> when (pruned after ~3 days).
SEEN = PREFIX + "seen"
# ZSET call id -> created_at of every call record (recent calls, pruning).
CALLS = PREFIX + "calls"
# HASH wa_id -> the user's latest call permission reply and when it was saved.
PERMISSIONS = PREFIX + "permissions"
# STREAM of user-initiated calls waiting for a worker with room, and its consumer group.
NEW_CALLS = PREFIX + "newcalls"
PLACERS = "placers"

# Streams (new calls, inboxes) are capped at about this many entries.
STREAM_MAXLEN = 10_000
# Blocking stream reads wake up this often (ms) to notice draining and shutdown.
BLOCK_MS = 1000


def lease(worker: str) -> str:
    """The worker's lease: exists while the worker renews it."""
    return f"{PREFIX}lease:{worker}"


def worker_calls(worker: str) -> str:
    """SET of the calls a worker owns (what a surviving worker ends if it dies)."""
    return f"{PREFIX}calls-of:{worker}"


def inbox(worker: str) -> str:
    """STREAM of events and requests other workers hand to this worker."""
    return f"{PREFIX}inbox:{worker}"


def reaping(worker: str) -> str:
    """Lock taken by the one worker that ends a lost worker's calls."""
    return f"{PREFIX}reaping:{worker}"


def record(call_id: str) -> str:
    """A call's record as JSON (live or ended)."""
    return f"{PREFIX}record:{call_id}"


def early_terminate(call_id: str) -> str:
    """A terminate that arrived before any worker took the call."""
    return f"{PREFIX}early:{call_id}"


def ended_on(call_id: str) -> str:
    """The worker a call ended on, for ``ENDED_ON_SECONDS``: WhatsApp's terminate
    that follows the end is handed to it (its copy of the record waits for it)."""
    return f"{PREFIX}ended-on:{call_id}"


# How long a call's ended-on entry is kept (WhatsApp's terminate follows the end in
# seconds; a later one still goes into the record in Redis).
ENDED_ON_SECONDS = 600


def outbox(worker: str) -> str:
    """HASH event id -> a worker's undelivered event for the business backend."""
    return f"{PREFIX}outbox:{worker}"


def outbox_due(worker: str) -> str:
    """ZSET event id -> when a worker tries to deliver it next."""
    return f"{PREFIX}outbox-due:{worker}"


def journal(worker: str) -> str:
    """STREAM of the events a worker accepted and has not handled yet."""
    return f"{PREFIX}journal:{worker}"


def reply(token: str) -> str:
    """LIST where a worker answers another's request."""
    return f"{PREFIX}reply:{token}"
