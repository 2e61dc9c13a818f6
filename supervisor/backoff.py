"""Restart pacing, pure: exponential backoff with jitter, and the start limit.

Both take times from the caller (monotonic seconds), so tests drive them with a fake clock and
a wall-clock jump changes nothing.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Callable

from .model import Backoff, StartLimit


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
        self.attempt += 1
        if self.attempt == 1:
            return 0.0
        # the exponent is capped: 2**1024 does not fit a float, and any max is reached long before
        raw = self.spec.initial * 2.0 ** min(self.attempt - 2, 1000)
        jittered = raw * (1 + 0.2 * self.rng())
        delay = min(self.spec.max, max(self.last_delay, jittered))
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
        self.starts: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a start at ``now`` and say whether it is within the limit."""
        while self.starts and now - self.starts[0] >= self.spec.interval:
            self.starts.popleft()
        if len(self.starts) >= self.spec.burst:
            return False
        self.starts.append(now)
        return True

    def reset(self) -> None:
        self.starts.clear()
