"""Cluster mode: many gateway workers, on one machine or many, behind one webhook URL.

Every ``gateway serve`` given the same ``GATEWAY_REDIS_URL`` is a worker of one
cluster. Redis carries signaling and state only, never media:

- :mod:`.node` — this worker's lease, the mirror of its calls (owner, record,
  live set) and the reaper that ends the calls of a worker whose lease expired.
- :mod:`.router` — the :class:`gateway.routing.Router` of a cluster: new calls
  through a Streams consumer group (:mod:`.placement`), everything else to the
  call's owner (through its inbox, :mod:`.inbox`).
- :mod:`.records` — call records that several workers write, none losing another's
  report (a late status, Meta's terminate record).
- :mod:`.supervisor` — ``gateway serve --workers N`` (SO_REUSEPORT).
- :mod:`.redis_server` — a private ``redis-server`` for tests and ``gateway cluster``.
- :mod:`.keys` — key names (events travel as :func:`gateway.events.encode_event` text).
"""
