"""Restart pacing, pure: exponential backoff with jitter, and the start limit.

Both take times from the caller (monotonic seconds), so tests drive them with a fake clock and
a wall-clock jump changes nothing.
"""

from __future__ import annotations

import random
from typing import Callable

from ..desired.model import Backoff, StartLimit


def next_delay(spec: Backoff, attempt: int, last_delay: float, uptime: float,
               jitter: float) -> tuple[int, float]:
    """The pure rule behind :class:`BackoffState`: given the attempts so far, the last delay
    (s), this run's ``uptime`` (s) and a ``jitter`` in [0, 1), return ``(attempt, delay)``:
    the new attempt count and the delay in seconds before the next start."""
    if uptime >= spec.reset_after:
        attempt, last_delay = 0, 0.0
    attempt += 1
    if attempt == 1:
        return attempt, 0.0
    # the exponent is capped: 2**1024 does not fit a float, and any max is reached long before
    raw = spec.initial * 2.0 ** min(attempt - 2, 1000)
    jittered = raw * (1 + 0.2 * jitter)
    return attempt, min(spec.max, max(last_delay, jittered))


def allow_start(spec: StartLimit, starts: tuple[float, ...], now: float) -> tuple[bool, tuple[float, ...]]:
    """The pure rule behind :class:`StartLimiter`: is a start at ``now`` (monotonic s) within
    ``burst`` starts per ``interval`` s, given the earlier ``starts``? Returns the answer and
    the starts to remember (a refused start is not recorded)."""
    kept = tuple(t for t in starts if now - t < spec.interval)
    if len(kept) >= spec.burst:
        return False, kept
    return True, (*kept, now)


class BackoffState:
    """Delays between restarts of one replica, in seconds.

    The first restart after a stable run is immediate (as runit and supervisord do), so one
    crash costs no downtime. Each further crash without ``backoff.reset_after`` seconds of
    uptime waits ``initial * 2**(n-1)``, with up to +20% jitter, capped at ``max``. Delays never
    shrink while the crash loop lasts (the jitter cannot undo the doubling at the cap).
    """

    def __init__(self, spec: Backoff, rng: Callable[[], float] = random.random):
        self.spec = spec
        self.rng = rng
        self.attempt = 0
        self.last_delay = 0.0

    def next_delay(self, uptime: float) -> float:
        """The delay before the next start, given how long (s) the replica ran this time."""
        if uptime >= self.spec.reset_after:
            self.reset()
        jitter = self.rng() if self.attempt >= 1 else 0.0  # the first restart draws none
        self.attempt, delay = next_delay(self.spec, self.attempt, self.last_delay, uptime, jitter)
        self.last_delay = delay
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self.last_delay = 0.0


class StartLimiter:
    """``burst`` starts within ``interval`` seconds are allowed; one more is refused.

    The same rule as systemd's StartLimitBurst=/StartLimitIntervalSec= (which default to 5 in
    10 s; ours to 10 in 60 s).
    """

    def __init__(self, spec: StartLimit):
        self.spec = spec
        self.starts: tuple[float, ...] = ()

    def allow(self, now: float) -> bool:
        """Record a start at ``now`` and say whether it is within the limit."""
        ok, self.starts = allow_start(self.spec, self.starts, now)
        return ok

    def reset(self) -> None:
        self.starts = ()
