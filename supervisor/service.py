"""One service's replicas on the local machine: start, watch, restart with backoff, stop.

A :class:`ServiceController` owns the replicas of one service. Exits arrive as futures from the
reaper (SIGCHLD) or a pidfd; nothing here polls a process. Each replica keeps the launch (spec
and artifact) it was started with, so an automatic restart brings back the same version and
command even when the file has changed since; supervision settings (restart policy, backoff,
start limit, stop signal and timeout) are read from the newest spec, so they apply in place.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import health, logs, procs, safefs, state
from .backoff import BackoffState, StartLimiter
from .builds import Artifact
from .sources.pip import venv_env
from .environ import command_argv, replica_env
from .events import EventType, Notifier
from .model import Condition, Exit, Phase, ReplicaObserved, RestartPolicy, ServiceObserved, ServiceSpec

log = logging.getLogger("supervise")

#: Phases in which a replica counts as up.
UP = (Phase.RUNNING, Phase.READY)
#: Crashes of a new version, before it has proven itself, that roll it back.
ROLLBACK_CRASHES = 3
#: Seconds a new version without a ready check must stay up to count as good.
PROBATION = 10.0
#: Seconds a start-first replacement without a ready check must stay up before the old stops.
START_FIRST_GRACE = 1.0


def _ready_deadline(spec: ServiceSpec) -> float:
    """Seconds a new replica gets to pass its ready check: the start period, then ``retries``
    probes (interval + timeout each), then 2 s of slack."""
    check = spec.ready or {}
    retries = max(int(check.get("retries", 3)), 1)  # type: ignore[call-overload]
    return (float(check.get("start_period", 0.0)) + retries  # type: ignore[arg-type]
            * (float(check.get("interval", 1.0)) + float(check.get("timeout", 1.0))) + 2.0)  # type: ignore[arg-type]


@dataclass
class Launch:
    """What a replica process is made of: the spec and artifact it was started from."""

    spec: ServiceSpec
    artifact: Artifact


@dataclass
class Replica:
    """One replica's bookkeeping: its launch, phase, process handle, restart pacing."""
    index: int
    launch: Launch
    phase: Phase = Phase.PENDING
    handle: procs.ProcessHandle | None = None
    restarts: int = 0
    last_exit: Exit | None = None
    started_at: float | None = None
    backoff: BackoffState | None = None
    limiter: StartLimiter | None = None
    timer: asyncio.TimerHandle | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)
    stopping: bool = False
    ready: bool = False
    message: str = ""
    stale: bool = False  # adopted, started from another config: the next plan replaces it
    previous: Launch | None = None  # the last good launch, while this new one is on probation
    probation_crashes: int = 0
    start_error: str = ""  # why the last start failed (unknown user, missing command, ...)
    probation_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None and self.handle.running else None


class ServiceController:
    """Runs the replicas of one service. All methods run on the event loop thread.

    ``lookup`` finds another service's controller (for ``depends_on``); ``changed`` is called
    after every phase change (the reconciler uses it to re-check dependents).
    """

    def __init__(self, spec: ServiceSpec, *, state_dir: Path, reaper: procs.Reaper, notifier: Notifier,
                 lookup: Callable[[str], "ServiceController | None"], changed: Callable[[], None],
                 sink: logs.LogSink, cgroup_parent: Path | None = None):
        self.spec = spec
        self.name = spec.name
        self.state_dir = state_dir
        self.reaper = reaper
        self.notifier = notifier
        self.lookup = lookup
        self.changed = changed
        self.cgroup_parent = cgroup_parent
        self.replicas: dict[int, Replica] = {}
        self.artifact: Artifact | None = None
        self.build_failed = False
        self.failed_revision: str | None = None
        self.deploy_message = ""  # why the newest version is not what runs (failed build, rollback)
        self.preparing: Phase | None = None  # FETCHING/BUILDING while a version is prepared
        self.held = False
        self._persist_pending = False
        self._persisted: dict | None = None  # the record last written
        self._persist_error = ""
        self._tasks: set[asyncio.Task] = set()
        self.phase_changed = asyncio.Event()
        self.sink = sink

    # -- observation -----------------------------------------------------------------------

    def observe(self) -> ServiceObserved:
        """This service as the planner sees it."""
        replicas = {
            i: ReplicaObserved(index=i, phase=r.phase, pid=r.pid, version=r.launch.artifact.version,
                               restarts=r.restarts, last_exit=r.last_exit, started_at=r.started_at,
                               stale=r.stale)
            for i, r in self.replicas.items()
        }
        failed = any(r.phase is Phase.FAILED for r in self.replicas.values())
        return ServiceObserved(name=self.name, spec=self.spec, replicas=replicas,
                               version=self.artifact.version if self.artifact else None,
                               held=self.held, failed=failed, build_failed=self.build_failed,
                               failed_revision=self.failed_revision)

    @property
    def phase(self) -> Phase:
        """The service's phase: the least advanced of its replicas' (or, with none yet,
        ``fetching``/``building`` while its first version is being prepared)."""
        if self.preparing is not None and not self.replicas:
            return self.preparing
        if self.build_failed and not self.replicas:
            return Phase.BUILD_FAILED
        if not self.replicas:
            return Phase.STOPPED
        order = (Phase.FAILED, Phase.BACKOFF, Phase.PENDING, Phase.STARTING, Phase.STOPPING,
                 Phase.EXITED, Phase.STOPPED, Phase.RUNNING, Phase.READY)
        phases = {r.phase for r in self.replicas.values()}
        return next(p for p in order if p in phases)

    def reached(self, condition: Condition) -> bool | None:
        """True when every replica meets ``condition``; None when it never will (failed,
        build failed, held, or a ``completed`` one exited non-zero); False otherwise."""
        replicas = [self.replicas.get(i) for i in range(self.spec.replicas)]
        if self.build_failed and not any(r and r.handle for r in replicas):
            return None
        if self.held:
            return None
        if any(r is not None and r.phase is Phase.FAILED for r in replicas):
            return None
        if any(r is None for r in replicas):
            return False
        if condition is Condition.COMPLETED:
            for r in replicas:
                if r.phase is Phase.EXITED and r.last_exit and not r.last_exit.success:
                    return None
            return all(r.phase is Phase.EXITED and r.last_exit and r.last_exit.success for r in replicas)  # type: ignore[union-attr]
        if condition is Condition.READY:
            return all(r.ready and r.phase in UP for r in replicas)  # type: ignore[union-attr]
        return all(r.phase in UP or (r.phase is Phase.EXITED and r.started_at) for r in replicas)  # type: ignore[union-attr]

    # -- changes from the plan -------------------------------------------------------------

    def apply_settings(self, spec: ServiceSpec) -> None:
        """Take a new spec whose changes need no restart (policy, backoff, limits, signals)."""
        if spec.start_limit != self.spec.start_limit or spec.backoff != self.spec.backoff:
            for replica in self.replicas.values():
                replica.limiter = StartLimiter(spec.start_limit)
                replica.backoff = BackoffState(spec.backoff)
        self.spec = spec
        self.sink.policy = spec.log
        for replica in self.replicas.values():  # still waiting on dependencies: on the new ones
            if replica.phase is Phase.PENDING and replica.handle is None:
                for task in list(replica.tasks):
                    task.cancel()
                replica.launch = Launch(spec, replica.launch.artifact)
                self._task(replica, self._start_after_dependencies(replica, "dependencies changed"))

    def mark_build_failed(self, spec: ServiceSpec, revision: str | None, message: str = "") -> None:
        """The fetch or build of ``spec`` at ``revision`` failed; running replicas stay."""
        self.spec = spec
        self.build_failed = True
        self.failed_revision = revision
        running = self.artifact.version if self.artifact and self.replicas else None
        self.deploy_message = f"{message or 'build failed'}" + (f"; still running {running}" if running else "")
        self.changed()

    async def start_replica(self, index: int, spec: ServiceSpec, artifact: Artifact, reason: str) -> None:
        """Start replica ``index`` of ``spec``/``artifact``; an old process there is stopped first.

        Returns once the process is spawned, or, when ``depends_on`` is not yet met, at once:
        the replica then waits in phase ``pending`` and starts when its dependencies allow.
        """
        self.spec = spec
        self.artifact = artifact
        self.build_failed = False
        self.deploy_message = ""
        self.sink.policy = spec.log
        old = self.replicas.get(index)
        if old is not None and (old.handle is not None or old.tasks):
            await self.stop_replica(index, reason)
        replica = Replica(index=index, launch=Launch(spec, artifact), backoff=BackoffState(spec.backoff),
                          limiter=StartLimiter(spec.start_limit))
        if old is not None:
            replica.restarts = old.restarts
            replica.last_exit = old.last_exit
            self._cancel_timer(old)
        self.replicas[index] = replica
        if spec.depends_on and not self._dependencies_met(replica):
            self._set_phase(replica, Phase.PENDING)
            self._task(replica, self._start_after_dependencies(replica, reason))
            return
        replica.limiter.allow(time.monotonic())  # type: ignore[union-attr]
        self._spawn(replica, reason)

    async def restart_replica(self, index: int, spec: ServiceSpec, artifact: Artifact, reason: str) -> None:
        """Replace replica ``index`` with a new process of ``spec``/``artifact``.

        ``update = "recreate"``: the old process is fully stopped before the new one starts,
        so two never run at once. ``"start-first"``: the new one starts beside the old, and the
        old stops only once the new one is ready (or, without a ready check, has stayed up
        :data:`START_FIRST_GRACE` seconds). Either way a new version that crash-loops or never
        becomes ready is rolled back to the last good one (see :meth:`_rollback`).
        """
        old = self.replicas.get(index)
        previous = None
        if old is not None:
            new_launch = (old.launch.artifact.version != artifact.version
                          or state.fingerprint(old.launch.spec) != state.fingerprint(spec))
            if new_launch:
                # Roll back only to a launch that proved itself (ready, or up PROBATION s);
                # one still on probation hands on its own last good launch.
                previous = old.launch if self._proven(old) else old.previous
            healthy = old.handle is not None and old.handle.running and old.phase in UP
            if old.launch.artifact.version != artifact.version:
                reason = f"{reason} ({old.launch.artifact.version} -> {artifact.version})"
            if spec.update == "start-first" and healthy:
                await self._start_first(old, spec, artifact, reason)
                return
            self.notifier.emit(EventType.RESTARTING, self.name, artifact.version, replica=index, reason=reason)
            await self.stop_replica(index, reason, remove=False)
            old.restarts += 1
        await self.start_replica(index, spec, artifact, reason)
        new = self.replicas.get(index)
        if new is not None and previous is not None:
            new.previous = previous
            self._arm_probation(new)

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
        """Stop ``replica``'s process (in the dict or not) and wait until its output is in."""
        index = replica.index
        self._cancel_timer(replica)
        for task in list(replica.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        exit = None
        handle = replica.handle
        if handle is not None and (handle.running or procs.group_alive(handle.pgid)):
            replica.stopping = True
            self._set_phase(replica, Phase.STOPPING)
            version = replica.launch.artifact.version
            self.notifier.emit(EventType.STOPPING, self.name, version, replica=index, pid=handle.pid, reason=reason)
            self.sink.note(f"stopping {self.name}[{index}] pid {handle.pid}: {reason}")
            exit = await procs.stop(handle, self.spec.stop_signal, self.spec.stop_timeout, self.reaper)
            await _drain(handle)
            replica.last_exit = exit
            replica.stopping = False
            self.notifier.emit(EventType.STOPPED, self.name, version, replica=index, pid=handle.pid, exit=str(exit))
            self.sink.note(f"stopped {self.name}[{index}] pid {handle.pid}: {exit}")
        replica.handle = None
        self._set_phase(replica, Phase.STOPPED)
        return exit

    # -- safe updates: start-first and rollback ---------------------------------------------

    async def _start_first(self, old: Replica, spec: ServiceSpec, artifact: Artifact, reason: str) -> None:
        index = old.index
        candidate = Replica(index=index, launch=Launch(spec, artifact), backoff=BackoffState(spec.backoff),
                            limiter=StartLimiter(spec.start_limit), restarts=old.restarts + 1)
        self.notifier.emit(EventType.RESTARTING, self.name, artifact.version, replica=index,
                           reason=f"{reason}; start-first")
        candidate.limiter.allow(time.monotonic())  # type: ignore[union-attr]
        self._spawn(candidate, f"{reason}; start-first")
        ok, why = await self._proves_good(candidate)
        if self.replicas.get(index) is not old:  # a stop or another change came meanwhile
            await self._stop_process(candidate, "superseded")
            return
        if not ok:
            await self._stop_process(candidate, f"new version {why}")
            self._mark_rolled_back(index, artifact, old.launch.artifact, why)
            return
        self.replicas[index] = candidate
        self.spec, self.artifact = spec, artifact
        self.changed()
        await self._stop_process(old, f"replaced by {artifact.version} (start-first)")
        self.persist()

    async def _proves_good(self, replica: Replica) -> tuple[bool, str]:
        """Wait until ``replica`` is ready (or, with no ready check, up for the grace period).
        (False, why) if it exits first or the deadline passes."""
        spec = replica.launch.spec
        handle = replica.handle
        if handle is None:
            return False, f"could not start: {replica.message}"
        deadline = time.monotonic() + (_ready_deadline(spec) if spec.ready else START_FIRST_GRACE)
        while True:
            if spec.ready is not None and replica.ready:
                return True, ""
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if spec.ready is None:
                    return True, ""
                return False, f"never became ready within {_ready_deadline(spec):g}s"
            self.phase_changed.clear()
            waiter = asyncio.ensure_future(self.phase_changed.wait())
            done, _ = await asyncio.wait([waiter, asyncio.shield(handle.exited)], timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if handle.exited.done():
                return False, f"exited during start-up ({handle.exited.result()})"

    @staticmethod
    def _proven(replica: Replica) -> bool:
        """Up now, past probation, and ready if it has a check: a launch worth going back to."""
        handle = replica.handle
        if handle is None or not handle.running or replica.phase not in UP or replica.previous is not None:
            return False
        if replica.launch.spec.ready is not None:
            return replica.ready
        return time.monotonic() - handle.started_monotonic >= PROBATION

    def _arm_probation(self, replica: Replica) -> None:
        """A new version is on probation until ready (or up for :data:`PROBATION` s)."""
        spec = replica.launch.spec
        delay = _ready_deadline(spec) if spec.ready else PROBATION
        replica.probation_timer = asyncio.get_running_loop().call_later(delay, self._probation_over, replica)

    def _probation_over(self, replica: Replica) -> None:
        replica.probation_timer = None
        if replica.previous is None or self.replicas.get(replica.index) is not replica:
            return
        spec = replica.launch.spec
        if spec.ready is not None and not (replica.ready and replica.phase in UP):
            self._rollback(replica, f"never became ready within {_ready_deadline(spec):g}s")
        elif replica.phase in UP:
            replica.previous = None  # proven
        else:
            self._rollback(replica, f"not running {PROBATION:g}s after the update ({replica.phase.value})")

    def _rollback(self, replica: Replica, why: str) -> None:
        """Put the last good launch back in place of ``replica``'s new one."""
        target = replica.previous
        if target is None:
            return
        replica.previous = None
        if replica.probation_timer is not None:
            replica.probation_timer.cancel()
            replica.probation_timer = None
        self._mark_rolled_back(replica.index, replica.launch.artifact, target.artifact, why)

        async def put_back() -> None:
            await self._stop_process(replica, f"rolling back: {why}")
            if self.replicas.get(replica.index) is not replica:
                return
            back = Replica(index=replica.index, launch=target, backoff=BackoffState(self.spec.backoff),
                           limiter=StartLimiter(self.spec.start_limit), restarts=replica.restarts + 1)
            self.replicas[replica.index] = back
            self.artifact = target.artifact
            back.limiter.allow(time.monotonic())  # type: ignore[union-attr]
            self._spawn(back, f"rolled back to {target.artifact.version}")

        self._background(put_back())

    def _mark_rolled_back(self, index: int, bad: Artifact, good: Artifact, why: str) -> None:
        self.build_failed = True  # "the newest version could not be deployed": not retried
        self.failed_revision = bad.revision
        if bad.version != good.version:
            message = f"rolled back {bad.version} -> {good.version}: {why}"
        else:
            message = f"rolled back to the previous config (same version {good.version}): {why}"
        self.deploy_message = message
        self.sink.note(f"{self.name}[{index}] {message}")
        self.notifier.emit(EventType.ROLLED_BACK, self.name, good.version, replica=index, reason=why,
                           bad_version=bad.version)
        self.changed()

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_all(self, reason: str) -> None:
        """Stop and forget every replica, concurrently."""
        self.signal_all()
        await asyncio.gather(*(self.stop_replica(i, reason, remove=True) for i in sorted(self.replicas)))

    def signal_all(self) -> None:
        """Send every running replica its stop signal now (the stops that follow wait)."""
        for replica in self.replicas.values():
            handle = replica.handle
            if handle is not None and handle.running and handle.stop_snapshot is None:
                procs.begin_stop(handle, self.spec.stop_signal, self.reaper)

    def detach(self) -> None:
        """Stop watching without stopping (see Reconciler.detach); the state file is written
        now, with every live replica in it."""
        for task in list(self._tasks):
            task.cancel()
        for replica in self.replicas.values():
            self._cancel_timer(replica)
            if replica.probation_timer is not None:
                replica.probation_timer.cancel()
            for task in list(replica.tasks):
                task.cancel()
            for pump in (replica.handle.pumps if replica.handle is not None else ()):
                pump.detach()
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
        self.build_failed = False
        self.persist()
        for index, replica in list(self.replicas.items()):
            if replica.handle is None:  # stopped, exited, failed, in backoff or pending
                self._cancel_timer(replica)
                for task in list(replica.tasks):
                    task.cancel()
                del self.replicas[index]
        self.changed()

    async def user_restart(self) -> None:
        """A user restart: running replicas are replaced now, the others start on the next
        plan. Neither counts towards the start limit (a fresh limiter per replica)."""
        running = [i for i, r in self.replicas.items() if r.handle is not None and r.handle.running]
        self.release()
        if self.artifact is not None:
            await asyncio.gather(*(self.restart_replica(i, self.spec, self.artifact, "restarted by user")
                                   for i in running))

    # -- processes -------------------------------------------------------------------------

    def _dependencies_met(self, replica: Replica) -> bool:
        """Check ``depends_on``; sets ``replica.message`` to what is still awaited."""
        waiting = []
        for dep in replica.launch.spec.depends_on:
            other = self.lookup(dep.service)
            state = other.reached(dep.condition) if other is not None else None
            if state is None:
                waiting.append(f"{dep.service} ({dep.condition.value}; it cannot get there now)")
            elif not state:
                waiting.append(f"{dep.service} ({dep.condition.value})")
        replica.message = "waiting for " + ", ".join(waiting) if waiting else ""
        return not waiting

    async def _start_after_dependencies(self, replica: Replica, reason: str) -> None:
        """Wait (woken by the dependencies' phase changes, no polling) and then start."""
        while not self._dependencies_met(replica):
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
        if self.replicas.get(replica.index) is replica and replica.phase is Phase.PENDING:
            replica.limiter.allow(time.monotonic())  # type: ignore[union-attr]
            self._spawn(replica, reason)

    def _spawn(self, replica: Replica, reason: str) -> None:
        spec, artifact = replica.launch.spec, replica.launch.artifact
        env = replica_env(self.name, spec.environment, replica.index, user=spec.user)
        env["SUPERVISE_VERSION"] = artifact.version
        if spec.source.kind == "pip":  # the version's venv, as `activate` sets it
            env.update(venv_env(artifact.workdir, env))
        argv = command_argv(spec.command, spec.shell, env)
        cwd = artifact.workdir / spec.cwd
        self._set_phase(replica, Phase.STARTING)
        try:
            fifo, read_fd, child_fd, err_read, err_child = logs.make_fifos(self.state_dir, self.name, replica.index)
        except OSError as exc:
            message = procs.too_many_files() if exc.errno in (errno.EMFILE, errno.ENFILE) else f"cannot make output FIFO: {exc}"
            self._start_failed(replica, artifact.version, message)
            return
        try:
            if spec.user:
                safefs.check_not_writable_by(self.state_dir, spec.user)
            handle = procs.spawn(self.reaper, argv, env=env, cwd=cwd, output=child_fd, errors=err_child, user=spec.user,
                                 cgroup_parent=self.cgroup_parent, cgroup_name=f"{self.name}.{replica.index}.{os.urandom(4).hex()}",
                                 tag=procs.state_tag(self.state_dir))
        except (safefs.UnsafeStateDir, procs.SpawnError) as exc:
            for fd, path in ((read_fd, fifo), (err_read, logs.err_fifo(fifo))):
                os.close(fd)
                _unlink(path)
            self._start_failed(replica, artifact.version, str(exc))
            return
        finally:
            os.close(child_fd)
            os.close(err_child)
        handle.fifo = fifo
        self._pumps(handle, replica.index, read_fd, err_read)
        replica.handle = handle
        replica.start_error = ""
        replica.started_at = time.time()
        replica.ready = spec.ready is None
        replica.message = ""
        self._set_phase(replica, Phase.RUNNING)
        self.sink.note(f"started {self.name}[{replica.index}] pid {handle.pid} version {artifact.version}: {reason}")
        self.notifier.emit(EventType.STARTED, self.name, artifact.version, replica=replica.index, pid=handle.pid, reason=reason)
        self._task(replica, self._watch(replica, handle))
        if spec.ready is not None:
            self._task(replica, self._readiness(replica, handle, env))
        if spec.live is not None:
            self._task(replica, self._liveness(replica, handle, env))

    def _start_failed(self, replica: Replica, version: str, message: str) -> None:
        replica.handle = None
        replica.message = message
        replica.start_error = message
        self.sink.note(f"cannot start {self.name}[{replica.index}]: {message}")
        self.notifier.emit(EventType.START_FAILED, self.name, version, replica=replica.index, error=message)
        self._after_exit(replica, Exit(code=127), uptime=0.0)

    def adopt(self, index: int, handle: procs.ProcessHandle, spec: ServiceSpec, artifact: Artifact,
              started_at: float | None, restarts: int, stale: bool) -> None:
        """Take over a replica that survived a supervisor restart (watched by pidfd, its
        FIFO drained by a new pump). ``stale``: it was started from another config, and the
        next plan replaces it."""
        self.spec = spec
        self.artifact = artifact
        replica = Replica(index=index, launch=Launch(spec, artifact), backoff=BackoffState(spec.backoff),
                          limiter=StartLimiter(spec.start_limit), handle=handle, started_at=started_at,
                          restarts=restarts, ready=spec.ready is None, stale=stale)
        self.replicas[index] = replica
        if handle.fifo is not None:
            self._pumps(handle, index, logs.reopen_fifo(handle.fifo), logs.reopen_fifo(logs.err_fifo(handle.fifo)))
        self.sink.note(f"adopted {self.name}[{index}] pid {handle.pid} version {artifact.version}")
        self.notifier.emit(EventType.ADOPTED, self.name, artifact.version, replica=index, pid=handle.pid)
        self._set_phase(replica, Phase.RUNNING)
        self._task(replica, self._watch(replica, handle))
        env = replica_env(self.name, spec.environment, index, user=spec.user)
        if spec.ready is not None:
            self._task(replica, self._readiness(replica, handle, env))
        if spec.live is not None:
            self._task(replica, self._liveness(replica, handle, env))

    def _pumps(self, handle: procs.ProcessHandle, index: int, out_fd: int | None, err_fd: int | None) -> None:
        """Pumps for a replica's stdout and stderr FIFOs (either fd may be None: not there)."""
        loop = asyncio.get_running_loop()
        assert handle.fifo is not None
        for fd, path, stream in ((out_fd, handle.fifo, "stdout"), (err_fd, logs.err_fifo(handle.fifo), "stderr")):
            if fd is not None:
                pump = logs.Pump(loop, fd, self.sink, on_eof=lambda path=path: _unlink(path), keep_until_written=True,
                                 label=self._label(index), origin=f"{self.name}[{index}] {stream}")
                handle.pumps.append(pump)

    def _label(self, index: int) -> str:
        """Console prefix of a replica: ``NAME`` for a single replica, ``NAME.i`` otherwise."""
        return self.name if self.spec.replicas <= 1 and index == 0 else f"{self.name}.{index}"

    def _task(self, replica: Replica, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        replica.tasks.add(task)
        task.add_done_callback(replica.tasks.discard)

    async def _watch(self, replica: Replica, handle: procs.ProcessHandle) -> None:
        exit = await asyncio.shield(handle.exited)
        if replica.handle is not handle or replica.stopping or self.replicas.get(replica.index) is not replica:
            return
        uptime = time.monotonic() - handle.started_monotonic
        version = replica.launch.artifact.version
        replica.last_exit = exit
        for pump in handle.pumps:  # its last words (an unfinished line too) before the note of its exit
            pump.flush()
        self.sink.note(f"{self.name}[{replica.index}] pid {handle.pid} exited: {exit}")
        self.notifier.emit(EventType.EXITED, self.name, version, replica=replica.index, pid=handle.pid, exit=str(exit),
                           code=exit.code, signal=exit.signal, uptime=round(uptime, 3))
        # Whatever the leader left behind goes too (systemd KillMode=control-group): its group,
        # its cgroup, and orphans of it that came back to us.
        if procs.group_alive(handle.pgid) or procs.members(handle, self.reaper.waiters):
            replica.stopping = True
            await procs.stop(handle, self.spec.stop_signal, self.spec.stop_timeout, self.reaper)
            replica.stopping = False
        else:
            self.reaper.untrack_group(handle.pgid)
            if handle.cgroup is not None:
                procs.cgroups.remove(handle.cgroup)
        if replica.handle is not handle:
            return
        replica.handle = None
        self._after_exit(replica, exit, uptime)

    def _after_exit(self, replica: Replica, exit: Exit, uptime: float) -> None:
        policy = self.spec.restart
        version = replica.launch.artifact.version
        # An adopted process is not our child: its exit status cannot be known. For
        # on-failure, running a one-shot job (a migration) twice is the worse mistake.
        unknown = exit.code is None and exit.signal is None
        if policy is RestartPolicy.NEVER or (policy is RestartPolicy.ON_FAILURE and (exit.success or unknown)):
            self._set_phase(replica, Phase.EXITED)
            return
        if replica.previous is not None:
            replica.probation_crashes += 1
            if replica.probation_crashes >= ROLLBACK_CRASHES:
                self._rollback(replica, f"crashed {replica.probation_crashes} times ({exit})")
                return
        assert replica.backoff is not None and replica.limiter is not None
        delay = replica.backoff.next_delay(uptime)
        if not replica.limiter.allow(time.monotonic() + delay):
            limit = self.spec.start_limit
            replica.message = f"start limit hit: {limit.burst} starts in {limit.interval:g}s"
            self._set_phase(replica, Phase.FAILED)
            self.sink.note(f"{self.name}[{replica.index}] failed: {replica.message}")
            self.notifier.emit(EventType.FAILED, self.name, version, replica=replica.index, reason=replica.message)
            return
        replica.restarts += 1
        cause = f": {replica.start_error}" if replica.start_error else ""
        replica.message = f"restart in {delay:.2f}s after {exit}{cause}"
        self._set_phase(replica, Phase.BACKOFF)
        self.notifier.emit(EventType.BACKOFF, self.name, version, replica=replica.index, delay=round(delay, 3),
                           exit=str(exit))
        loop = asyncio.get_running_loop()
        replica.timer = loop.call_later(delay, self._restart_after_backoff, replica)

    def _restart_after_backoff(self, replica: Replica) -> None:
        replica.timer = None
        if self.replicas.get(replica.index) is not replica or replica.phase is not Phase.BACKOFF:
            return
        self._spawn(replica, f"restart {replica.restarts} after {replica.last_exit}")

    async def _readiness(self, replica: Replica, handle: procs.ProcessHandle, env: dict[str, str]) -> None:
        check = replica.launch.spec.ready
        assert check is not None
        await asyncio.sleep(float(check["start_period"]))  # type: ignore[arg-type]
        while handle.running and replica.handle is handle:
            if await health.probe(check, env, str(replica.launch.artifact.workdir / replica.launch.spec.cwd),
                                  user=replica.launch.spec.user):
                if replica.handle is handle and handle.running:
                    replica.ready = True  # probation still runs its course: ready, then crashing, is bad
                    self._set_phase(replica, Phase.READY)
                    self.notifier.emit(EventType.READY, self.name, replica.launch.artifact.version,
                                       replica=replica.index, pid=handle.pid)
                return
            await asyncio.sleep(float(check["interval"]))  # type: ignore[arg-type]

    async def _liveness(self, replica: Replica, handle: procs.ProcessHandle, env: dict[str, str]) -> None:
        check = replica.launch.spec.live
        assert check is not None
        await asyncio.sleep(float(check["start_period"]))  # type: ignore[arg-type]
        failures = 0
        while handle.running and replica.handle is handle:
            await asyncio.sleep(float(check["interval"]))  # type: ignore[arg-type]
            if await health.probe(check, env, str(replica.launch.artifact.workdir / replica.launch.spec.cwd),
                                  user=replica.launch.spec.user):
                failures = 0
                continue
            failures += 1
            if failures >= int(check["retries"]):  # type: ignore[arg-type]
                reason = f"liveness check failed {failures} times"
                self.sink.note(f"{self.name}[{replica.index}] {reason}; restarting")
                self.notifier.emit(EventType.RESTARTING, self.name, replica.launch.artifact.version,
                                   replica=replica.index, reason=reason)
                # the watcher sees the exit and restarts it as for a crash
                await procs.stop(handle, self.spec.stop_signal, self.spec.stop_timeout, self.reaper)
                return

    # -- helpers ---------------------------------------------------------------------------

    def _set_phase(self, replica: Replica, phase: Phase) -> None:
        if replica.phase is phase:
            return
        replica.phase = phase
        self.phase_changed.set()
        self.changed()
        self.persist()

    def persist(self) -> None:
        """Write this service's state file soon (coalesced: once per loop iteration)."""
        if self._persist_pending:
            return
        self._persist_pending = True
        asyncio.get_running_loop().call_soon(self._persist_now)

    def _persist_now(self) -> None:
        self._persist_pending = False
        replicas = {}
        for index, replica in self.replicas.items():
            handle = replica.handle
            if handle is None or not handle.running:
                continue
            artifact = replica.launch.artifact
            replicas[str(index)] = {
                "pid": handle.pid, "pgid": handle.pgid, "create_time": handle.create_time,
                "version": artifact.version, "revision": artifact.revision, "workdir": str(artifact.workdir),
                "fifo": str(handle.fifo) if handle.fifo else None, "started_at": replica.started_at,
                "restarts": replica.restarts, "cgroup": str(handle.cgroup) if handle.cgroup else None,
                "fingerprint": state.fingerprint(replica.launch.spec), "instance": handle.instance,
            }
        record = {
            "service": self.name, "held": self.held, "replicas": replicas,
            "command": list(self.spec.command), "stop_signal": self.spec.stop_signal,
            "stop_timeout": self.spec.stop_timeout,
        }
        if record == self._persisted:  # most phase changes (starting -> running) change nothing here
            return
        try:
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

    @staticmethod
    def _cancel_timer(replica: Replica) -> None:
        if replica.timer is not None:
            replica.timer.cancel()
            replica.timer = None


async def _drain(handle: procs.ProcessHandle, timeout: float = 2.0) -> None:
    """Wait until the output of a stopped process is all in its log (the pump's end of file)."""
    if not handle.pumps:
        return
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.gather(*(pump.done for pump in handle.pumps))), timeout)
    except asyncio.TimeoutError:
        for pump in handle.pumps:
            pump.close()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
