"""observe -> plan -> execute. The reconciler knows nothing about why it was woken.

Level-triggered, like controller-runtime: every wake-up re-reads the desired state (the file)
and the observed state (the controllers), computes :func:`~supervisor.decide.plan.plan` and applies
it. Wake-ups that arrive while a pass runs are coalesced into one more pass.

Execution order of a plan: removed services stop (dependents first); every fetch and build
runs concurrently (never touching running replicas); then process actions run one dependency
level at a time, the services of a level concurrently.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, cast

from .execute import cgroups, logs, procs, versions
from .decide import errors, graph
from .observe import safefs, state
from .decide.backoff import next_delay
from .clock import SYSTEM, Clock
from .execute.builds import Artifact, PrepareError, Preparer, source_root
from .observe.events import EventType, Notifier
from .desired.config import NAME_RE
from .desired.model import Backoff, Desired, Observed, Phase, ServiceSpec, SourceSpec, Version
from .decide.plan import ActionKind, Plan, _same_revision, plan
from .execute.executors import Executor, ExecutorUnavailable, Running
from .execute.executors.local import LocalExecutor
from .execute.service import RecordWriter, ServiceController, replica_label

log = logging.getLogger("supervise")

#: Builds and fetches that may run at once (the machines we target have few cores).
PREPARE_CONCURRENCY = 4
#: The actions that need a new artifact (the executor's prepare).
PREPARE_KINDS = (ActionKind.FETCH, ActionKind.SNAPSHOT, ActionKind.PULL, ActionKind.BUILD)
#: Seconds a pass waits for a git fetch before it goes on without that service.
FETCH_WAIT = 2.0


def prepare_key(spec: ServiceSpec) -> str:
    """What a prepare (fetch and build) of ``spec`` is made of: a change of it makes one under
    way stale."""
    return repr((spec.source, spec.build, spec.image_build, spec.environment))


def dependency_levels(specs: Mapping[str, ServiceSpec]) -> list[list[str]]:
    """Services grouped by depth: level 0 depends on nothing, level n on levels < n
    (:func:`supervisor.decide.graph.levels`)."""
    return graph.levels(specs)


class Reconciler:
    """Converges the local machine to a Desired state and keeps it there."""

    def __init__(self, desired: Desired, notifier: Notifier | None = None,
                 on_change: Callable[[], None] | None = None, console: logs.Console | None = None,
                 clock: Clock = SYSTEM):
        self.desired = desired
        self.clock = clock
        self.settings = desired.settings
        self.state_dir = desired.settings.state_dir
        self.notifier = notifier or Notifier()
        self.on_change = on_change or (lambda: None)
        self.controllers: dict[str, ServiceController] = {}
        #: the controllers' state records, written after each burst of changes
        self.records = RecordWriter()
        self.logs = logs.LogRegistry(self.state_dir, console)
        self.revisions: dict[str, str] = {}
        # services whose source is unreachable and already reported: one fetch-failed event per
        # outage, whether the poller or a prepare saw it first (cleared when a fetch succeeds)
        self.fetch_outages: set[str] = set()
        #: The executors by runtime name (the seam: see supervisor.execute.executors).
        #: "container" is made on first use (the Docker SDK is not imported for a file without one).
        self.executors: dict[str, Executor] = {"local": LocalExecutor(self.state_dir, self.logs, self.settings.keep_versions)}
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.stopping = False
        #: Plans applied so far; ``on_change`` is called after each (0: not converged once yet).
        self.applied = 0
        #: Backoff of the retries of transient failures (fetches), seconds.
        self.retry = Backoff(initial=1.0, max=60.0)
        self._requeued: dict[str, tuple[int, asyncio.TimerHandle | None]] = {}
        self._stray: set[asyncio.Task] = set()  # stops of adopted replicas nobody owns

        #: Git fetches (and the builds after them) run as tasks of their own, not held by a
        #: pass (the daemon, whose run loop picks their results up; see _prepare_in_background).
        self.background_fetches = False
        #: Replicas that hit their start limit under the previous supervisor stay failed
        #: (the state record); False for a run once (`run --exit-when-done`): a fresh run.
        self.keep_failed = True
        #: One-shot jobs that finished under the previous supervisor stay exited (the state
        #: record's ``completed``); False for a run once (`run --exit-when-done`): a fresh run.
        self.keep_completed = True
        #: Asked before a replica starts by itself (its dependencies are met, its backoff is
        #: over): False once the supervisor is ending (a run once decided, a shutdown).
        self.ending: Callable[[], bool] = lambda: False
        self.pending: dict[str, tuple[str, asyncio.Task, str | None]] = {}
        #: Prepares a pass awaits itself (no background), by service: (prepare key, task).
        self.inflight: dict[str, tuple[str, asyncio.Task]] = {}

    async def start(self) -> None:
        """Make (or check) the state dir, then open every executor (for local processes: the
        reaper, a cgroup)."""
        self.recreate_state_dir()
        for executor in self.executors.values():
            await executor.open()

    @property
    def reaper(self) -> procs.Reaper | None:
        """The local executor's reaper (SIGCHLD)."""
        return self.local.reaper

    @property
    def cgroup_parent(self) -> Path | None:
        """The local executor's cgroup, when the machine allows one."""
        return self.local.cgroup_parent

    @property
    def local(self) -> LocalExecutor:
        """The local-process executor."""
        return cast(LocalExecutor, self.executors["local"])

    @property
    def preparer(self) -> Preparer | None:
        """The local executor's builder (watched folders look at its builds)."""
        return self.local.preparer

    def executor_for(self, spec: ServiceSpec) -> Executor:
        """The executor named by the service's ``runtime`` key, else ``[supervise] runtime``.
        Raises :class:`ExecutorUnavailable` for a name this version cannot run (the config
        check refuses those first)."""
        return self.executor_named(spec.runtime or self.settings.runtime)

    def executor_named(self, name: str) -> Executor:
        """The executor for runtime ``name``, made on first use. Raises ExecutorUnavailable."""
        executor = self.executors.get(name)
        if executor is None and name == "container":
            from .execute.executors.containers import Containers

            executor = self.executors[name] = Containers(self.state_dir, self.logs, self.settings.keep_versions,
                                                         self.settings.docker_host)
        if executor is None and name == "kubernetes":
            from .execute.executors.kubernetes import KubeExecutor

            executor = self.executors[name] = KubeExecutor(self.state_dir, self.logs, self.notifier,
                                                           lambda: self.desired, self.clock.monotonic)
        if executor is None:
            raise ExecutorUnavailable(f'runtime "{name}" is not available in this version')
        return executor

    def recreate_state_dir(self) -> None:
        """Make (or check) STATE_DIR and its folders: each ours and 0700 (safefs). After the
        folder was removed under us, the state records are written again from memory.
        Raises safefs.UnsafeStateDir."""
        safefs.ensure_dir(self.state_dir)
        for folder in (logs.log_dir(self.state_dir), logs.run_dir(self.state_dir), state.state_dir_of(self.state_dir)):
            safefs.ensure_dir(folder)
        for controller in self.controllers.values():
            controller._persisted = None
            controller.persist()

    def _local_handles(self) -> list[procs.ProcessHandle]:
        """The process handles of the replicas the local executor runs."""
        return [cast(procs.ProcessHandle, r.handle) for c in self.controllers.values() if c.executor is self.local
                for r in c.replicas.values() if r.handle is not None]

    def known_instances(self) -> set[str]:
        """The instance marks of every process we own now (replicas and builds)."""
        known = {h.instance for h in self._local_handles() if h.instance}
        if self.preparer is not None:
            known.update(h.instance for h in self.preparer.builds.values() if h.instance)
        return known

    async def sweep_unowned(self) -> int:
        """Stop every process marked as started from this state dir (its instance mark, kept by
        the kernel in its environment, or its cgroup under ours) that no record let us adopt:
        replicas a supervisor killed during start-up spawned before writing their record, and
        their children. They would otherwise run beside the fresh replicas (duplicates) and
        outlive a clean stop (orphans). Returns how many processes were stopped."""
        tag = procs.state_tag(self.state_dir)
        known = self.known_instances()
        handles = self._local_handles()
        known_cgroups = {h.cgroup for h in handles if h.cgroup is not None}
        in_use = {path.name for h in handles if h.fifo is not None for path in (h.fifo, logs.err_fifo(h.fifo))}
        run = logs.run_dir(self.state_dir)
        try:
            for entry in os.listdir(run):  # FIFOs of replicas that were never recorded or are gone
                if entry.endswith(".fifo") and entry not in in_use:
                    safefs.unlink_in(run, entry)
        except OSError:
            pass
        victims = await asyncio.to_thread(procs.unowned, tag, known)
        groups = []
        if self.cgroup_parent is not None:
            groups = [g for g in cgroups.children(self.cgroup_parent) if g not in known_cgroups and cgroups.populated(g)]
        if not victims and not groups:
            return 0
        pids = sorted({p.pid for p in victims} | {pid for g in groups for pid in cgroups.pids(g)})
        log.warning("stopping %d process%s that a previous supervisor started but never recorded "
                    "(it was killed during start-up): %s", len(pids), "es" if len(pids) != 1 else "",
                    " ".join(map(str, pids)))
        await procs.stop_unowned(victims, groups)
        if self.cgroup_parent is not None:
            cgroups.remove_empty_children(self.cgroup_parent)
        return len(pids)

    async def adopt(self, desired: Desired, only: set[str] | None = None) -> int:
        """Take over replicas that a previous supervisor on this state dir left running.

        Each is verified (pid + create_time) before it is trusted. A replica made from another
        config is adopted as *stale* and replaced by the first plan; one of a service no longer
        in the file is adopted to be stopped; a service whose record cannot be read is held
        (:meth:`_hold_unreadable`). ``only``: look at these services alone.
        Returns how many were adopted.
        """
        await self.local.stop_leftover_builds()
        unreadable: dict[str, str] = {}
        records = state.load_all(self.state_dir, unreadable)
        for name, why in unreadable.items():
            spec = desired.services.get(name)
            if spec is not None and (only is None or name in only) and name not in self.controllers:
                self._hold_unreadable(spec, why)
        adopted = 0
        for name, record in records.items():
            if NAME_RE.match(name) and (only is None or name in only):
                adopted += self._adopt_service(name, record, desired)
        if only is None:
            await self.sweep_unowned()
            for spec in desired.services.values():  # a container service: its engine is looked at too
                try:
                    self.executor_for(spec)
                except ExecutorUnavailable:
                    pass
            for executor in list(self.executors.values()):
                await executor.sweep_unrecorded()
        return adopted

    def _hold_unreadable(self, spec: ServiceSpec, why: str) -> None:
        """Its replicas may still run: starting new ones could duplicate them. Held until a
        user looks (``supervise start NAME``), as after a user stop."""
        message = f"state file unreadable, not started (a replica may still run): {why}"
        log.error("%s: %s; fix or remove it, then: supervise start %s", spec.name, message, spec.name)
        self.notifier.emit(EventType.START_FAILED, spec.name, None, error=message)
        controller = self._controller(spec)
        controller.held = True
        controller.deploy_message = message
        self.controllers[spec.name] = controller

    def _adopt_service(self, name: str, record: state.ServiceRecord, desired: Desired) -> int:
        """Adopt the live replicas of one state record; returns how many."""
        wanted = desired.services.get(name)
        sink = self.logs.sink(name, wanted.log) if wanted is not None else self.logs.sink(name)
        alive: list[tuple[int, state.ReplicaRecord, Running, Executor]] = []
        for index, item in sorted(record.replicas.items()):
            try:
                executor = self.executor_named(item.runtime)  # the executor that started it
            except ExecutorUnavailable:
                log.warning("%s: replica %d ran on runtime %r, which is not available here; not adopted",
                            name, index, item.runtime)
                continue
            handle = executor.adopt(item, sink, replica_label(name, wanted.replicas if wanted else 0, index))
            if handle is None:
                executor.forget(item)
            else:
                alive.append((index, item, handle, executor))
        spec = wanted
        if spec is None and alive:  # removed from the file: adopted to be stopped
            runtime = alive[0][1].runtime
            spec = ServiceSpec(name=name, command=record.command or ("?",),
                               source=SourceSpec(kind="path", path=alive[0][1].workdir, mode="in-place"),
                               stop_signal=record.stop_signal, stop_timeout=record.stop_timeout, replicas=0,
                               runtime=None if runtime == "local" else runtime)
        failed = bool(record.failed) and self.keep_failed
        completed = bool(record.completed) and self.keep_completed and wanted is not None
        if spec is None or (not alive and not record.held and not failed and not completed):
            return 0
        controller = self.controllers.get(name) or self._controller(spec)
        self.controllers[name] = controller
        controller.held = record.held
        current = state.fingerprint(spec)
        for index, item, handle, executor in alive:
            if executor is not controller.executor:  # the runtime key changed: replaced by the plan
                log.info("%s: replica %d runs on %s, the file now says %s: stopping it",
                         name, index, executor.name, controller.executor.name)
                self.spawn_stop(executor, handle, record)
                continue
            artifact = Artifact(workdir=item.workdir, version=item.version,
                                revision=item.revision or Version.parse(item.version).revision)
            controller.restore_good(record)
            stale: bool | str = wanted is None or item.fingerprint != current
            lost = executor.must_replace(handle)
            if lost:
                log.warning("%s[%d]: %s: adopted to be restarted at once", name, index, lost)
                stale = f"adopted, but {lost}"  # the first plan restarts it, with this reason
            controller.adopt(index, handle, spec, artifact, item.started_at, item.restarts, stale)
        if wanted is not None and record.rolled_back is not None:
            controller.restore_rolled_back(record)
        if wanted is not None and failed:
            controller.restore_failed(record)
        if completed:
            controller.restore_completed(record)
        return len(alive)

    def spawn_stop(self, executor: Executor, handle: Running, record: state.ServiceRecord) -> None:
        """Stop an adopted replica that no controller will own (its runtime changed)."""
        task = asyncio.get_running_loop().create_task(executor.stop(handle, record.stop_signal, record.stop_timeout))
        self._stray.add(task)
        task.add_done_callback(self._stray.discard)

    def observe(self) -> Observed:
        """The observed state: every controller's view of its replicas."""
        return Observed({name: c.observe() for name, c in self.controllers.items()})

    def plan(self, desired: Desired | None = None) -> Plan:
        """The plan for ``desired`` (default: the current one) against what runs now; no effect."""
        return plan(desired or self.desired, self.observe(), self.revisions)

    async def apply(self, desired: Desired) -> Plan:
        """Apply one plan for ``desired``; returns it. Serialised: one pass at a time."""
        self.cancel_stale_prepares(desired)  # a pass still building a removed service ends now
        async with self.lock:
            if self.stopping:
                return Plan()
            self.desired = desired
            the_plan = self.plan(desired)
            for action in the_plan:
                log.info("plan: %s", action)
            await self._execute(desired, the_plan)
            self.records.flush()  # the pass was the burst: what it started is recorded as it ends
            self.applied += 1
            self.on_change()
            return the_plan

    async def _execute(self, desired: Desired, the_plan: Plan) -> None:
        specs = desired.services
        # 1. removed services, dependents first
        removed = {n: self.controllers[n].spec for n in the_plan.services() if n not in specs and n in self.controllers}
        for level in reversed(dependency_levels(removed)):
            await asyncio.gather(*(self._remove(name) for name in level))
        # 2. fetch and build, concurrently, beside whatever runs (at most PREPARE_CONCURRENCY at once)
        to_prepare = {n for n in the_plan.services() if n in specs and any(
            a.kind in PREPARE_KINDS for a in the_plan.for_service(n))}  # a set: asked once per service
        for name in the_plan.services():
            if name in specs and name not in self.controllers:
                self.controllers[name] = self._controller(specs[name])
                self.notifier.emit(EventType.CREATE, name, None, source=specs[name].source.describe())
            elif name in specs and the_plan.for_service(name):
                running = self.controllers[name].artifact
                self.notifier.emit(EventType.UPDATE, name, running.version if running else None,
                                   reason="; ".join(sorted({a.reason for a in the_plan.for_service(name)})))
        self._expect_starts(specs, the_plan)
        semaphore = asyncio.Semaphore(PREPARE_CONCURRENCY)
        artifacts: dict[str, Artifact | None] = {}

        tasks: dict[str, asyncio.Future[None]] = {}
        prepares: dict[str, asyncio.Future[None]] = {}

        async def prepare(name: str) -> None:
            async with semaphore:
                artifacts[name] = await self._prepare(specs[name])

        async def deploy(name: str) -> None:
            # 3. a service's processes as soon as its own artifact and its dependencies' actions
            # are done: one slow build holds only the services that depend on it
            if name in prepares:
                await prepares[name]
            await asyncio.gather(*(tasks[d.service] for d in specs[name].depends_on if d.service in tasks))
            if the_plan.for_service(name):
                await self._guarded(specs[name], the_plan, artifacts,
                                    lambda: self._stop_dependents(name, specs, the_plan, artifacts, prepares))

        for name in to_prepare:
            prepares[name] = asyncio.ensure_future(prepare(name))
        for level in dependency_levels(specs):
            for name in level:
                if name in to_prepare or the_plan.for_service(name):
                    tasks[name] = asyncio.ensure_future(deploy(name))
        try:
            await asyncio.gather(*tasks.values())
        finally:
            for task in [*tasks.values(), *prepares.values()]:
                task.cancel()
        self.on_change()

    def _expect_starts(self, specs: Mapping[str, ServiceSpec], the_plan: Plan) -> None:
        """Tell each executor which replicas the plan starts, so that it can make what they
        need ahead (the local one's FIFOs and log files, beside the event loop)."""
        by_executor: dict[int, tuple[Executor, list[str]]] = {}
        for action in the_plan.actions:
            spec = specs.get(action.service)
            if spec is None or action.kind not in (ActionKind.START, ActionKind.RESTART):
                continue
            try:
                executor = self.executor_for(spec)
            except ExecutorUnavailable:
                continue
            by_executor.setdefault(id(executor), (executor, []))[1].append(action.service)
        for executor, names in by_executor.values():
            executor.expect_starts(names)

    async def _stop_dependents(self, name: str, specs: Mapping[str, ServiceSpec], the_plan: Plan,
                               artifacts: Mapping[str, Artifact | None],
                               prepares: Mapping[str, asyncio.Future[None]]) -> None:
        """Before ``name``'s replicas are recreated (stopped, then started): stop first the
        replicas of the services that restart with it because they asked to (``depends_on``
        ... ``restart = true``, compose's rule; and theirs, transitively), dependents first, as
        at shutdown. Their own restart in this plan then starts them again, after ``name``
        and once their ``depends_on`` conditions hold. A dependent whose new version failed
        to build does not restart, so it is not stopped either. With ``update =
        "start-first"`` ``name`` never goes down: nothing is stopped here."""
        if specs[name].update == "start-first":
            return
        cascade: set[str] = set()
        frontier = {name}
        while frontier:
            found = {n for n, s in specs.items() if n != name and n not in cascade
                     and any(d.restart and d.service in frontier for d in s.depends_on)}
            cascade |= found
            frontier = found
        going: dict[str, list[int]] = {}
        for dependent in cascade:
            controller = self.controllers.get(dependent)
            actions = the_plan.for_service(dependent)
            indices = [a.replica for a in actions if a.kind is ActionKind.RESTART and a.replica is not None]
            if controller is None or not indices:
                continue
            if any(a.kind in PREPARE_KINDS for a in actions):
                if dependent in prepares:
                    await asyncio.wait([prepares[dependent]])  # (never raises; its own task reports)
                if artifacts.get(dependent) is None:
                    continue  # its build failed: it keeps running, as it would without us
            going[dependent] = indices
        reason = f"dependency {name} restarts"
        for level in reversed(dependency_levels({n: specs[n] for n in going})):
            await asyncio.gather(*(self.controllers[n].stop_for_dependency(going[n], reason) for n in level))

    def may_start(self) -> bool:
        """Whether a replica may still start by itself: not once the supervisor is ending."""
        return not self.stopping and not self.ending()

    def _controller(self, spec: ServiceSpec) -> ServiceController:
        return ServiceController(spec, state_dir=self.state_dir, executor=self.executor_for(spec),
                                 notifier=self.notifier, lookup=self.controllers.get, changed=self.on_change,
                                 sink=self.logs.sink(spec.name, spec.log), clock=self.clock,
                                 records=self.records, may_start=self.may_start)

    async def _prepare_in_background(self, spec: ServiceSpec, protect: set[str]) -> Artifact | None:
        """For a source its executor may wait on for long (a git fetch, an image pull:
        :meth:`Executor.prepares_in_background`): run the fetch and build as a task of its own, and wait for it at
        most :data:`FETCH_WAIT` s (not at all when an earlier pass already waited): a remote
        that never answers then holds this one service in ``fetching``, never the whole pass
        (other services' starts, restarts and reloads). When the task ends, another pass is
        asked for, and picks its result up here. Returns None while it runs."""
        name = spec.name
        key = prepare_key(spec)
        revision = self.revisions.get(name)
        pending = self.pending.get(name)
        # A fetch started with no revision known resolves the ref itself: the first revision a
        # poller reports meanwhile does not make it stale (restarting it would build twice).
        if pending is not None and (pending[0] != key or (pending[2] is not None and pending[2] != revision)):
            self.cancel_prepare(name)
            pending = None
        waited = pending is not None
        if pending is None:
            task = asyncio.get_running_loop().create_task(self.controllers[name].executor.prepare(spec, protect))
            task.add_done_callback(lambda _t: self.request())
            pending = self.pending[name] = (key, task, revision)
        task = pending[1]
        if not task.done() and not waited:
            await asyncio.wait([task], timeout=FETCH_WAIT)
        if not task.done():
            controller = self.controllers[name]
            building = self.preparer is not None and name in self.preparer.builds
            controller.deploy_message = (f"waiting for its build of {spec.source.describe()}" if building else
                                         f"waiting for {spec.source.describe()} (the remote is slow to answer)")
            return None
        self.pending.pop(name, None)
        return task.result()  # raises PrepareError as the plain call would (CancelledError: cancel_prepare)

    async def _prepare(self, spec: ServiceSpec) -> Artifact | None:
        controller = self.controllers[spec.name]
        # what runs, the rollback target (the newest good version) and a pinned one stay on disk
        protect = {r.launch.artifact.version for r in controller.replicas.values()}
        target = controller.good_launch
        protect |= {v for v in (controller.pinned, target.artifact.version if target else None) if v}
        controller.preparing = Phase.BUILDING if spec.build else Phase.FETCHING
        controller.preparing_since = self.clock.time()
        controller.changed()
        known = self.revisions.get(spec.name)
        try:
            if self.background_fetches and controller.executor.prepares_in_background(spec):
                artifact = await self._prepare_in_background(spec, protect)
                if artifact is None:
                    return None
                controller.deploy_message = ""
            else:
                task = asyncio.get_running_loop().create_task(controller.executor.prepare(spec, protect))
                self.inflight[spec.name] = (prepare_key(spec), task)
                try:
                    artifact = await task
                finally:
                    if self.inflight.get(spec.name, (None, None))[1] is task:
                        del self.inflight[spec.name]
        except asyncio.CancelledError:
            controller.preparing = None
            current = asyncio.current_task()
            if current is not None and not current.cancelling():
                return None  # not this pass, its prepare was cancelled: the service was removed or changed
            raise
        except PrepareError as exc:
            controller.preparing = None
            kind = EventType.FETCH_FAILED if exc.stage == "fetch" else EventType.BUILD_FAILED
            log.error("%s: %s%s", spec.name, exc, "".join(f"\n    {line}" for line in exc.tail))
            if kind is not EventType.FETCH_FAILED or spec.name not in self.fetch_outages:
                self.notifier.emit(kind, spec.name, exc.version, error=str(exc), tail=exc.tail)
            if kind is EventType.FETCH_FAILED:
                self.fetch_outages.add(spec.name)
            tried = Version.parse(exc.version).revision if exc.version else self.revisions.get(spec.name)
            said = str(exc)  # "build failed (exit 1)" already says it: never "build failed: build failed"
            message = said if " failed" in said.split(":", 1)[0] else f"{exc.stage} failed: {said}"
            controller.mark_build_failed(spec, tried, message, exc.stage)
            if errors.transient(errors.of_stage(exc.stage)):
                self._requeue(spec.name)
            return None
        self._cancel_requeue(spec.name)
        self.fetch_outages.discard(spec.name)
        controller.preparing = None
        previous = controller.artifact
        if previous is not None and previous.revision != artifact.revision:
            if not await controller.executor.fast_forward(spec, previous.revision, artifact.revision):
                log.warning("%s: %s was force-pushed (%s is not an ancestor of %s); deploying it",
                            spec.name, spec.source.ref, previous.revision[:12], artifact.revision[:12])
                self.notifier.emit(EventType.FORCE_PUSHED, spec.name, artifact.version, ref=spec.source.ref,
                                   previous=previous.revision, revision=artifact.revision)
        if spec.build:
            self.notifier.emit(EventType.BUILT, spec.name, artifact.version)
        if self.revisions.get(spec.name) == known:
            self.revisions[spec.name] = artifact.revision
        # else a trigger saw a newer revision while this one was prepared (an edit during a
        # snapshot's build): it stays the newest known, and the next pass deploys it
        return artifact

    def _requeue(self, name: str) -> None:
        """A transient failure (a fetch): try again after a backoff (``retry`` doubling from
        its initial delay up to its max, with jitter), as controller-runtime requeues a
        reconcile that failed; what runs keeps running meanwhile."""
        attempt, timer = self._requeued.get(name, (0, None))
        if timer is not None:
            timer.cancel()
        attempt, delay = next_delay(self.retry, max(attempt, 1), 0.0, 0.0, random.random())
        log.info("%s: retrying in %.1fs", name, delay)
        timer = asyncio.get_running_loop().call_later(delay, self._retry_now, name)
        self._requeued[name] = (attempt, timer)

    def _retry_now(self, name: str) -> None:
        controller = self.controllers.get(name)
        if controller is not None and controller.build_failed and not self.stopping:
            controller.build_failed = False  # the plan tries the same revision again
            controller.failed_revision = None
            self.request()

    def _cancel_requeue(self, name: str) -> None:
        _attempt, timer = self._requeued.pop(name, (0, None))
        if timer is not None:
            timer.cancel()

    async def _guarded(self, spec: ServiceSpec, the_plan: Plan, artifacts: Mapping[str, Artifact | None],
                       before_restart: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run one service's actions; a bug there is logged and leaves the others alone."""
        try:
            await self._run_actions(spec, the_plan, artifacts, before_restart)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: applying the plan failed; the other services are not affected", spec.name)

    async def _run_actions(self, spec: ServiceSpec, the_plan: Plan, artifacts: Mapping[str, Artifact | None],
                           before_restart: Callable[[], Awaitable[None]] | None = None) -> None:
        """Apply ``spec``'s actions of ``the_plan``; ``before_restart`` runs once its new
        artifact is in hand, before any replica restarts (dependents stop first)."""
        name = spec.name
        controller = self.controllers[name]
        actions = the_plan.for_service(name)
        needs_artifact = any(a.kind in PREPARE_KINDS for a in actions)
        if needs_artifact:
            artifact = artifacts.get(name)
            if artifact is None:
                return  # fetch or build failed: what runs keeps running
        else:
            artifact = controller.artifact
            known = self.revisions.get(name)
            if artifact is not None and known is not None and not _same_revision(known, artifact.revision):
                # A watched folder without a build has no build step to plan, but a new
                # revision (its content hash, from an edit) still needs a new artifact: else
                # the replicas restart on the old version and every later pass restarts again.
                artifact = None
            elif artifact is not None and (controller.spec.source != spec.source or controller.spec.build != spec.build):
                artifact = None  # a folder run in place moved (or its build changed): prepare it anew
        for action in actions:
            if action.kind is ActionKind.UPDATE:
                controller.apply_settings(spec)
            elif action.kind is ActionKind.STOP and action.replica is not None:
                await controller.stop_replica(action.replica, action.reason, remove=True)
        starts = [a for a in actions if a.kind in (ActionKind.START, ActionKind.RESTART)]
        if not starts and controller.spec != spec and controller.spec.changed_fields(spec) == ("replicas",):
            # scaled down (to 0 too), nothing else changed: the stops above were the whole change,
            # and the controller must know the new count (status: `replicas = 0` is as asked)
            controller.spec = spec
        if starts and artifact is None:
            artifact = await self._prepare(spec)
            if artifact is None:
                return
        if before_restart is not None and any(a.kind is ActionKind.RESTART for a in starts):
            await before_restart()
        await asyncio.gather(*(
            (controller.restart_replica if a.kind is ActionKind.RESTART else controller.start_replica)(
                a.replica, spec, artifact, a.reason)  # type: ignore[arg-type]
            for a in starts))

    # -- versions on disk and a user's rollback (supervise versions / rollback) -------------

    def versions(self, name: str) -> dict[str, Any]:
        """What ``supervise versions NAME`` shows: the rule, then a row per version (see
        :func:`supervisor.execute.versions.listing`). Raises KeyError for an unknown service."""
        controller = self.controllers[name]
        spec = controller.spec
        observed = controller.observe()
        running = {i: r.launch.artifact.version for i, r in controller.replicas.items() if r.handle is not None}
        rows = versions.listing(self.state_dir, spec, running, [g.artifact for g in controller.good],
                                controller.pinned, self.revisions.get(name))
        return {"service": name, "source": spec.source.describe(), "in_place": observed.in_place,
                "good_rule": observed.good_rule, "rollback_to": observed.rollback_to, "pinned": controller.pinned,
                "keep_versions": self.settings.keep_versions, "versions": rows}

    async def rollback(self, name: str, wanted: str | None) -> str:
        """Run ``wanted`` (a version or a unique prefix; None: the newest good version other
        than what runs) on every replica of ``name`` and pin it: the plan leaves it alone until
        the file changes this service or its source shows a newer revision (then that deploys
        as usual). Returns the version now pinned. Raises KeyError (unknown service) or
        :class:`~supervisor.execute.versions.VersionError` (nothing to roll back to, in place, ...)."""
        async with self.lock:
            controller = self.controllers[name]
            spec = controller.spec
            if spec.source.in_place:
                raise versions.VersionError(f'{name} runs its folder in place (mode = "in-place"): there is no '
                                            "earlier version on disk to roll back to")
            if controller.executor is not self.local:
                raise versions.VersionError(f"{name}: rollback of {controller.executor.name} services is not "
                                            "supported yet")
            if controller.held:
                raise versions.VersionError(f"{name} is stopped by a user: `supervise start {name}` first")
            current = controller.artifact
            good = [g.artifact for g in controller.good]
            artifact = await asyncio.to_thread(versions.choose, self.state_dir, spec, wanted,
                                               current.version if current else None, good)
            newest = self.revisions.get(name) or (current.revision if current else None)
            reason = f"rolled back by user to {artifact.version}"
            log.info("%s: %s", name, reason)
            self.notifier.emit(EventType.ROLLED_BACK, name, artifact.version, reason="by user",
                               bad_version=current.version if current else None)
            await asyncio.gather(*(controller.restart_replica(i, spec, artifact, reason, probation=False)
                                   for i in range(spec.slots)))
            controller.pin(artifact.version, newest)
        self.on_change()
        return artifact.version

    async def _remove(self, name: str) -> None:
        controller = self.controllers[name]
        self.cancel_prepare(name)
        await controller.stop_all("removed from config")
        del self.controllers[name]
        self.revisions.pop(name, None)
        await asyncio.sleep(0)  # let a pending state write go first
        self.records.discard(name)
        state.remove(self.state_dir, name)
        self.notifier.emit(EventType.DELETE, name, controller.artifact.version if controller.artifact else None)

    def cancel_stale_prepares(self, desired: Desired) -> None:
        """Cancel the prepares (fetch, build) of services ``desired`` removes or whose source,
        build or environment it changes: a pass awaiting such a build must not hold the lock
        (every later reload) until a build nobody wants any more ends."""
        for name in [*self.inflight, *self.pending]:
            spec = desired.services.get(name)
            key = (self.inflight.get(name) or self.pending.get(name) or ("",))[0]
            if spec is None or prepare_key(spec) != key:
                self.cancel_prepare(name)

    def cancel_prepare(self, name: str) -> list[asyncio.Task]:
        """Cancel ``name``'s fetch or build under way, if any: its task is cancelled (a build's
        process group gets its stop signal, then SIGKILL after 5 s: Preparer.build) and its git
        processes are killed now (a thread cannot be cancelled, its git can). Returns the
        cancelled tasks, for a caller that waits until nothing is left (a user stop); a
        reload does not wait for them."""
        tasks = []
        building = self.preparer is not None and name in self.preparer.builds
        for entry in (self.pending.pop(name, None), self.inflight.pop(name, None)):
            if entry is not None and not entry[1].done():
                entry[1].cancel()
                tasks.append(entry[1])
        controller = self.controllers.get(name)
        if controller is not None:
            killed = (procs.kill_git_children(str(source_root(self.state_dir, name)))
                      if controller.spec.source.kind == "git" else [])
            if tasks:
                log.info("%s: cancelled its %s", name, "build" if building else "fetch")
            if tasks or killed:
                controller.preparing = None
                controller.deploy_message = ""
                controller.changed()
        return tasks

    def cancel_fetches(self) -> None:
        """Cancel fetches in flight and kill the git processes behind them (a remote that never
        answers must not hold a stopping supervisor for git's own timeout)."""
        for _key, task, _revision in self.pending.values():
            task.cancel()
        self.pending.clear()
        reaper = self.reaper
        killed = procs.kill_git_children(known=reaper.waiters if reaper is not None else ())
        if killed:
            log.info("stopped %d git process%s still waiting for a remote", len(killed), "es" if len(killed) != 1 else "")

    async def shutdown(self) -> None:
        """Stop every service, dependents before their dependencies, and any build."""
        self.stopping = True
        self.cancel_fetches()
        for name in list(self._requeued):
            self._cancel_requeue(name)
        async with self.lock:
            specs = {n: c.spec for n, c in self.controllers.items()}
            for level in reversed(dependency_levels(specs)):
                by_executor: dict[int, tuple[Executor, list[tuple[Running, int]]]] = {}
                for name in level:
                    controller = self.controllers[name]
                    by_executor.setdefault(id(controller.executor), (controller.executor, []))[1].extend(
                        controller.stop_signals())
                with procs.one_look_at_children():  # the whole level's signals first, then the rest
                    for executor, stops in by_executor.values():
                        executor.signal_many(stops)
                for name in level:
                    self.controllers[name].begin_stops()
                await asyncio.gather(*(self.controllers[n].stop_all("supervisor stopping") for n in level))
            for controller in self.controllers.values():
                controller._persist_now()
            self.records.flush()
            for executor in self.executors.values():
                left = await executor.sweep()
                if left:
                    log.warning("stopped %d orphaned process%s left by services: %s", len(left),
                                "es" if len(left) != 1 else "", " ".join(map(str, left)))
        for executor in self.executors.values():
            await executor.close()
        self.logs.close()

    def kill_all(self) -> None:
        """SIGKILL every replica's group, cgroup and members at once (stops under way then
        finish without waiting for their timeouts)."""
        for controller in self.controllers.values():
            for replica in controller.replicas.values():
                if replica.handle is not None:
                    controller.executor.kill(replica.handle)
        self.local.kill_preparing()

    async def detach(self) -> None:
        """Let go of every service without stopping it: stop reading their output (the FIFOs
        keep it), cancel timers and checks, and write the state files a next supervisor
        adopts from. A replica waiting in backoff has no process; the next supervisor starts it."""
        self.stopping = True
        self.cancel_fetches()
        for name in list(self._requeued):
            self._cancel_requeue(name)
        async with self.lock:
            for controller in self.controllers.values():
                controller.detach()
            self.records.flush()
        self.local.detach_all()
        self.logs.close()

    def request(self) -> None:
        """Ask for a reconcile pass soon (thread-unsafe: call on the loop)."""
        self.wake.set()

    async def run(self, load: Callable[[], Desired | None | Awaitable[Desired | None]]) -> None:
        """Reconcile on every wake-up until shutdown. ``load`` returns (or is a coroutine
        function returning) the desired state, or None when the file is currently invalid
        (the last good state then stays in force)."""
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            if self.stopping:
                break
            desired = load()
            if inspect.isawaitable(desired):
                desired = await desired
            if self.stopping:
                break
            if desired is not None:
                await self.apply(desired)
