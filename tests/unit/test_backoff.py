"""backoff: restart delays and the start limit, driven by a fixed rng and fake clock numbers."""

from __future__ import annotations

import itertools

import pytest

from supervisor.decide.backoff import BackoffState, StartLimiter
from supervisor.desired.model import Backoff, StartLimit


def delays(spec: Backoff, count: int, rng=lambda: 0.0, uptime: float = 0.0) -> list[float]:
    state = BackoffState(spec, rng=rng)
    return [state.next_delay(uptime) for _ in range(count)]


SEQUENCES = [
    ("no jitter", Backoff(initial=1, max=60), lambda: 0.0,
     [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]),
    ("full jitter is +20%", Backoff(initial=1, max=60), lambda: 1.0,
     [0.0, 1.2, 2.4, 4.8, 9.6, 19.2, 38.4, 60.0, 60.0, 60.0]),
    ("half jitter", Backoff(initial=0.5, max=10), lambda: 0.5,
     [0.0, 0.55, 1.1, 2.2, 4.4, 8.8, 10.0, 10.0]),
    ("initial equals max", Backoff(initial=5, max=5), lambda: 1.0, [0.0, 5.0, 5.0, 5.0]),
    ("zero initial", Backoff(initial=0, max=5), lambda: 1.0, [0.0, 0.0, 0.0]),
    ("cap below the doubling", Backoff(initial=1, max=3), lambda: 0.0, [0.0, 1.0, 2.0, 3.0, 3.0]),
]


@pytest.mark.parametrize(("spec", "rng", "expected"), [s[1:] for s in SEQUENCES], ids=[s[0] for s in SEQUENCES])
def test_delay_sequence(spec, rng, expected):
    assert delays(spec, len(expected), rng) == pytest.approx(expected)


def test_first_restart_is_immediate():
    assert BackoffState(Backoff(initial=30, max=600), rng=lambda: 1.0).next_delay(0.0) == 0.0


def test_jitter_stays_within_twenty_percent():
    values = iter([0.0, 0.25, 0.5, 0.75, 0.999] * 2)
    got = delays(Backoff(initial=1, max=1000), 11, rng=lambda: next(values))
    for attempt, delay in enumerate(got[1:]):
        raw = 2.0 ** attempt
        assert raw <= delay <= raw * 1.2


@pytest.mark.parametrize("pattern", [[1.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0], [0.3]], ids=str)
def test_delays_never_shrink(pattern):
    rng = itertools.cycle(pattern).__next__
    got = delays(Backoff(initial=0.7, max=45), 40, rng=rng)
    assert got == sorted(got)
    assert max(got) == 45.0
    assert got[-1] == 45.0


def test_a_long_crash_loop_stays_at_max():
    # thousands of crashes without a stable run: the exponent must not overflow a float
    got = delays(Backoff(initial=1, max=60), 3000, rng=lambda: 0.5)
    assert got[-1] == 60.0
    assert set(got[10:]) == {60.0}


RESETS = [
    # (spec, uptimes of the runs before each restart, expected delays)
    ("stable run resets to immediate", Backoff(initial=1, max=60),
     [0, 0, 0, 0, 60, 0, 0], [0.0, 1.0, 2.0, 4.0, 0.0, 1.0, 2.0]),
    ("just under the reset keeps doubling", Backoff(initial=1, max=60),
     [0, 0, 59.9, 59.9, 59.9], [0.0, 1.0, 2.0, 4.0, 8.0]),
    ("reset defaults to at least 10s", Backoff(initial=1, max=4),
     [0, 0, 9.9, 10, 0], [0.0, 1.0, 2.0, 0.0, 1.0]),
    ("explicit reset", Backoff(initial=1, max=60, reset=5),
     [0, 0, 0, 5, 0, 4.9], [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]),
    ("reset after reaching the cap", Backoff(initial=10, max=20, reset=30),
     [0, 0, 0, 0, 31, 0], [0.0, 10.0, 20.0, 20.0, 0.0, 10.0]),
]


@pytest.mark.parametrize(("spec", "uptimes", "expected"), [r[1:] for r in RESETS], ids=[r[0] for r in RESETS])
def test_reset_after_stable_uptime(spec, uptimes, expected):
    state = BackoffState(spec, rng=lambda: 0.0)
    assert [state.next_delay(uptime) for uptime in uptimes] == expected


def test_explicit_reset():
    state = BackoffState(Backoff(initial=1, max=60), rng=lambda: 0.0)
    assert [state.next_delay(0) for _ in range(4)] == [0.0, 1.0, 2.0, 4.0]
    state.reset()
    assert [state.next_delay(0) for _ in range(3)] == [0.0, 1.0, 2.0]


def test_reset_after_property():
    assert Backoff().reset_after == 60.0
    assert Backoff(max=3).reset_after == 10.0
    assert Backoff(max=300).reset_after == 300.0
    assert Backoff(max=300, reset=5).reset_after == 5.0


# -- start limit ------------------------------------------------------------------------------

LIMITS = [
    # (spec, [(now, allowed), ...])
    ("burst then refuse", StartLimit(burst=3, interval=10),
     [(0, True), (1, True), (2, True), (3, False), (9.9, False)]),
    ("allowed again once the first start leaves the interval", StartLimit(burst=3, interval=10),
     [(0, True), (1, True), (2, True), (5, False), (10, True), (10.5, False), (11, True), (12, True), (13, False)]),
    ("refused starts are not counted", StartLimit(burst=2, interval=10),
     [(0, True), (0, True), (1, False), (2, False), (9, False), (10, True), (10, True), (11, False)]),
    ("a long quiet gap forgets everything", StartLimit(burst=2, interval=60),
     [(0, True), (1, True), (2, False), (1000, True), (1000.5, True), (1001, False)]),
    ("burst of one", StartLimit(burst=1, interval=5),
     [(0, True), (4.99, False), (5, True), (6, False)]),
    ("defaults: 10 in 60s", StartLimit(),
     [(i, True) for i in range(10)] + [(10, False), (59, False), (60, True), (60.5, False)]),
]


@pytest.mark.parametrize(("spec", "steps"), [l[1:] for l in LIMITS], ids=[l[0] for l in LIMITS])
def test_start_limit(spec, steps):
    limiter = StartLimiter(spec)
    assert [(now, limiter.allow(now)) for now, _ in steps] == steps


def test_start_limit_reset():
    limiter = StartLimiter(StartLimit(burst=2, interval=60))
    assert [limiter.allow(t) for t in (0, 1, 2)] == [True, True, False]
    limiter.reset()
    assert [limiter.allow(t) for t in (3, 4, 5)] == [True, True, False]
