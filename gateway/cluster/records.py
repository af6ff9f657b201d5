"""Call records in the cluster's Redis: one JSON value per call, which several workers write.

The owner writes a call's record while the call runs and when it ends, from the
copy it keeps in memory. WhatsApp's later reports can reach any worker: a status
(added by the call manager of whichever worker got it) and the terminate record
(:mod:`.router`, or the reaper's ending of a lost worker's call). Each writer
writes a whole record built from its own copy, so a plain ``SET`` would drop
what another worker reported since that copy was made.

:meth:`RecordWriter.write` is that ``SET`` with a check, in one round trip: a Lua
script writes the record unless it lacks a report the stored one has (a status,
counted with its repeats, or the terminate record); then it returns the stored
record instead, the writer adds what it lacks (:func:`adopt_reports`) and
tries again. The merge is done here, in Python, because Redis's Lua JSON
encoder would rewrite the record (empty lists become objects, floats lose
digits); the script only decodes.

The first end of a call is final: once the stored record is ENDED, a write that
is not the same end (a worker that was reaped during a stall saving its call as
ACTIVE, or ending it later for its own reason) is refused like one that lacks a
report, and the writer takes the stored end (state, time, reason) before it
writes again. The writer learns so that its call was ended elsewhere
(:meth:`RecordWriter.save` returns that end), and ends its copy of the call with
that end (reason and time), so that its copy, its ``call.ended`` event and Redis
say the same.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from ..records import CallRecord, CallState
from . import keys

# WhatsApp's terminate webhook on a record: set together, by whoever got it.
TERMINATE_FIELDS = ("terminate_status", "duration", "start_time", "end_time", "errors")
# A call's end on a record: set together, once (the first writer's stays).
END_FIELDS = ("state", "ended_at", "end_reason")
# A write that keeps meeting new reports gives up after this many tries (each one
# means another worker wrote the record in the same moment).
WRITE_ATTEMPTS = 8

# KEYS[1] the record, KEYS[2] the index of records, KEYS[3] a worker's live calls.
# ARGV[1] the record's JSON, ARGV[2] the call id, ARGV[3] its created_at ('' = leave
# the index alone), ARGV[4] '+' add to / '-' remove from KEYS[3] ('' = neither).
# Returns false when written, else the stored record: it has reports ARGV[1] lacks, or
# an end (the first end is final) that ARGV[1] does not have.
_WRITE = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local old, new = cjson.decode(stored), cjson.decode(ARGV[1])
  local function set(v) return v ~= nil and v ~= cjson.null end
  if old.state == 'ENDED' and (new.state ~= 'ENDED' or new.ended_at ~= old.ended_at) then
    return stored
  end
  if set(old.terminate_status) and not set(new.terminate_status) then
    return stored
  end
  local have = {}
  if type(new.statuses) == 'table' then
    for _, s in ipairs(new.statuses) do have[s] = (have[s] or 0) + 1 end
  end
  if type(old.statuses) == 'table' then
    for _, s in ipairs(old.statuses) do
      if (have[s] or 0) == 0 then return stored end
      have[s] = have[s] - 1
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2]) end
if ARGV[4] == '+' then
  redis.call('SADD', KEYS[3], ARGV[2])
elseif ARGV[4] == '-' then
  redis.call('SREM', KEYS[3], ARGV[2])
end
return false
"""


@dataclass(frozen=True)
class FinalEnd:
    """A call's end as its stored record keeps it (the first end, final)."""

    reason: str
    at: float

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> FinalEnd:
        """The end of an ENDED record's JSON view."""
        at = record.get("ended_at")
        return cls(str(record.get("end_reason") or "ended"), time.time() if at is None else at)


def adopt_reports(record: dict[str, Any], stored: dict[str, Any]) -> None:
    """Add to ``record`` (a record's JSON view) what only ``stored`` has: WhatsApp's
    reports, and the call's end.

    The statuses it lacks (counting repeats) go after its own; the terminate record
    is taken whole when ``record`` has none; a stored end replaces ``record``'s
    (the first end is final).
    """
    if stored.get("state") == CallState.ENDED:
        record.update({name: stored.get(name) for name in END_FIELDS})
    if record.get("terminate_status") is None and stored.get("terminate_status") is not None:
        record.update({name: stored.get(name) for name in TERMINATE_FIELDS})
    lacking = Counter(stored.get("statuses") or []) - Counter(record.get("statuses") or [])
    if lacking:
        record["statuses"] = [*(record.get("statuses") or []), *lacking.elements()]


class RecordWriter:
    """Writes call records for one Redis client (its script registered once)."""

    def __init__(self, redis: Any) -> None:
        self._script = redis.register_script(_WRITE)

    async def write(
        self, record: dict[str, Any], *, index: bool = False, live_of: str = ""
    ) -> dict[str, Any]:
        """Write ``record`` (a record's JSON view) keeping every report another worker
        saved and the call's first end; returns the record as written (``record``
        itself, with those added).

        ``index``: also list it in the index of records (by ``created_at``).
        ``live_of``: also add the call to this worker's live calls, or remove it when
        the record as written is ENDED.
        """
        call_id = str(record["call_id"])
        live_key = keys.worker_calls(live_of) if live_of else keys.CALLS
        for _ in range(WRITE_ATTEMPTS):
            stored = await self._script(
                keys=[keys.record(call_id), keys.CALLS, live_key],
                args=[
                    json.dumps(record),
                    call_id,
                    repr(float(record["created_at"])) if index else "",
                    ("-" if record.get("state") == CallState.ENDED else "+") if live_of else "",
                ],
            )
            if stored is None:
                return record
            adopt_reports(record, json.loads(stored))
        raise StoreError(f"record of {call_id} not written: {WRITE_ATTEMPTS} writes met changes")

    async def save(self, record: CallRecord, *, live_of: str) -> FinalEnd | None:
        """Write a :class:`CallRecord` as its owner ``live_of`` does (indexed, and in or
        out of its live calls by its state); the reports it lacked are added to it.

        Returns the stored end when the stored record says the call ended while
        ``record`` does not: it was ended elsewhere (the reaper took ``live_of`` for
        lost), and its owner must end its copy with that end. The end is added to
        ``record`` only once that copy ended too (a live call's state is its own to
        change).
        """
        view = await self.write(record.as_dict(), index=True, live_of=live_of)
        # Added to what the record holds now (a status its owner added meanwhile stays),
        # with no await in between.
        current = record.as_dict()
        adopt_reports(current, view)
        ended_elsewhere = record.state != CallState.ENDED and view["state"] == CallState.ENDED
        names = (*TERMINATE_FIELDS, "statuses", *(() if ended_elsewhere else END_FIELDS))
        for name in names:
            value = current[name]
            setattr(record, name, CallState(value) if name == "state" else value)
        return FinalEnd.of(view) if ended_elsewhere else None
