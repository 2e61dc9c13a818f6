"""One service's replicas on the local machine: the thin driver of the replica life cycle.

Every decision (restart or not, when, rollback, promote, fail) is made by the pure state machine
in :mod:`supervisor.decide.lifecycle`; a :class:`ServiceController` feeds it what happens (a spawn, an
exit, a probe result, a timer) and runs the effects it returns (spawn a process, arm a timer,
stop a process group, emit an event, write a log note). Exits arrive as futures from the reaper
(SIGCHLD) or a pidfd; nothing here polls a process. The one clock is injected.

Each replica keeps the launch (spec and artifact) it was started with, so an automatic restart
brings back the same version and command even when the file has changed since; supervision
settings (restart policy, backoff, start limit, stop signal and timeout) are read from the
newest spec, so they apply in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Coroutine, Any

from ..decide import lifecycle
from . import logs
from ..observe import state, views
from .builds import Artifact, source_root
from ..clock import SYSTEM, Clock
from ..desired.environ import replica_env
from .executors import Executor, Running, StartFailed
from .sources.pip import venv_env
from ..observe.events import EventType, Notifier
from ..decide.lifecycle import (
    UP, Abandon, Adopted, Arm, Cancel, DependenciesChanged, Effect, Emit, Exited, Fired, Good, LiveProbe, Note, Policy,
    Promote, Ready, ReplicaState, Rollback, Spawn, SpawnFailed, Spawned, Start, Stop, StopProcess, Stopped, Timer,
)
from ..desired.model import Condition, Exit, Phase, ReplicaObserved, ServiceObserved, ServiceSpec

log = logging.getLogger("supervise")

__all__ = ["Launch", "Replica", "ServiceController", "UP", "replica_label"]

#: A service's phase is the first of these that one of its replicas is in.
_PHASE_ORDER = (Phase.FAILED, Phase.BACKOFF, Phase.PENDING, Phase.STARTING, Phase.STOPPING,
                Phase.EXITED, Phase.STOPPED, Phase.RUNNING, Phase.READY)


def replica_label(name: str, replicas: int, index: int) -> str:
    """Console prefix of a replica: ``NAME`` for a single replica, ``NAME.i`` otherwise."""
    return name if replicas <= 1 and index == 0 else f"{name}.{index}"


@dataclass
class Launch:
    """What a replica process is made of: the spec and artifact it was started from."""

    spec: ServiceSpec
    artifact: Artifact

    @functools.cached_property
    def fingerprint(self) -> str:
        """:func:`supervisor.observe.state.fingerprint` of :attr:`spec` (a hash of JSON: made
        once per launch, not at every state record written)."""
        return state.fingerprint(self.spec)


@dataclass(slots=True)
class Replica:
    """One replica: its launch, its life-cycle state (:class:`~supervisor.decide.lifecycle.ReplicaState`)
    and the driver's handles (process, timers, tasks). Slotted, its task set made on first
    use: one per replica (an empty set is 216 bytes, an instance dict 300)."""

    index: int
    launch: Launch
    state: ReplicaState
    handle: Running | None = None
    timers: dict[Timer, asyncio.TimerHandle] = field(default_factory=dict)
    # Deadlines of the armed lazy timers (lifecycle.LAZY_TIMERS), on the controller's clock (s):
    # applied when the replica is next looked at (ServiceController.settle), not on the loop.
    due: dict[Timer, float] | None = None
    tasks: set[asyncio.Task] | None = None  # its checks' tasks (made by the first)
    previous: Launch | None = None  # the last good launch, while this new one is on probation
    trial: asyncio.Future[tuple[bool, str]] | None = None  # a start-first candidate's verdict
    stop: asyncio.Future[Exit | None] | None = None  # the stop under way (or done): one per process
    spawning: asyncio.Task[None] | None = None  # the executor's start under way (a container is created)
    checks: tuple[asyncio.Task, ...] = ()  # its ready and live check loops (see ServiceController._watch_checks)
    check_env: dict[str, str] | None = None  # the environment its checks run with
    exited_at: float | None = None  # when it became ``exited`` (s since the epoch): kept in the state record
    # The callback on the process's exit future (see ServiceController._watch): a callback, not
    # a task per replica, until the exit comes (2,000 idle tasks were 2 MB and a frame each).
    watcher: tuple[asyncio.Future[Exit], Callable[[asyncio.Future[Exit]], None]] | None = None

    def unwatch(self) -> None:
        """Cancel every task of this replica and its exit callback (what a stop, a detach or
        a release does before it takes over)."""
        for task in list(self.tasks or ()):
            if task is not asyncio.current_task():
                task.cancel()
        if self.watcher is not None:
            future, callback = self.watcher
            future.remove_done_callback(callback)
            self.watcher = None

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None and self.handle.running else None

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def restarts(self) -> int:
        return self.state.restarts

    @property
    def last_exit(self) -> Exit | None:
        return self.state.last_exit

    @property
    def started_at(self) -> float | None:
        return self.state.started_at

    @property
    def ready(self) -> bool:
        return self.state.ready

    @property
    def stale(self) -> bool | str:
        return self.state.stale

    @property
    def message(self) -> str:
        return self.state.message

    @message.setter
    def message(self, value: str) -> None:
        self.state = replace(self.state, message=value)


class RecordWriter:
    """Writes the state records of many services after a burst of changes, not one at each.

    A cold start of 500 services asked for 500 records (an ``O_EXCL`` file and a rename each,
    new inodes on ext4) in between the starts; here a record asked for waits until no other is
    asked for within :data:`DELAY` s, and at most :data:`MAX_DELAY` s, then every waiting
    service's record is written (each as it is at that moment: a later change is never lost).
    Crash safety is unchanged in kind: a replica is recorded a moment after its spawn, as
    before, and a supervisor killed in between leaves replicas that the next one finds by their
    instance mark and stops (:meth:`supervisor.reconciler.Reconciler.sweep_unowned`).
    :meth:`flush` writes what waits at once: before every control-socket reply (what ``status``
    reports running is on disk), on shutdown and detach, before a removed service's file goes."""

    #: seconds without a new request before the waiting records are written
    DELAY = 0.05
    #: the longest a record waits, seconds (a steady stream of requests does not hold it)
    MAX_DELAY = 0.25

    def __init__(self) -> None:
        self.pending: dict[str, ServiceController] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._first = 0.0
        self._last = 0.0

    def request(self, controller: ServiceController) -> None:
        """Write ``controller``'s record soon (with the others that wait)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.pending[controller.name] = controller
        self._last = now
        if self._timer is None:
            self._first = now
            self._timer = loop.call_at(now + self.DELAY, self._due)

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._timer = None
        quiet_at = self._last + self.DELAY
        if now < quiet_at and now < self._first + self.MAX_DELAY:  # still asked for: wait on
            self._timer = loop.call_at(min(quiet_at, self._first + self.MAX_DELAY), self._due)
            return
        self.flush()

    def flush(self) -> None:
        """Write every waiting record now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, {}
        if not pending:
            return
        with contextlib.ExitStack() as stack:
            try:  # the records' folder made and checked once for all of them
                stack.enter_context(state.batch(next(iter(pending.values())).state_dir))
            except OSError:  # (UnsafeStateDir is one)
                pass  # each write then finds (and reports) the trouble itself
            for controller in pending.values():
                controller._persist_now()

    def discard(self, name: str) -> None:
        """Forget the waiting record of ``name`` (its service is gone: its file is removed)."""
        self.pending.pop(name, None)


class ServiceController:
    """Runs the replicas of one service. All methods run on the event loop thread.

    ``lookup`` finds another service's controller (for ``depends_on``); ``changed`` is called
    after every phase change (the reconciler uses it to re-check dependents). Replicas are
    reached only through ``executor`` (the seam: local processes, containers, ...). ``clock``
    is the one clock read here; ``rng`` draws the backoff jitter in [0, 1). ``may_start`` is
    asked before a replica starts by itself (dependencies met, backoff over): False once the
    supervisor is ending (a run once decided): nothing new starts then.
    """

    def __init__(self, spec: ServiceSpec, *, state_dir: Path, executor: Executor, notifier: Notifier,
                 lookup: Callable[[str], "ServiceController | None"], changed: Callable[[], None],
                 sink: logs.LogSink, clock: Clock = SYSTEM, rng: Callable[[], float] = random.random,
                 records: RecordWriter | None = None, may_start: Callable[[], bool] = lambda: True):
        self.spec = spec
        #: writes this service's state record with the others' after a burst (None: on its own,
        #: at the next loop iteration)
        self.records = records
        self.name = spec.name
        self.state_dir = state_dir
        self.executor = executor
        self.notifier = notifier
        self.lookup = lookup
        self.changed = changed
        self.clock = clock
        self.rng = rng
        self.may_start = may_start
        self.replicas: dict[int, Replica] = {}
        self.candidates: dict[int, Replica] = {}  # start-first replacements on trial
        self.artifact: Artifact | None = None
        self.failed_stage = "build"  # which step failed when build_failed: "fetch" or "build"
        self.build_failed = False
        self.failed_revision: str | None = None
        self.deploy_message = ""  # why the newest version is not what runs (failed build, rollback)
        self.preparing: Phase | None = None  # FETCHING/BUILDING while a version is prepared
        self.preparing_since: float | None = None  # when it began (seconds since the epoch)
        self.held = False
        self._good: list[Launch] = []  # see the good property
        self._lazy = False  # a lazy timer is being applied (see settle)
        self._next_due: float | None = None  # no lazy deadline before this one (None: none armed)
        self.pinned: str | None = None  # the version `supervise rollback` pinned
        self.pinned_over: str | None = None  # the newest revision then, not deployed while pinned
        #: Replicas that hit their start limit (by index), kept in the state record so they
        #: stay failed across a supervisor restart (until the spec changes or a user start).
        self.failed_marks: dict[int, state.Failure] = {}
        #: The version (or config) the last automatic rollback took back, kept in the state
        #: record while it holds (build_failed with its revision) so a restart does not retry it.
        self.rolled_back: state.Failure | None = None
        self._persist_pending = False
        self._persisted: state.ServiceRecord | None = None  # the record last written
        self._persist_error = ""
        self._tasks: set[asyncio.Task] | None = None  # background work (a rollback): made by the first
        self._phase_event: asyncio.Event | None = None
        self._policy_cache: tuple[ServiceSpec, Policy, str] | None = None  # see _spec_policy
        self.sink = sink

    # -- observation -----------------------------------------------------------------------

    def observe(self) -> ServiceObserved:
        """This service as the planner sees it."""
        # The replica's state read once, not through its properties: every status and every
        # plan observes every service (2,000 of them: most of a status's time in the supervisor)
        good = self.good_versions()
        replicas = {}
        failed = False
        remote = self.executor.remote
        for i, r in self.replicas.items():
            state_, handle = r.state, r.handle
            failed = failed or state_.phase is Phase.FAILED
            version = r.launch.artifact.version
            live = handle if handle is not None and handle.running else None
            replicas[i] = ReplicaObserved(  # positional, in field order
                i, state_.phase, (live.pid or None) if live is not None else None,  # (0: a Deployment, no process here)
                version, state_.restarts, state_.last_exit, state_.started_at, state_.stale,
                state_.ready, state_.message, handle is not None, version in good,
                self.executor.unobservable(live) if remote and live is not None else "")
        policy, good_rule = self._spec_policy()
        target = self.rollback_target(self.artifact)
        return ServiceObserved(name=self.name, spec=self.spec, replicas=replicas,
                               version=self.artifact.version if self.artifact else None,
                               held=self.held, failed=failed, build_failed=self.build_failed,
                               failed_revision=self.failed_revision, phase=self.phase, message=self.deploy_message,
                               log_error=self.sink.trouble or "",
                               preparing=self.preparing.value if self.preparing is not None else "",
                               preparing_since=self.preparing_since if self.preparing is not None else None,
                               build_line=self.sink.last_build_line if self.preparing is Phase.BUILDING else "",
                               good_rule=good_rule, good_versions=good,
                               rollback_to=target.artifact.version if target else None,
                               pinned=self.pinned, in_place=self.spec.source.in_place)

    def _spec_policy(self) -> tuple[Policy, str]:
        """``(Policy.of(self.spec), its good rule in words)``, made again only when the spec
        is another object (a spec is frozen): every status and every plan observes every
        service, and building the policy was a tenth of that (issue 17)."""
        cached = self._policy_cache
        if cached is None or cached[0] is not self.spec:
            policy = Policy.of(self.spec)
            cached = self._policy_cache = (self.spec, policy, policy.describe_good())
        return cached[1], cached[2]

    # -- good versions (the rollback targets) --------------------------------------------------

    #: How many good versions are remembered (the newest is kept on disk whatever keep_versions
    #: says; the others as long as keep_versions keeps them).
    GOOD_KEPT = 5

    @property
    def good(self) -> list[Launch]:
        """Launches whose version proved good (Policy.good_delay), oldest first, one per
        version: the last is what a failing update rolls back to. Reading it first applies the
        good deadlines that have passed (:meth:`settle`), so every reader sees the rule's
        verdict as of now."""
        self.settle()
        return self._good

    @good.setter
    def good(self, launches: list[Launch]) -> None:
        self._good = launches

    def settle(self) -> None:
        """Apply the lazy timers (``lifecycle.LAZY_TIMERS``: a replica becoming good) whose
        deadline has passed, oldest deadline first. They change no process, so nothing runs
        at their deadline: whatever reads the replicas (an event for one, a status, a plan,
        the state record, a rollback) settles them first, and an idle supervisor stays idle."""
        if self._next_due is None:
            return  # the common case, at every status of every service: nothing armed
        now = self.clock.monotonic()
        if now < self._next_due:
            return
        everyone = [*self.replicas.values(), *self.candidates.values()]
        due = [(when, i, replica) for i, replica in enumerate(everyone) if replica.due for when in replica.due.values()]
        for when, _, replica in sorted(due, key=lambda d: (d[0], d[1])):
            if when <= now:
                self._settle(replica, now)
        left = [when for replica in [*self.replicas.values(), *self.candidates.values()] if replica.due
                for when in replica.due.values()]
        self._next_due = min(left) if left else None

    def _settle(self, replica: Replica, now: float | None = None) -> None:
        """Fire ``replica``'s lazy timers that are due (each taken off before it is fed, so
        the step it causes does not settle it again)."""
        if not replica.due:
            return
        now = self.clock.monotonic() if now is None else now
        for timer, when in sorted(replica.due.items(), key=lambda item: item[1]):
            if when > now or replica.due is None or replica.due.pop(timer, None) is None:
                continue
            if not replica.due:
                replica.due = None
            if self._owns(replica):
                self._lazy = True
                try:
                    self._feed(replica, Fired(timer))
                finally:
                    self._lazy = False

    def good_versions(self) -> tuple[str, ...]:
        """The versions that proved good, oldest first."""
        return tuple(launch.artifact.version for launch in self.good)

    @property
    def good_launch(self) -> Launch | None:
        """The newest launch that proved good: what a failing update rolls back to."""
        return self.good[-1] if self.good else None

    def rollback_target(self, artifact: Artifact | None) -> Launch | None:
        """The launch a failing deploy of ``artifact`` goes back to: the newest good one. A
        folder run in place keeps no earlier files, so there only a config change goes back
        (to the good launch of the same version, with its config); never another version."""
        target = self.good_launch
        if target is None or (self.spec.source.in_place and (
                artifact is None or target.artifact.version != artifact.version)):
            return None
        return target

    def mark_good(self, launch: Launch) -> None:
        """``launch`` proved itself: it becomes the newest good one (README, "Rollback has a written rule").

        Written to the state record at once when a deadline of its own said so (a new version's
        probation); a replica that became good by ``good_after`` (a lazy timer, see
        :meth:`settle`) is written with the record's next write (its next start, stop, exit,
        deploy, hold or pin) or at a detach (SIGQUIT): 2,000 replicas turning good 10 s after
        a start burst wrote 2,000 files in an idle supervisor. After a crash of the supervisor
        itself, the adopting one judges such a replica again (``good_after`` from adoption)."""
        self._good = [g for g in self._good if g.artifact.version != launch.artifact.version][-(self.GOOD_KEPT - 1):]
        self._good.append(launch)
        if not self._lazy:
            self.persist()

    def pin(self, version: str, newest: str | None) -> None:
        """``supervise rollback`` ran ``version``: hold it until the next change. ``newest``
        is the newest revision the source showed; the plan does not deploy it again (as after
        an automatic rollback), a newer one or a change of the file does (start_replica unpins)."""
        self.pinned = version
        self.pinned_over = newest
        self.build_failed = True
        self.failed_revision = newest
        self.deploy_message = f"pinned to {version} by `supervise rollback`; the next change deploys as usual"
        self.sink.note(f"{self.name}: {self.deploy_message}")
        self.changed()
        self.persist()

    def restore_good(self, record: state.ServiceRecord) -> None:
        """Take the good versions and the pin a previous supervisor recorded, with the current
        spec (their folders are checked when a rollback needs them)."""
        versions = source_root(self.state_dir, self.name) / "versions"
        if not self.good:  # a local replica may run only our version folders, or the folder in place
            self.good = [Launch(self.spec, Artifact(workdir=Path(w), version=v, revision=r))
                         for v, r, w in record.good
                         if self.executor.name != "local" or Path(w).parent == versions
                         or Path(w) == self.spec.source.path]
        if record.pinned and self.pinned is None:
            self.pin(record.pinned, record.pinned_over or None)

    @property
    def phase(self) -> Phase:
        """The service's phase: the least advanced of its replicas' (or, with none yet,
        ``fetching``/``building`` while its first version is being prepared)."""
        if self.preparing is not None and not self.replicas:
            return self.preparing
        if self.build_failed and not self.replicas:
            return Phase.FETCH_FAILED if self.failed_stage == "fetch" else Phase.BUILD_FAILED
        if not self.replicas:
            return Phase.STOPPED
        # A list, not a set: `in` on a list compares identity first, where a set hashes each
        # enum member in Python (Enum.__hash__); status asks this of every service.
        if len(self.replicas) == 1:  # the least advanced of one (most services have one replica)
            for only in self.replicas.values():
                if only.phase in _PHASE_ORDER:
                    return only.phase
        phases = [r.phase for r in self.replicas.values()]
        return next(p for p in _PHASE_ORDER if p in phases)

    def reached(self, condition: Condition) -> bool | None:
        """True when every replica meets ``condition``; None when it never will; False
        otherwise (:func:`supervisor.observe.views.reached` of :meth:`observe`)."""
        return views.reached(self.observe(), condition)

    # -- the state machine and its effects ---------------------------------------------------

    def policy(self, replica: Replica) -> Policy:
        """The life-cycle policy of ``replica``: supervision settings from the newest spec,
        checks from the spec it was started with."""
        launch = replica.launch.spec
        policy = self._spec_policy()[0]
        if launch is not self.spec:
            own = Policy.of(launch)
            policy = replace(policy, has_ready=own.has_ready, ready_deadline=own.ready_deadline,
                             live_retries=own.live_retries)
        return policy

    def _feed(self, replica: Replica, event: lifecycle.Event) -> list[StopProcess]:
        """Step ``replica``'s state machine with ``event`` and run the effects; the process
        stops it asks for are returned for the caller to await."""
        if replica.due:  # a good deadline passed before this event: it counts first
            self._settle(replica)
        before = replica.state.phase
        replica.state, effects = lifecycle.step(self.policy(replica), replica.state, event, self.clock.monotonic())
        stops: list[StopProcess] = []
        spawn: Spawn | None = None
        for effect in effects:
            if isinstance(effect, StopProcess):
                stops.append(effect)
            elif isinstance(effect, Spawn):
                spawn = effect  # last: the spawn feeds the state machine again
            else:
                self._run(replica, effect)
        if replica.state.phase is not before:
            if replica.state.phase is Phase.FAILED and self.replicas.get(replica.index) is replica:
                artifact = replica.launch.artifact
                self.failed_marks[replica.index] = state.Failure(
                    state.failed_key(replica.launch.fingerprint, self.spec), artifact.version, artifact.revision, str(artifact.workdir),
                    replica.state.message)
            if replica.state.phase is Phase.EXITED:
                replica.exited_at = self.clock.time()
            self._phase_changed()
        if spawn is not None:
            # The executor's start may wait on an engine (a container is created): it runs as
            # a task, never on the loop's time; start_replica awaits it, and a stop that comes
            # meanwhile waits for it (see _begin_stop).
            replica.stop = None  # a new process: a stop of it is a new stop
            replica.spawning = asyncio.get_running_loop().create_task(self._spawn(replica, spawn.reason))
        return stops

    def _run(self, replica: Replica, effect: Effect) -> None:
        if isinstance(effect, Emit):
            self.notifier.emit(effect.type, self.name, replica.launch.artifact.version, replica=replica.index,
                               **dict(effect.data))
        elif isinstance(effect, Note):
            self.sink.note(effect.text)
        elif isinstance(effect, Arm):
            self._cancel(replica, effect.timer)
            if effect.timer in lifecycle.LAZY_TIMERS:
                if replica.due is None:
                    replica.due = {}
                when = replica.due[effect.timer] = self.clock.monotonic() + effect.delay
                self._next_due = when if self._next_due is None else min(self._next_due, when)
            else:
                replica.timers[effect.timer] = asyncio.get_running_loop().call_later(
                    effect.delay, self._fire, replica, effect.timer)
        elif isinstance(effect, Cancel):
            self._cancel(replica, effect.timer)
        elif isinstance(effect, Rollback):
            self._rollback(replica, effect.why)
        elif isinstance(effect, Good):
            self.mark_good(replica.launch)
        elif isinstance(effect, (Promote, Abandon)):
            if replica.trial is not None and not replica.trial.done():
                replica.trial.set_result((True, "") if isinstance(effect, Promote) else (False, effect.why))

    def _fire(self, replica: Replica, timer: Timer) -> None:
        replica.timers.pop(timer, None)
        if timer is Timer.BACKOFF and not self.may_start():
            return  # the supervisor is ending: no restart now
        if self._owns(replica):
            self._feed(replica, Fired(timer))

    def _owns(self, replica: Replica) -> bool:
        return self.replicas.get(replica.index) is replica or self.candidates.get(replica.index) is replica

    @staticmethod
    def _cancel(replica: Replica, timer: Timer | None = None) -> None:
        for key in [timer] if timer is not None else list(replica.timers):
            handle = replica.timers.pop(key, None)
            if handle is not None:
                handle.cancel()
        if replica.due is not None:
            if timer is None:
                replica.due = None
            else:
                replica.due.pop(timer, None)
                if not replica.due:
                    replica.due = None

    @property
    def phase_changed(self) -> asyncio.Event:
        """Set at each phase change; what a dependent waiting in ``pending`` clears and waits
        on. Made on first use: most services have no dependent (an Event is 0.7 KB)."""
        if self._phase_event is None:
            self._phase_event = asyncio.Event()
        return self._phase_event

    def _phase_changed(self) -> None:
        if self._phase_event is not None:
            self._phase_event.set()
        self.changed()
        self.persist()

    # -- changes from the plan -------------------------------------------------------------

    def apply_settings(self, spec: ServiceSpec) -> None:
        """Take a new spec whose changes need no restart (policy, backoff, limits, signals)."""
        if spec.start_limit != self.spec.start_limit or spec.backoff != self.spec.backoff:
            for replica in self.replicas.values():
                replica.state = replace(replica.state, attempt=0, last_delay=0.0, starts=())
        checks_changed = spec.ready != self.spec.ready or spec.live != self.spec.live
        self.spec = spec
        self.sink.policy = spec.log
        if checks_changed:
            self._apply_checks(spec)
        for replica in self.replicas.values():  # still waiting on dependencies: on the new ones
            if replica.phase is Phase.PENDING and replica.handle is None:
                replica.unwatch()
                replica.launch = Launch(spec, replica.launch.artifact)
                self._task(replica, self._start_after_dependencies(replica))

    def mark_build_failed(self, spec: ServiceSpec, revision: str | None, message: str = "",
                          stage: str = "build") -> None:
        """The fetch or build (``stage``) of ``spec`` at ``revision`` failed; running replicas stay."""
        self.spec = spec
        self.build_failed = True
        self.failed_stage = stage
        self.failed_revision = revision
        running = self.artifact.version if self.artifact and self.replicas else None
        self.deploy_message = f"{message or 'build failed'}" + (f"; still running {running}" if running else "")
        self.changed()

    async def start_replica(self, index: int, spec: ServiceSpec, artifact: Artifact, reason: str,
                            previous: Launch | None = None) -> None:
        """Start replica ``index`` of ``spec``/``artifact``; an old process there is stopped first.

        Returns once the process is spawned, or, when ``depends_on`` is not yet met, at once:
        the replica then waits in phase ``pending`` and starts when its dependencies allow.
        ``previous``: the last good launch, to roll back to while this one is on probation.
        """
        self.spec = spec
        self.artifact = artifact
        if self.pinned is not None and artifact.version != self.pinned:
            self.pinned = None  # another version deploys: the pin of `supervise rollback` ends
        self.build_failed = self.pinned is not None  # a user restart of the pinned version keeps it
        if self.pinned is None:
            self.deploy_message = ""
        self.sink.policy = spec.log
        if self.failed_marks.pop(index, None) is not None:
            self.persist()
        old = self.replicas.get(index)
        if old is not None and (old.handle is not None or old.tasks or old.watcher):
            await self.stop_replica(index, reason)
        replica = Replica(index=index, launch=Launch(spec, artifact), state=ReplicaState(index=index),
                          previous=previous)
        if old is not None:
            replica.state = replace(replica.state, restarts=old.restarts, last_exit=old.last_exit)
            self._cancel(old)
        self.replicas[index] = replica
        waiting = self._waiting(replica) if spec.depends_on else ""
        if not self.may_start():
            return  # the supervisor is ending (a run once decided): it stays pending until stopped
        self._feed(replica, Start(reason, waiting=waiting, probation=previous is not None))
        if waiting:
            self._task(replica, self._start_after_dependencies(replica))
        else:
            await self._spawned(replica)

    async def restart_replica(self, index: int, spec: ServiceSpec, artifact: Artifact, reason: str,
                              probation: bool = True) -> None:
        """Replace replica ``index`` with a new process of ``spec``/``artifact``.

        ``update = "recreate"``: the old process is fully stopped before the new one starts,
        so two never run at once. ``"start-first"``: the new one starts beside the old, and the
        old stops only once the new one is ready (or, without a ready check, has stayed up
        :data:`~supervisor.decide.lifecycle.START_FIRST_GRACE` seconds). Either way a new version that
        crash-loops or never becomes ready is rolled back to the last good one (``probation``
        False: no probation, as for a user's rollback to a good version).
        """
        old = self.replicas.get(index)
        previous = None
        if old is not None and lifecycle.served_well(self.policy(old), old.state, self.clock.monotonic()):
            self.mark_good(old.launch)  # replaced while on probation, after serving well: good
        if old is not None:
            new_launch = (old.launch.artifact.version != artifact.version
                          or old.launch.fingerprint != state.fingerprint(spec))
            target = self.rollback_target(artifact)
            if new_launch and probation and target is not None and (
                    target.artifact.version != artifact.version
                    or state.fingerprint(target.spec) != state.fingerprint(spec)):
                # Roll back only to a launch that proved good (Policy.good_delay: the rule in
                # README, "Rollback has a written rule"); with none yet, nothing to go back to.
                previous = target
            healthy = old.handle is not None and old.handle.running and old.phase in UP
            if old.launch.artifact.version != artifact.version:
                reason = f"{reason} ({old.launch.artifact.version} -> {artifact.version})"
            if spec.update == "start-first" and healthy:
                await self._start_first(old, spec, artifact, reason)
                return
            self.notifier.emit(EventType.RESTARTING, self.name, artifact.version, replica=index, reason=reason)
            await self.stop_replica(index, reason, remove=False)  # (RESTARTS counts only restarts after exits)
        await self.start_replica(index, spec, artifact, reason, previous=previous)

    async def stop_for_dependency(self, indices: list[int], reason: str) -> None:
        """Stop replicas ``indices`` ahead of their restart, because a dependency of theirs is
        about to go down (``depends_on`` ... ``restart = true``); the plan's restart of each
        starts it again. A replica that proved good is in :attr:`good` already (the ``Good``
        effect; :meth:`settle` counts a deadline passed by now), so the restart can still roll
        back to it."""
        self.settle()
        await asyncio.gather(*(self.stop_replica(i, reason) for i in indices))

    async def stop_replica(self, index: int, reason: str, remove: bool = False) -> Exit | None:
        """Stop replica ``index``: stop signal, ``stop_timeout``, SIGKILL to the group."""
        replica = self.replicas.get(index)
        if replica is None:
            return None
        exit = await self._stop_process(replica, reason)
        if remove and self.replicas.get(index) is replica:
            self.replicas.pop(index, None)
            self.changed()
            self.persist()
        return exit

    async def _stop_process(self, replica: Replica, reason: str) -> Exit | None:
        """Stop ``replica``'s process (in the dict or not) and wait until its output is in.
        A caller cancelled meanwhile does not cancel the stop: a stop always finishes."""
        return await asyncio.shield(self._begin_stop(replica, reason))

    def _begin_stop(self, replica: Replica, reason: str) -> asyncio.Future[Exit | None]:
        """The synchronous half of a stop: checks and timers end and the life cycle learns of
        the stop now (the ``stopping`` event and note), so the exit that follows, however soon,
        is this stop's (a ``stopped`` event with its status), never a crash nor a silent end.
        Returns the future of the whole stop; a second stop of the same process gets the same
        one (its ``stop_signal``, ``stop_timeout``, then SIGKILL run once)."""
        if replica.stop is not None:
            return replica.stop
        if replica.spawning is not None and not replica.spawning.done():
            # its process is being made (a container): stop it once it is there (or failed)
            async def after_spawn() -> Exit | None:
                await self._spawned(replica)
                replica.stop = None
                return await self._begin_stop(replica, reason)

            pending: asyncio.Future[Exit | None] = asyncio.get_running_loop().create_task(after_spawn())
            replica.stop = pending
            return pending
        replica.unwatch()  # its tasks, and the callback on its exit
        handle = replica.handle
        alive = handle is not None and self.executor.alive(handle)
        stops = self._feed(replica, Stop(reason, alive=alive))
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[Exit | None]
        if handle is not None and stops:
            stop = loop.create_task(self._finish_stop(replica, handle, stops[0]))
        else:
            replica.handle = None
            stop = loop.create_future()
            stop.set_result(None)
        replica.stop = stop
        return stop

    async def _finish_stop(self, replica: Replica, handle: Running, stop: StopProcess) -> Exit | None:
        exit = await self.executor.stop(handle, stop.signal, stop.timeout)
        replica.handle = None
        self._feed(replica, Stopped(exit))
        return exit

    # -- safe updates: start-first and rollback ---------------------------------------------

    async def _start_first(self, old: Replica, spec: ServiceSpec, artifact: Artifact, reason: str) -> None:
        index = old.index
        candidate = Replica(index=index, launch=Launch(spec, artifact),
                            state=ReplicaState(index=index, restarts=old.restarts),
                            trial=asyncio.get_running_loop().create_future())
        assert candidate.trial is not None
        self.candidates[index] = candidate
        self.notifier.emit(EventType.RESTARTING, self.name, artifact.version, replica=index,
                           reason=f"{reason}; start-first")
        try:
            self._feed(candidate, Start(f"{reason}; start-first", trial=True))
            ok, why = await candidate.trial
        finally:
            if self.candidates.get(index) is candidate:
                del self.candidates[index]
        if self.replicas.get(index) is not old:  # a stop or another change came meanwhile
            await self._stop_process(candidate, "superseded")
            return
        if not ok:
            await self._stop_process(candidate, f"new version {why}")
            self._mark_rolled_back(index, artifact, old.launch.artifact, why, spec)
            return
        self.replicas[index] = candidate
        self.spec, self.artifact = spec, artifact
        self.changed()
        await self._stop_process(old, f"replaced by {artifact.version} (start-first)")
        self.persist()

    def _rollback(self, replica: Replica, why: str) -> None:
        """Put the last good launch back in place of ``replica``'s new one."""
        target = replica.previous
        if target is None:
            return
        replica.previous = None
        self._mark_rolled_back(replica.index, replica.launch.artifact, target.artifact, why, replica.launch.spec)

        async def put_back() -> None:
            await self._stop_process(replica, f"rolling back: {why}")
            if self.replicas.get(replica.index) is not replica:
                return
            back = Replica(index=replica.index, launch=target,
                           state=ReplicaState(index=replica.index, restarts=replica.restarts))
            self.replicas[replica.index] = back
            self.artifact = target.artifact
            self._feed(back, Start(f"rolled back to {target.artifact.version}"))

        self._background(put_back())

    def _mark_rolled_back(self, index: int, bad: Artifact, good: Artifact, why: str, spec: ServiceSpec) -> None:
        """``bad`` (started from ``spec``) was rolled back to ``good``: not deployed again
        until the file or the source changes, across a supervisor restart too (the record)."""
        self.build_failed = True  # "the newest version could not be deployed": not retried
        self.failed_revision = bad.revision
        if bad.version != good.version:
            message = f"rolled back {bad.version} -> {good.version}: {why}"
        else:
            message = f"rolled back to the previous config (same version {good.version}): {why}"
        self.deploy_message = message
        self.rolled_back = state.Failure(state.fingerprint(spec), bad.version, bad.revision, str(bad.workdir), message)
        self.persist()
        self.sink.note(f"{self.name}[{index}] {message}")
        self.notifier.emit(EventType.ROLLED_BACK, self.name, good.version, replica=index, reason=why,
                           bad_version=bad.version)
        self.changed()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_all(self, reason: str) -> None:
        """Stop and forget every replica, concurrently. As :meth:`stop_replica` with
        ``remove`` for each, without a task and a shield per replica (a shutdown awaits
        2,000 of these): the stops are shielded together, a cancelled caller does not cancel
        them; the first stop that failed is raised once the others are done and forgotten."""
        self.signal_all(reason)
        stopping = [(i, r, self._begin_stop(r, reason)) for i, r in sorted(self.replicas.items())]
        if not stopping:
            return
        results = await asyncio.shield(asyncio.gather(*(f for _, _, f in stopping), return_exceptions=True))
        failed = None
        for (index, replica, _), result in zip(stopping, results):
            if isinstance(result, BaseException):
                failed = failed or result
            elif self.replicas.get(index) is replica:
                self.replicas.pop(index, None)
        self.changed()
        self.persist()
        if failed is not None:
            raise failed

    def signal_all(self, reason: str = "supervisor stopping") -> None:
        """Begin the stop of every replica now: :meth:`send_stop_signals`, then
        :meth:`begin_stops` (the waits follow in :meth:`stop_all`)."""
        self.send_stop_signals()
        self.begin_stops(reason)

    def send_stop_signals(self) -> None:
        """The stop signal to every replica whose process runs and whose stop has not begun,
        and nothing else: a shutdown sends those of a whole dependency level first, in one
        sweep, then begins the stops (:meth:`begin_stops`: events, notes, state records),
        so the signals leave within milliseconds of each other, not one per replica's
        bookkeeping. Both run in one synchronous stretch of the loop: no exit is seen in
        between, so a replica that exits at once is still this stop's, reported stopped."""
        self.executor.signal_many(self.stop_signals())

    def stop_signals(self) -> list[tuple[Running, int]]:
        """What :meth:`send_stop_signals` sends: ``(process, signal)`` of every replica whose
        process runs and whose stop has not begun."""
        return [(handle, self.spec.stop_signal) for replica in self.replicas.values()
                if replica.stop is None and (handle := replica.handle) is not None and handle.running
                and (replica.spawning is None or replica.spawning.done())]

    def begin_stops(self, reason: str = "supervisor stopping") -> None:
        """Begin the stop of every replica in its life cycle (the second half of
        :meth:`signal_all`); a replica whose signal has not gone yet gets it from its stop."""
        for replica in list(self.replicas.values()):
            if replica.stop is None and replica.handle is not None:
                self._begin_stop(replica, reason)

    def detach(self) -> None:
        """Stop watching without stopping (see Reconciler.detach); the state file is written
        now, with every live replica in it."""
        self.settle()  # a replica that became good by now is written so
        for task in list(self._tasks or ()):
            task.cancel()
        for replica in self.replicas.values():
            self._cancel(replica)
            replica.unwatch()
            if replica.handle is not None:
                self.executor.detach(replica.handle)
        self._persist_now()

    # -- user verbs (supervise start/stop/restart) ------------------------------------------

    async def hold(self, reason: str) -> None:
        """A user stop: stop every replica and hold the service until :meth:`release`
        (survives reloads of the file, like ``systemctl stop`` survives ``daemon-reload``)."""
        self.held = True
        await asyncio.gather(*(self.stop_replica(i, reason) for i in sorted(self.replicas)))
        for replica in self.replicas.values():
            replica.message = reason
        self.changed()
        self.persist()

    def release(self) -> None:
        """A user start: drop the hold and forget replicas that do not run (stopped, exited,
        failed), so the next plan starts them afresh with a clean start limit."""
        self.held = False
        self.build_failed = self.pinned is not None  # a pin outlives a user start or restart
        self.failed_marks.clear()  # systemd's reset-failed: a start begins a fresh start limit
        self.persist()
        for index, replica in list(self.replicas.items()):
            if replica.handle is None:  # stopped, exited, failed, in backoff or pending
                self._cancel(replica)
                replica.unwatch()
                del self.replicas[index]
        self.changed()

    async def user_restart(self) -> None:
        """A user restart: running replicas are replaced now, the others start on the next
        plan. Neither counts towards the start limit (a fresh limiter per replica)."""
        running = [i for i, r in self.replicas.items() if r.handle is not None and r.handle.running]
        self.release()
        if self.artifact is not None:
            artifact = self.artifact
            await asyncio.gather(*(self.restart_replica(i, self.spec, artifact, "restarted by user")
                                   for i in running))

    # -- processes -------------------------------------------------------------------------

    def _waiting(self, replica: Replica) -> str:
        """The ``depends_on`` entries not met yet, for messages ("" when all are)."""
        waiting = []
        for dep in replica.launch.spec.depends_on:
            other = self.lookup(dep.service)
            reached = other.reached(dep.condition) if other is not None else None
            if reached is None:
                waiting.append(f"{dep.service} ({dep.condition.value}; it cannot get there now)")
            elif not reached:
                waiting.append(f"{dep.service} ({dep.condition.value})")
        return ", ".join(waiting)

    async def _start_after_dependencies(self, replica: Replica) -> None:
        """Wait (woken by the dependencies' phase changes, no polling) and then start."""
        while self.replicas.get(replica.index) is replica and replica.phase is Phase.PENDING:
            waiting = self._waiting(replica)
            if not waiting and not self.may_start():
                return  # the supervisor is ending: it stays pending until stopped
            self._feed(replica, DependenciesChanged(waiting))
            if not waiting:
                return
            waits = []
            for dep in replica.launch.spec.depends_on:
                other = self.lookup(dep.service)
                if other is not None:
                    other.phase_changed.clear()
                    waits.append(asyncio.ensure_future(other.phase_changed.wait()))
            if not waits:  # a dependency removed from the file: nothing will wake us
                return
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def _spawn(self, replica: Replica, reason: str) -> None:
        """Run the Spawn effect through the executor, then watch the replica."""
        spec, artifact = replica.launch.spec, replica.launch.artifact
        env = replica_env(self.name, spec.environment, replica.index, user=spec.user)
        env["SUPERVISE_VERSION"] = artifact.version
        if spec.source.kind == "pip":  # the version's venv, as `activate` sets it
            env.update(venv_env(artifact.workdir, env))
        try:
            handle = await self.executor.start(spec, artifact, replica.index, env, self.sink,
                                               self._label(replica.index))
        except StartFailed as exc:
            self._feed(replica, SpawnFailed(str(exc), exc.code))
            return
        except Exception as exc:  # noqa: BLE001 - a bug in an executor: a failed start, never a stuck one
            log.exception("%s: starting replica %d failed", self.name, replica.index)
            self._feed(replica, SpawnFailed(f"cannot start: {exc!r}"[:300]))
            return
        finally:
            if replica.spawning is asyncio.current_task():
                replica.spawning = None  # done: a finished task per replica is 0.5 KB kept for nothing
        replica.handle = handle
        self._feed(replica, Spawned(handle.pid, at=self.clock.time()))
        self._watch_checks(replica, handle, env)

    async def _spawned(self, replica: Replica) -> None:
        """Wait until the start under way (if any) has a process, or has failed."""
        spawning = replica.spawning
        if spawning is not None and not spawning.done():
            await asyncio.wait([spawning])

    def _watch_checks(self, replica: Replica, handle: Running, env: dict[str, str]) -> None:
        self._watch(replica, handle)
        replica.check_env = env
        self._run_checks(replica, handle)

    def _run_checks(self, replica: Replica, handle: Running) -> None:
        """Start the ready loop (while not ready yet) and the live loop of ``replica``'s launch."""
        spec, env = replica.launch.spec, replica.check_env or {}
        checks = []
        if spec.ready is not None and not replica.state.ready:
            checks.append(self._task(replica, self._readiness(replica, handle, env)))
        if spec.live is not None:
            checks.append(self._task(replica, self._liveness(replica, handle, env)))
        replica.checks = tuple(checks)

    def _apply_checks(self, spec: ServiceSpec) -> None:
        """``ready``/``live`` changed in the file: the running replicas are probed with the new
        checks from now on (their check loops start over), in place. A replica not ready yet
        whose ready check is removed is ready now (as one started without a check)."""
        for replica in self.replicas.values():
            launch, handle = replica.launch, replica.handle
            if launch.spec.ready == spec.ready and launch.spec.live == spec.live:
                continue
            replica.launch = Launch(replace(launch.spec, ready=spec.ready, live=spec.live), launch.artifact)
            if handle is None or not handle.running or replica.state.stopping or replica.check_env is None:
                continue  # (a process started later runs the new checks from its launch)
            for task in replica.checks:
                task.cancel()
            self._run_checks(replica, handle)
            if spec.ready is None and not replica.state.ready:
                self._feed(replica, Ready(alive=True))

    def adopt(self, index: int, handle: Running, spec: ServiceSpec, artifact: Artifact,
              started_at: float | None, restarts: int, stale: bool | str) -> None:
        """Take over a replica that survived a supervisor restart (``handle`` from the
        executor's :meth:`~supervisor.execute.executors.Executor.adopt`). ``stale``: the next
        plan replaces it (True: it was started from another config; a string says why else)."""
        self.spec = spec
        self.artifact = artifact
        replica = Replica(index=index, launch=Launch(spec, artifact), state=ReplicaState(index=index),
                          handle=handle)
        self.replicas[index] = replica
        self.sink.note(f"adopted {self.name}[{index}] pid {handle.pid} version {artifact.version}")
        self.notifier.emit(EventType.ADOPTED, self.name, artifact.version, replica=index, pid=handle.pid)
        self._feed(replica, Adopted(handle.pid, started_at, restarts, stale))
        self._watch_checks(replica, handle, replica_env(self.name, spec.environment, index, user=spec.user))

    def restore_rolled_back(self, record: state.ServiceRecord) -> None:
        """The version (or config) an automatic rollback under a previous supervisor took back
        is not deployed again while the service is unchanged in the file: the plan leaves the
        adopted good replicas alone until the file or the source changes (README, "Safe updates")."""
        mark = record.still_rolled_back(state.fingerprint(self.spec))
        if mark is None or self.build_failed or not self.replicas:
            return
        self.build_failed = True
        self.failed_revision = mark.revision
        self.deploy_message = mark.message
        self.rolled_back = mark
        self.sink.note(f"{self.name}: {mark.message} (before the supervisor restarted): not deployed again "
                       "until the file or the source changes")
        self.changed()

    def restore_failed(self, record: state.ServiceRecord) -> None:
        """Replicas that hit their start limit under a previous supervisor, with the spec the
        file still has, stay ``failed`` (no start) until the spec changes or a user start
        (:meth:`ServiceRecord.still_failed <supervisor.observe.state.ServiceRecord.still_failed>`)."""
        for index, mark in sorted(record.still_failed(state.failed_key(state.fingerprint(self.spec), self.spec), self.spec.slots).items()):
            if index in self.replicas:
                continue
            message = mark.message or "start limit hit"
            self._restore(index, mark, ReplicaState(index=index, phase=Phase.FAILED, message=message))
            self.failed_marks[index] = mark
            self.sink.note(f"{self._label(index)} still failed from before the supervisor restarted "
                           f"({message}); `supervise start {self.name}` tries again")
        self.changed()

    def _restore(self, index: int, mark: state.Failure | state.CompletedReplica, replica_state: ReplicaState) -> Replica:
        """A replica with no process, in ``replica_state``, of what ``mark`` (a state record's
        kept failure or finished job) says it ran; the service's artifact when it has none."""
        artifact = Artifact(workdir=Path(mark.workdir or "."), version=mark.version, revision=mark.revision)
        replica = Replica(index=index, launch=Launch(self.spec, artifact), state=replica_state)
        self.replicas[index] = replica
        if self.artifact is None and mark.version:
            self.artifact = artifact
        return replica

    def restore_completed(self, record: state.ServiceRecord) -> None:
        """Replicas that exited for good under a previous supervisor (a one-shot job: exited,
        and its restart policy says not to start it again), with the spec the file still has,
        stay ``exited`` with their last exit: a supervisor restart (kill, SIGQUIT, upgrade) does
        not run a finished migration again. A changed spec, a user start or restart runs it
        again, as while the supervisor runs (systemd keeps a finished oneshot unit's result
        until it is started again)."""
        key = state.completed_key(state.fingerprint(self.spec), self.spec)
        for index, mark in sorted(record.still_completed(key, self.spec.slots).items()):
            if index in self.replicas:
                continue
            exit = Exit(code=mark.code, signal=mark.signal)
            replica = self._restore(index, mark, ReplicaState(index=index, phase=Phase.EXITED, last_exit=exit))
            replica.exited_at = mark.at
            self.sink.note(f"{self._label(index)} exited before the supervisor restarted ({exit}); "
                           f"not run again until its spec changes or `supervise start {self.name}`")
        self.changed()

    def _completed(self) -> dict[int, state.CompletedReplica]:
        """The state record's ``completed``: replicas exited for good (see :meth:`restore_completed`)."""
        marks = {}
        for index, replica in self.replicas.items():
            if (replica.state.phase is not Phase.EXITED or replica.handle is not None
                    or index >= self.spec.slots):
                continue
            exit, artifact = replica.state.last_exit or Exit(), replica.launch.artifact
            marks[index] = state.CompletedReplica(
                state.completed_key(replica.launch.fingerprint, self.spec), exit.code, exit.signal,
                replica.exited_at, artifact.version, artifact.revision, str(artifact.workdir))
        return marks

    def _label(self, index: int) -> str:
        return replica_label(self.name, self.spec.replicas, index)

    def _task(self, replica: Replica, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        if replica.tasks is None:
            replica.tasks = set()
        replica.tasks.add(task)
        task.add_done_callback(replica.tasks.discard)
        return task

    def _watch(self, replica: Replica, handle: Running) -> None:
        """Handle the exit of ``handle``'s process when it comes (:meth:`_exited`, as a task
        then); :meth:`Replica.unwatch` takes the callback off again."""
        def exited(future: asyncio.Future[Exit]) -> None:
            replica.watcher = None
            if not future.cancelled() and future.exception() is None:
                self._task(replica, self._exited(replica, handle, future.result()))

        handle.exited.add_done_callback(exited)
        replica.watcher = (handle.exited, exited)

    async def _exited(self, replica: Replica, handle: Running, exit: Exit) -> None:
        if replica.handle is not handle or replica.state.stopping or not self._owns(replica):
            return
        # Whatever the leader left behind goes too (systemd KillMode=control-group)
        await self.executor.cleanup(handle, self.spec.stop_signal, self.spec.stop_timeout)
        if replica.handle is not handle:
            return
        replica.handle = None
        self._feed(replica, Exited(exit, jitter=self.rng()))

    async def _readiness(self, replica: Replica, handle: Running, env: dict[str, str]) -> None:
        check = replica.launch.spec.ready
        assert check is not None
        await asyncio.sleep(check.start_period)
        while handle.running and replica.handle is handle:
            if await self.executor.probe(check, handle, env, replica.launch.artifact.workdir / replica.launch.spec.cwd,
                                          user=replica.launch.spec.user):
                # Passing is not enough: the answer must be this replica's (during a
                # start-first update the old replica answers on the same port).
                siblings = [r.handle for r in (*self.replicas.values(), *self.candidates.values())
                            if r is not replica and r.handle is not None]
                foreign = await self.executor.foreign_answer(check, handle, env, siblings)
                if replica.handle is not handle:
                    return
                self._feed(replica, Ready(alive=handle.running, foreign=foreign))
                if not foreign:
                    return
            await asyncio.sleep(check.interval)

    async def _liveness(self, replica: Replica, handle: Running, env: dict[str, str]) -> None:
        check = replica.launch.spec.live
        assert check is not None
        await asyncio.sleep(check.start_period)
        while handle.running and replica.handle is handle:
            await asyncio.sleep(check.interval)
            ok = await self.executor.probe(check, handle, env, replica.launch.artifact.workdir / replica.launch.spec.cwd,
                                          user=replica.launch.spec.user)
            if replica.handle is not handle:
                return
            for stop in self._feed(replica, LiveProbe(ok)):
                # the watcher sees the exit and the state machine restarts it as for a crash
                await self.executor.stop(handle, stop.signal, stop.timeout)
                return

    # -- the state file --------------------------------------------------------------------

    def persist(self) -> None:
        """Write this service's state file soon (coalesced: once per loop iteration, or with
        the other services' after a burst of changes: :class:`RecordWriter`)."""
        if self._persist_pending:
            return
        self._persist_pending = True
        if self.records is not None:
            self.records.request(self)
        else:
            asyncio.get_running_loop().call_soon(self._persist_now)

    def _persist_now(self) -> None:
        self.settle()  # the good deadlines passed by now count (their persist() finds one pending)
        self._persist_pending = False
        replicas = {}
        for index, replica in self.replicas.items():
            handle = replica.handle
            if handle is None or not handle.running:
                continue
            artifact = replica.launch.artifact
            replicas[index] = state.ReplicaRecord(
                version=artifact.version, revision=artifact.revision, workdir=artifact.workdir,
                started_at=replica.started_at, restarts=replica.restarts,
                fingerprint=replica.launch.fingerprint, runtime=self.executor.name,
                handle=self.executor.record(handle))
        good = tuple((g.artifact.version, g.artifact.revision, str(g.artifact.workdir)) for g in self._good)
        failed = {i: f for i, f in self.failed_marks.items() if i < self.spec.slots}
        rolled_back = self.rolled_back
        if rolled_back is not None and not (self.build_failed and self.failed_revision == rolled_back.revision):
            rolled_back = self.rolled_back = None  # deployed since, or a user start: it holds no more
        completed = self._completed()
        record = state.ServiceRecord(service=self.name, held=self.held, replicas=replicas,
                                     command=tuple(self.spec.command), stop_signal=self.spec.stop_signal,
                                     stop_timeout=self.spec.stop_timeout, good=good, pinned=self.pinned or "",
                                     pinned_over=(self.pinned_over or "") if self.pinned else "", failed=failed,
                                     rolled_back=rolled_back, completed=completed)
        if record == self._persisted:  # most phase changes (starting -> running) change nothing here
            return
        try:
            if not replicas and not self.held and not failed and not completed:
                # Nothing to adopt and no hold: no file, which every reader takes for exactly
                # that (an unlink costs a tenth of a new file: a stop of 2,000 wrote 2,000 files)
                state.remove(self.state_dir, self.name)
            else:
                state.save(self.state_dir, self.name, record)
        except OSError as exc:  # disk full, state dir gone: supervision goes on; retried next change
            if self._persist_error != str(exc):
                log.error("%s: cannot write its state record (%s); a restarted supervisor may not adopt "
                          "its replicas until it can", self.name, exc)
            self._persist_error = str(exc)
            return
        if self._persist_error:
            log.info("%s: state record written again", self.name)
        self._persist_error = ""
        self._persisted = record
