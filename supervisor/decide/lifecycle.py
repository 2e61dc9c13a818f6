"""The replica life cycle as a pure state machine: ``step(policy, state, event, now)``.

Every decision about one replica lives here: crash -> backoff -> start limit -> failed (systemd's
``Restart=``/``StartLimitBurst=``, Kubernetes' CrashLoopBackOff), a new version on probation ->
proven or rolled back, a start-first candidate -> promoted or abandoned, waiting on
dependencies, liveness restarts, and stops (the stop signal, then the executor's kill after
``stop_timeout``). Nothing here does I/O or reads a clock: ``now`` is monotonic seconds given by
the caller and randomness (backoff jitter) comes in the event, so tests run on a fake clock in
milliseconds.

The driver (:class:`supervisor.execute.service.ServiceController`) feeds events as they happen and runs
the effects it gets back: spawn a process, arm or cancel a timer, stop a process, emit an event,
write a log note, roll back, promote or abandon a candidate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Union

from .backoff import allow_start, next_delay
from ..observe.events import EventType
from ..desired.model import Backoff, Check, Exit, Phase, RestartPolicy, ServiceSpec, StartLimit

#: Phases in which a replica counts as up.
UP = (Phase.RUNNING, Phase.READY)
#: Crashes of a new version, before it has proven itself, that roll it back.
ROLLBACK_CRASHES = 3
#: Seconds a version without a ready check must stay up (without a crash) to count as good:
#: the default of ``good_after`` (with a ready check the default is 0: good once ready).
PROBATION = 10.0
#: Seconds a start-first replacement without a ready check must stay up before the old stops.
START_FIRST_GRACE = 1.0


class Timer(str, enum.Enum):
    """The timers a replica can have armed (at most one of each)."""

    BACKOFF = "backoff"      # the restart after a crash
    PROBATION = "probation"  # a new version's time to prove itself
    GOOD = "good"            # ready for good_after seconds: the version is good
    TRIAL = "trial"          # a start-first candidate's time to become ready


#: Timers whose going off changes only what the replica's state *says* (its version is good),
#: never a process, a stop or a rollback: the driver applies them when it next looks at the
#: replica (an event for it, a status, a plan, a state record), not on a loop timer of their
#: own. ``good_after`` (10 s by default) after each start, every replica's timer woke an idle
#: supervisor of 2,000 services 2,000 times, each writing its state record: 0.7 CPU-seconds in
#: the bench's idle window. tests/unit/test_lifecycle.py holds that firing one has no effect
#: but :class:`Good`.
LAZY_TIMERS: frozenset[Timer] = frozenset({Timer.GOOD})


@dataclass(frozen=True)
class Policy:
    """The supervision settings of one service, read from its newest spec (so they apply in
    place). Durations in seconds; ``stop_signal`` a signal number."""

    name: str
    restart: RestartPolicy = RestartPolicy.ALWAYS
    backoff: Backoff = Backoff()
    start_limit: StartLimit = StartLimit()
    stop_signal: int = 15
    stop_timeout: float = 10.0
    has_ready: bool = False
    ready_deadline: float = 0.0  # start period + retries * (interval + timeout) + 2 s of slack
    live_retries: int = 3
    probation: float = PROBATION
    grace: float = START_FIRST_GRACE
    good_after: float | None = None  # seconds; None: the default rule (see good_delay)

    @classmethod
    def of(cls, spec: ServiceSpec) -> "Policy":
        """The policy of ``spec``."""
        return cls(name=spec.name, restart=spec.restart, backoff=spec.backoff, start_limit=spec.start_limit,
                   stop_signal=spec.stop_signal, stop_timeout=spec.stop_timeout, has_ready=spec.ready is not None,
                   ready_deadline=ready_deadline(spec), live_retries=spec.live.retries if spec.live else 3,
                   good_after=spec.good_after)

    @property
    def good_delay(self) -> float:
        """The rule of a good version (README, "Rollback has a written rule"): a replica is *good* once it has been
        ready (its ``ready`` check passed; without one: running) for this many seconds without
        a crash. ``good_after`` when set; else 0 with a ready check (good once ready) and
        :data:`PROBATION` (10 s) without one."""
        if self.good_after is not None:
            return self.good_after
        return 0.0 if self.has_ready else self.probation

    @property
    def probation_deadline(self) -> float:
        """Seconds a new version on probation gets to become good: its ready deadline (with a
        ready check) plus :attr:`good_delay`."""
        return (self.ready_deadline if self.has_ready else 0.0) + self.good_delay

    def describe_good(self) -> str:
        """The rule in words, for status: ``"up for 10s without a crash"``, ``"ready"``."""
        what = "ready" if self.has_ready else "up"
        delay = self.good_delay
        return f"{what} for {delay:g}s without a crash" if delay else f"{what}"


def ready_deadline(spec: ServiceSpec) -> float:
    """Seconds a new replica gets to pass its ready check: the start period, then ``retries``
    probes (interval + timeout each), then 2 s of slack."""
    check = spec.ready or Check(kind="tcp")
    return check.start_period + max(check.retries, 1) * (check.interval + check.timeout) + 2.0


@dataclass(frozen=True)
class ReplicaState:
    """One replica as the policy sees it. ``started`` is the monotonic time of the last start
    (s), ``started_at`` the wall-clock one (for display); ``starts`` the start times the start
    limit remembers; ``attempt``/``last_delay`` the backoff's progress."""

    index: int
    phase: Phase = Phase.PENDING
    reason: str = ""  # why it is (to be) started
    pid: int | None = None
    restarts: int = 0
    attempt: int = 0
    last_delay: float = 0.0
    starts: tuple[float, ...] = ()
    started: float | None = None
    started_at: float | None = None
    ready: bool = False
    ready_since: float | None = None  # monotonic time it became ready (s); None while not ready
    message: str = ""
    start_error: str = ""  # why the last start failed (unknown user, missing command, ...)
    last_exit: Exit | None = None
    stopping: bool = False
    stale: bool | str = False  # adopted, started from another config (or a string: why else): the next plan replaces it
    probation: bool = False  # a new version with a last good one to roll back to
    good: bool = False  # ready for good_after seconds without a crash (Policy.good_delay)
    probation_crashes: int = 0
    trial: bool = False  # a start-first candidate beside the old replica
    live_failures: int = 0

    @property
    def up(self) -> bool:
        """A process runs and has not been asked to stop."""
        return self.phase in UP


# -- events ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """The plan (or a rollback) starts this replica. ``waiting``: the dependencies not met yet
    ("" when all are); ``probation``: a new version with a last good one to go back to;
    ``trial``: a start-first candidate."""

    reason: str
    waiting: str = ""
    probation: bool = False
    trial: bool = False


@dataclass(frozen=True)
class DependenciesChanged:
    """A dependency changed phase; ``waiting`` is what is still awaited ("" when nothing)."""

    waiting: str


@dataclass(frozen=True)
class Spawned:
    """The process is running: ``pid``, and the wall-clock time ``at`` (s since the epoch)."""

    pid: int
    at: float


@dataclass(frozen=True)
class SpawnFailed:
    """The process could not be started (the message says why); ``code`` the exit status a
    shell gives it (127 not found, 126 not executable)."""

    message: str
    code: int = 127


@dataclass(frozen=True)
class Adopted:
    """A process a previous supervisor left running is ours again."""

    pid: int
    started_at: float | None
    restarts: int
    stale: bool | str  # True: started from another config; a string: another reason to replace it


@dataclass(frozen=True)
class Exited:
    """The process ended by itself (or was killed by a liveness restart); ``jitter`` in [0, 1)
    spreads the backoff delay."""

    exit: Exit
    jitter: float = 0.0


@dataclass(frozen=True)
class Ready:
    """The ready check passed. ``alive``: the replica's process still ran when it did (a check
    that passes for a process already gone was answered by someone else, e.g. the old
    replica of a start-first update: never ready). ``foreign``: why the answer was not this
    replica's (another replica of the service listens on the checked port, and this one does
    not), "" when it was; with a reason it is not ready either, and its message says so."""

    alive: bool = True
    foreign: str = ""


@dataclass(frozen=True)
class LiveProbe:
    """One liveness probe's result."""

    ok: bool


@dataclass(frozen=True)
class Fired:
    """A timer armed by an :class:`Arm` effect went off."""

    timer: Timer


@dataclass(frozen=True)
class Stop:
    """Stop this replica (a plan, a user, a shutdown); ``alive``: a process still runs."""

    reason: str
    alive: bool


@dataclass(frozen=True)
class Stopped:
    """The stop finished: the process group is gone (``exit`` None if none ran)."""

    exit: Exit | None


Event = Union[Start, DependenciesChanged, Spawned, SpawnFailed, Adopted, Exited, Ready, LiveProbe, Fired,
              Stop, Stopped]


# -- effects ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spawn:
    """Start a process of the replica's launch."""

    reason: str


@dataclass(frozen=True)
class Arm:
    """Call back with :class:`Fired` after ``delay`` seconds (re-arming replaces)."""

    timer: Timer
    delay: float


@dataclass(frozen=True)
class Cancel:
    """Forget a timer."""

    timer: Timer


@dataclass(frozen=True)
class StopProcess:
    """Send ``signal`` to the process group, wait ``timeout`` s, then SIGKILL (the executor's
    stop: ``docker stop -t``, a pod's terminationGracePeriodSeconds)."""

    signal: int
    timeout: float


@dataclass(frozen=True)
class Emit:
    """Publish an event of ``type`` with ``data`` (the driver adds service, version, replica)."""

    type: EventType
    data: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Note:
    """A line for the service's log."""

    text: str


@dataclass(frozen=True)
class Rollback:
    """Put the last good launch back in place of this one."""

    why: str


@dataclass(frozen=True)
class Good:
    """The replica's launch proved itself (:attr:`Policy.good_delay`): remember its version as
    good, the one a later bad version rolls back to."""


@dataclass(frozen=True)
class Promote:
    """The start-first candidate is good: it replaces the old replica."""


@dataclass(frozen=True)
class Abandon:
    """The start-first candidate is bad: stop it, keep the old replica."""

    why: str


Effect = Union[Spawn, Arm, Cancel, StopProcess, Emit, Note, Rollback, Good, Promote, Abandon]


def emit(type: EventType, **data: object) -> Emit:
    """An :class:`Emit` effect with ``data`` as keyword arguments."""
    return Emit(type, tuple(data.items()))


@dataclass
class _Out:
    state: ReplicaState
    effects: list[Effect] = field(default_factory=list)


# -- the machine -----------------------------------------------------------------------------

def step(policy: Policy, state: ReplicaState, event: Event, now: float) -> tuple[ReplicaState, list[Effect]]:
    """The replica's next state and the effects to run, for ``event`` at monotonic ``now`` (s).

    Events that do not apply in the current phase (a late timer, an exit after a stop) change
    nothing and give no effects.
    """
    out = _Out(state)
    _HANDLERS[type(event)](policy, out, event, now, f"{policy.name}[{state.index}]")
    return out.state, out.effects


def _on_start(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    _start(policy, out, event, now)


def _on_dependencies(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    state = out.state
    if state.phase is Phase.PENDING and state.pid is None:
        if event.waiting:
            out.state = replace(state, message=f"waiting for {event.waiting}")
        else:
            _spawn(policy, out, state.reason, now, count=True)


def _on_spawned(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    _spawned(policy, out, event, now, who)


def _on_spawn_failed(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    state = out.state
    out.state = replace(state, pid=None, message=event.message, start_error=event.message,
                        last_exit=Exit(code=event.code))
    out.effects += [Note(f"cannot start {who}: {event.message}"), emit(EventType.START_FAILED, error=event.message)]
    if state.trial:
        out.state = replace(out.state, phase=Phase.EXITED, trial=False)
        out.effects += [Cancel(Timer.TRIAL), Abandon(f"could not start: {event.message}")]
        return
    _exited(policy, out, Exit(code=event.code), now, uptime=0.0, jitter=0.0, who=who)


def _on_adopted(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    out.state = replace(out.state, phase=Phase.RUNNING, pid=event.pid, started=now, started_at=event.started_at,
                        restarts=event.restarts, stale=event.stale, ready=not policy.has_ready,
                        ready_since=None if policy.has_ready else now)
    if out.state.ready:
        _became_ready(policy, out)


def _on_exited(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    state = out.state
    if state.stopping or state.pid is None:
        return
    uptime = now - state.started if state.started is not None else 0.0
    out.state = replace(state, pid=None, last_exit=event.exit, good=False)
    if not state.good:
        out.effects.append(Cancel(Timer.GOOD))
    out.effects += [Note(f"{who} pid {state.pid} exited: {event.exit}"),
                    emit(EventType.EXITED, pid=state.pid, exit=str(event.exit), code=event.exit.code,
                         signal=event.exit.signal, uptime=round(uptime, 3))]
    _exited(policy, out, event.exit, now, uptime, event.jitter, who)


def _on_ready(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    state = out.state
    if not event.alive:  # a gone process is never ready: its exit follows (a failed start)
        return
    if event.foreign:  # someone else answered (the old replica): not ready, and say why once
        if state.up and state.pid is not None and not state.ready and state.message != event.foreign:
            out.state = replace(state, message=event.foreign)
            out.effects.append(Note(f"{who} pid {state.pid} is not ready: {event.foreign}"))
        return
    if state.up and state.pid is not None and not state.stopping:
        # a new version's probation still runs its course: ready, then crashing, is bad
        out.state = replace(state, ready=True, phase=Phase.READY, message="",
                            ready_since=state.ready_since if state.ready else now)
        out.effects.append(emit(EventType.READY, pid=state.pid))
        if state.trial:
            out.state = replace(out.state, trial=False)
            out.effects += [Cancel(Timer.TRIAL), Promote()]
        _became_ready(policy, out)


def _became_ready(policy: Policy, out: _Out) -> None:
    """Ready now: good at once (``good_delay`` 0) or after ``good_delay`` s up without a crash.
    A new version on probation is judged at its probation deadline instead (:func:`_fired`):
    ready, then crashing before the deadline, is bad."""
    if out.state.good or out.state.probation:
        return
    if policy.good_delay <= 0:
        _good(out)
    else:
        out.effects.append(Arm(Timer.GOOD, policy.good_delay))


def _good(out: _Out) -> None:
    """The replica proved itself: its launch is good."""
    out.state = replace(out.state, good=True, probation_crashes=0)
    out.effects.append(Good())


def _on_live(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    _live(policy, out, event, who)


def _on_fired(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    _fired(policy, out, event.timer, now)


def _on_stop(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    _stop(policy, out, event, who)


def _on_stopped(policy: Policy, out: _Out, event: Any, now: float, who: str) -> None:
    state = out.state
    if event.exit is not None:
        out.effects += [emit(EventType.STOPPED, pid=state.pid, exit=str(event.exit)),
                        Note(f"stopped {who} pid {state.pid}: {event.exit}")]
    out.state = replace(state, phase=Phase.STOPPED, stopping=False, pid=None, last_exit=event.exit or state.last_exit)


_HANDLERS: dict[type, Callable[[Policy, _Out, Any, float, str], None]] = {
    Start: _on_start, DependenciesChanged: _on_dependencies, Spawned: _on_spawned, SpawnFailed: _on_spawn_failed,
    Adopted: _on_adopted, Exited: _on_exited, Ready: _on_ready, LiveProbe: _on_live, Fired: _on_fired,
    Stop: _on_stop, Stopped: _on_stopped,
}


def served_well(policy: Policy, state: ReplicaState, now: float) -> bool:
    """A new version still on probation that a newer one replaces now is good if it has been
    ready (without a check: up) for ``good_delay`` seconds and has not crashed since its update:
    it served fine, so it is what the newer one rolls back to (a version ready and serving for
    11 s of a 20 s ready deadline is not skipped for an older one). Its deadline would have
    judged it the same way had nothing replaced it (README, "Rollback has a written rule")."""
    return (state.probation and state.up and state.ready and state.pid is not None and not state.stopping
            and not state.trial and state.probation_crashes == 0 and state.ready_since is not None
            and now - state.ready_since >= policy.good_delay)


def proven(policy: Policy, state: ReplicaState, now: float) -> bool:
    """Up now and good (:attr:`Policy.good_delay`): a launch worth going back to."""
    return state.pid is not None and state.up and state.good and not state.trial


def _start(policy: Policy, out: _Out, event: Start, now: float) -> None:
    out.state = replace(out.state, reason=event.reason, probation=event.probation, trial=event.trial,
                        probation_crashes=0)
    if event.probation:
        out.effects.append(Arm(Timer.PROBATION, policy.probation_deadline))
    if event.waiting:
        out.state = replace(out.state, phase=Phase.PENDING, message=f"waiting for {event.waiting}")
        return
    _spawn(policy, out, event.reason, now, count=True)


def _spawn(policy: Policy, out: _Out, reason: str, now: float, count: bool) -> None:
    """Ask for a process. A start asked for by the plan or a user counts towards the start
    limit but is never refused by it (only automatic restarts are, in :func:`_exited`, where
    the start was counted already)."""
    state = out.state
    if count:
        _, starts = allow_start(policy.start_limit, state.starts, now)
        state = replace(state, starts=starts)
    out.state = replace(state, phase=Phase.STARTING, reason=reason)  # what the start's note says
    out.effects.append(Spawn(reason))


def _spawned(policy: Policy, out: _Out, event: Spawned, now: float, who: str) -> None:
    state = out.state
    out.state = replace(state, phase=Phase.RUNNING, pid=event.pid, started=now, started_at=event.at,
                        ready=not policy.has_ready, ready_since=None if policy.has_ready else now,
                        message="", start_error="", live_failures=0, good=False)
    out.effects += [Note(f"started {who} pid {event.pid}: {state.reason}"),
                    emit(EventType.STARTED, pid=event.pid, reason=state.reason)]
    if state.trial:
        out.effects.append(Arm(Timer.TRIAL, policy.ready_deadline if policy.has_ready else policy.grace))
    if out.state.ready:
        _became_ready(policy, out)


def _exited(policy: Policy, out: _Out, exit: Exit, now: float, uptime: float, jitter: float, who: str) -> None:
    state = out.state
    if state.trial:  # a start-first candidate that died: the old replica stays
        out.state = replace(state, phase=Phase.EXITED, trial=False)
        seen = f"; {state.message}" if state.message else ""
        out.effects += [Cancel(Timer.TRIAL), Abandon(f"exited during start-up ({exit}{seen})")]
        return
    # An adopted process is not our child (unless a self-update kept it ours): its exit status
    # cannot be known. on-failure counts that as a failure, as systemd counts an unclean or
    # unknown result: a crashed server left exited forever is the worse mistake (a job that
    # must never run twice wants restart = "never").
    if policy.restart is RestartPolicy.NEVER or (policy.restart is RestartPolicy.ON_FAILURE and exit.success):
        out.state = replace(state, phase=Phase.EXITED)
        return
    if state.probation:
        crashes = state.probation_crashes + 1
        out.state = state = replace(state, probation_crashes=crashes)
        if crashes >= ROLLBACK_CRASHES:
            out.state = replace(state, probation=False)
            out.effects += [Cancel(Timer.PROBATION), Rollback(f"crashed {crashes} times ({exit})")]
            return
    attempt, delay = next_delay(policy.backoff, state.attempt, state.last_delay, uptime, jitter)
    state = replace(state, attempt=attempt, last_delay=delay)
    ok, starts = allow_start(policy.start_limit, state.starts, now + delay)
    state = replace(state, starts=starts)
    if not ok:
        limit = policy.start_limit
        message = f"start limit hit: {limit.burst} starts in {limit.interval:g}s"
        out.state = replace(state, phase=Phase.FAILED, message=message)
        out.effects += [Note(f"{who} failed: {message}"), emit(EventType.FAILED, reason=message)]
        return
    cause = f": {state.start_error}" if state.start_error else ""
    out.state = replace(state, phase=Phase.BACKOFF, restarts=state.restarts + 1,
                        message=f"restart in {delay:.2f}s after {exit}{cause}")
    out.effects += [emit(EventType.BACKOFF, delay=round(delay, 3), exit=str(exit)), Arm(Timer.BACKOFF, delay)]


def crash_reason(policy: Policy, exit: Exit | None, delay: float) -> str:
    """Why an automatic restart starts a replica again, for its ``started`` note and event:
    ``"exited (status 1): restart = on-failure, backoff 2s"`` (``signal 9 (SIGKILL)``,
    ``unknown`` for an adopted process; the backoff in seconds)."""
    if exit is None or exit.code is None:
        status = str(exit or Exit())
    else:
        status = f"status {exit.code}"
    return f"exited ({status}): restart = {policy.restart.value}, backoff {delay:.3g}s"


def _live(policy: Policy, out: _Out, event: LiveProbe, who: str) -> None:
    state = out.state
    if state.pid is None or state.stopping:
        return
    if event.ok:
        out.state = replace(state, live_failures=0)
        return
    failures = state.live_failures + 1
    out.state = replace(state, live_failures=failures)
    if failures >= policy.live_retries:
        reason = f"liveness check failed {failures} times"
        # not a stop: the exit that follows restarts it as a crash does
        out.state = replace(out.state, live_failures=0)
        out.effects += [Note(f"{who} {reason}; restarting"), emit(EventType.RESTARTING, reason=reason),
                        StopProcess(policy.stop_signal, policy.stop_timeout)]


def _fired(policy: Policy, out: _Out, timer: Timer, now: float) -> None:
    state = out.state
    if timer is Timer.BACKOFF:
        if state.phase is Phase.BACKOFF:
            _spawn(policy, out, crash_reason(policy, state.last_exit, state.last_delay), now, count=False)
    elif timer is Timer.PROBATION:
        if not state.probation:
            return
        out.state = replace(state, probation=False)
        if policy.has_ready and not (state.ready and state.up):
            seen = f" ({state.message})" if state.message and state.up else ""
            out.effects.append(Rollback(f"never became ready within {policy.ready_deadline:g}s{seen}"))
        elif not state.up:
            out.effects.append(Rollback(f"not running {policy.probation_deadline:g}s after the update "
                                        f"({state.phase.value})"))
        elif state.probation_crashes:  # it must be good by its deadline: a crash on the way is bad
            out.effects.append(Rollback(f"crashed {state.probation_crashes} time"
                                        f"{'s' if state.probation_crashes > 1 else ''} within "
                                        f"{policy.probation_deadline:g}s of the update ({state.last_exit})"))
        elif state.ready and state.pid is not None:
            _good(out)  # ready (or up) through its whole probation without a crash: good
    elif timer is Timer.GOOD:
        if state.up and state.ready and state.pid is not None and not state.stopping and not state.good:
            _good(out)
    elif timer is Timer.TRIAL:
        if not state.trial:
            return
        out.state = replace(state, trial=False)
        if policy.has_ready and not state.ready:
            seen = f" ({state.message})" if state.message else ""  # e.g. who answered its check instead
            out.effects.append(Abandon(f"never became ready within {policy.ready_deadline:g}s{seen}"))
        else:
            out.effects.append(Promote())


def _stop(policy: Policy, out: _Out, event: Stop, who: str) -> None:
    state = out.state
    cancels: list[Effect] = [Cancel(t) for t in Timer]
    if not event.alive:
        out.state = replace(state, phase=Phase.STOPPED, pid=None, trial=False, probation=False)
        out.effects += cancels
        return
    out.state = replace(state, phase=Phase.STOPPING, stopping=True, trial=False, probation=False)
    out.effects += [*cancels, emit(EventType.STOPPING, pid=state.pid, reason=event.reason),
                    Note(f"stopping {who} pid {state.pid}: {event.reason}"),
                    StopProcess(policy.stop_signal, policy.stop_timeout)]
