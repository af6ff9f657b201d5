"""Learning the room: when a stream's first frames have shown what the room sounds like.

A stream may begin with the caller's voice or with other voices; the two look
alike until the first pause. With the voice gate on, the segmenter holds the
stream's first frames (in its utterance buffer) while the gates' trackers follow
the room, and a :class:`RoomLearner` watches each frame's verdict and level. Once
the room has shown itself (a pause; a second with no voice well above the rest;
or :data:`LEARN_MAX_FRAMES` without either), the segmenter judges the held frames
again as if the room had been known from the start (from :meth:`RoomLearner.finish`),
so a caller who speaks at once loses nothing. Events of the held frames come out
late, at most :data:`LEARN_MAX_FRAMES` frames after the stream began.
"""

from __future__ import annotations

import math
from typing import Final

from .core import ROOM_SPREAD_DB

_LEARN_QUIET_FRAMES: Final = 3  # unvoiced in a row: the room has shown itself
_LEARN_QUIET_DB: Final = 10.0  # a quiet moment is this close to the quietest frame so far
_LEARN_WARMUP_FRAMES: Final = 6  # WebRTC's VAD calls a stream's first 4-5 frames voiced
_LEARN_STEADY_DB: Final = 3.0  # there, a frame this close to the quietest is quiet too
_LEARN_MIN_FRAMES: Final = 50  # after 1 s ...
_LEARN_CONTRAST_DB: Final = 25.0  # ... with less between loudest and quietest: no caller yet
LEARN_MAX_FRAMES: Final = 160  # 3.2 s without a pause: judge with what the room showed


class RoomLearner:
    """What a stream's held frames showed of the room: one per stream, fed frame by frame."""

    def __init__(self) -> None:
        self.held: list[tuple[bool, float]] = []  # (voiced, dB) of the frames held so far
        self._quiet_run = 0
        self._quietest = math.inf
        self._loudest = -math.inf

    def hear(self, index: int, voiced: bool, db: float) -> bool:
        """Hold frame ``index`` (WebRTC's verdict, its level); whether the room has shown itself."""
        self.held.append((voiced, db))
        # A quiet moment: unvoiced and near the quietest frame so far (WebRTC's VAD,
        # still learning the stream, may call loud speech unvoiced). In its first
        # frames it calls anything voiced: there a steady level is quiet too.
        self._quietest = quietest = min(self._quietest, db)
        self._loudest = loudest = max(self._loudest, db)
        if not voiced:
            quiet = db <= quietest + _LEARN_QUIET_DB
        else:
            quiet = index < _LEARN_WARMUP_FRAMES and db <= quietest + _LEARN_STEADY_DB
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        if self._quiet_run >= _LEARN_QUIET_FRAMES or index + 1 >= LEARN_MAX_FRAMES:
            return True
        # A second with neither a pause nor a voice well above the rest: the room is
        # other voices or noise, and the caller has not spoken yet.
        return index + 1 >= _LEARN_MIN_FRAMES and loudest - quietest < _LEARN_CONTRAST_DB

    def finish(self, room: float) -> tuple[list[tuple[bool, float]], float, float]:
        """The held frames, and the room's floor and loud end (dB) to judge them against.

        ``room`` is the voice gate's room level as its tracker left it. The held
        frames are handed over (this learner holds none after).
        """
        held, run = self.held, self._quiet_run
        self.held = []
        # The room's quiet end: the pause that ended learning, else the quietest frame.
        floor = min(db for _, db in held[-run:]) if run else self._quietest
        return held, floor, min(room, floor + ROOM_SPREAD_DB)
