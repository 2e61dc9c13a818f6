"""The one clock the engine reads, injected so policy and tests never read a real one.

``monotonic()`` is seconds on a clock that never jumps (timers, uptimes, start limits);
``time()`` is wall-clock seconds since the epoch (shown to users as start times). Tests pass
a :class:`FakeClock`; honcho's ``Manager`` takes its clock the same way.
"""

from __future__ import annotations

import time as _time
from typing import Protocol


class Clock(Protocol):
    """Where the engine gets the time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""


class SystemClock:
    """The machine's clocks (:func:`time.monotonic`, :func:`time.time`)."""

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()


class FakeClock:
    """A clock that moves only when told to (:meth:`advance`, seconds)."""

    def __init__(self, start: float = 1000.0, wall: float = 1.7e9):
        self.now = start
        self.wall_offset = wall - start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds


SYSTEM = SystemClock()
