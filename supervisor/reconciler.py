"""observe -> plan -> execute. The reconciler knows nothing about why it was woken.

Level-triggered, like controller-runtime: every wake-up re-reads the desired state (the file)
and the observed state (the controllers), computes :func:`~supervisor.plan.plan` and applies
it. Wake-ups that arrive while a pass runs are coalesced into one more pass.

Execution order of a plan: removed services stop (dependents first); every fetch and build
runs concurrently (never touching running replicas); then process actions run one dependency
level at a time, the services of a level concurrently.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable, Mapping

from . import cgroups, logs, procs, safefs, state
from .builds import Artifact, PrepareError, Preparer, source_root
from .events import EventType, Notifier
from .config import NAME_RE
from .model import Desired, Observed, Phase, ServiceSpec, SourceSpec
from .plan import ActionKind, Plan, _same_revision, dependency_order, plan
from .service import ServiceController, _unlink
from .sources.git import GitSource

log = logging.getLogger("supervise")

#: Builds and fetches that may run at once (the machines we target have few cores).
PREPARE_CONCURRENCY = 4
#: Seconds a pass waits for a git fetch before it goes on without that service.
FETCH_WAIT = 2.0


def dependency_levels(specs: Mapping[str, ServiceSpec]) -> list[list[str]]:
    """Services grouped by depth: level 0 depends on nothing, level n on levels < n."""
    depth: dict[str, int] = {}
    for name in dependency_order(specs):
        deps = [depth[d.service] for d in specs[name].depends_on if d.service in depth]
        depth[name] = 1 + max(deps) if deps else 0
    levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name, level in depth.items():
        levels[level].append(name)
    return levels


class Reconciler:
    """Converges the local machine to a Desired state and keeps it there."""

    def __init__(self, desired: Desired, notifier: Notifier | None = None,
                 on_change: Callable[[], None] | None = None, console: logs.Console | None = None):
        self.desired = desired
        self.settings = desired.settings
        self.state_dir = desired.settings.state_dir
        self.notifier = notifier or Notifier()
        self.on_change = on_change or (lambda: None)
        self.controllers: dict[str, ServiceController] = {}
        self.logs = logs.LogRegistry(self.state_dir, console)
        self.revisions: dict[str, str] = {}
        self.reaper: procs.Reaper | None = None
        self.preparer: Preparer | None = None
        self.cgroup_parent: Path | None = None
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.stopping = False
        #: Plans applied so far; ``on_change`` is called after each (0: not converged once yet).
        self.applied = 0
        #: Git fetches (and the builds after them) run as tasks of their own, not held by a
        #: pass (the daemon, whose run loop picks their results up; see _prepare_in_background).
        self.background_fetches = False
        self.pending: dict[str, tuple[str, asyncio.Task]] = {}

    async def start(self) -> None:
        """Set up the reaper (SIGCHLD), the state dir and, where possible, a cgroup."""
        loop = asyncio.get_running_loop()
        self.recreate_state_dir()
        self.reaper = procs.Reaper(loop)
        tag = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:8]
        self.cgroup_parent = cgroups.make_parent(f"supervise-{tag}")
        if self.cgroup_parent is not None:
            cgroups.remove_empty_children(self.cgroup_parent)  # left by replicas that died unseen
        self.preparer = Preparer(self.state_dir, self.reaper, self.logs, self.settings.keep_versions)

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

    def known_instances(self) -> set[str]:
        """The instance marks of every process we own now (replicas and builds)."""
        known = set()
        for controller in self.controllers.values():
            for replica in controller.replicas.values():
                if replica.handle is not None and replica.handle.instance:
                    known.add(replica.handle.instance)
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
        known_cgroups = {replica.handle.cgroup for c in self.controllers.values() for replica in c.replicas.values()
                         if replica.handle is not None and replica.handle.cgroup is not None}
        in_use = {path.name for c in self.controllers.values() for replica in c.replicas.values()
                  if replica.handle is not None and replica.handle.fifo is not None
                  for path in (replica.handle.fifo, logs.err_fifo(replica.handle.fifo))}
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
        in the file is adopted to be stopped. ``only``: look at these services alone.
        Returns how many were adopted.
        """
        loop = asyncio.get_running_loop()
        adopted = 0
        tag = procs.state_tag(self.state_dir)
        for name, build in state.load_builds(self.state_dir).items():
            # a build the previous supervisor left running: stop it before building again there
            try:
                handle = procs.adopt(loop, int(build.get("pid", 0)), float(build.get("create_time", 0)),
                                     instance=str(build.get("instance") or ""), tag=tag)
            except (TypeError, ValueError, OverflowError):
                handle = None
            if handle is not None:
                log.warning("%s: stopping a build (pid %d) left by the previous supervisor", name, handle.pid)
                await procs.stop(handle, 15, 5.0, self.reaper)
            state.remove_build(self.state_dir, name)
        for name, record in state.load_all(self.state_dir).items():
            if not NAME_RE.match(name) or (only is not None and name not in only):
                continue
            alive = []
            for key, item in (record.get("replicas") or {}).items():
                # A record is checked before it is trusted: the process must be the one we
                # started (pid + create_time + our instance mark in its environment), its FIFO
                # a FIFO of ours in STATE_DIR/run, its cgroup one of ours.
                try:
                    if not isinstance(item, dict):
                        raise TypeError
                    fifo = Path(str(item["fifo"])) if item.get("fifo") else None
                    if fifo is not None and not logs.fifo_is_ours(self.state_dir, fifo):
                        log.warning("%s[%s]: ignoring a state record whose FIFO %s is not in %s", name, key,
                                    fifo, logs.run_dir(self.state_dir))
                        fifo = None
                    recorded = Path(str(item["cgroup"])) if item.get("cgroup") else None
                    if recorded is not None and (self.cgroup_parent is None or recorded.parent != self.cgroup_parent):
                        recorded = None
                    handle = procs.adopt(loop, int(item["pid"]), float(item["create_time"]),
                                         instance=str(item.get("instance") or ""), tag=tag, cgroup=recorded)
                    int(key), Path(str(item["workdir"])), str(item["version"])
                except (KeyError, TypeError, ValueError, OverflowError):
                    handle, fifo = None, None
                if handle is None:
                    if fifo is not None:
                        _unlink(fifo)
                        _unlink(logs.err_fifo(fifo))
                    continue
                handle.fifo = fifo
                if handle.cgroup is not None and (self.cgroup_parent is None or handle.cgroup.parent != self.cgroup_parent):
                    handle.cgroup = None  # only our own cgroups are ever killed or removed
                alive.append((int(key), item, handle))
            spec = desired.services.get(name)
            if spec is None and alive:
                first = alive[0][1]
                spec = ServiceSpec(name=name, command=tuple(record.get("command") or ["?"]),
                                   source=SourceSpec(kind="path", path=Path(first["workdir"])),
                                   stop_signal=int(record.get("stop_signal", 15)),
                                   stop_timeout=float(record.get("stop_timeout", 10.0)), replicas=0)
            if spec is None:
                continue
            if not alive and not record.get("held"):
                continue
            controller = self.controllers.get(name) or self._controller(spec)
            self.controllers[name] = controller
            controller.held = bool(record.get("held", False))
            current = state.fingerprint(spec)
            for index, item, handle in alive:
                artifact = Artifact(workdir=Path(item["workdir"]), version=str(item["version"]),
                                    revision=str(item.get("revision") or item["version"].split("-")[0]))
                stale = name not in desired.services or item.get("fingerprint") != current
                controller.adopt(index, handle, spec, artifact, item.get("started_at"), int(item.get("restarts", 0)), stale)
                adopted += 1
        if only is None:
            await self.sweep_unowned()
        return adopted

    def observe(self) -> Observed:
        """The observed state: every controller's view of its replicas."""
        return Observed({name: c.observe() for name, c in self.controllers.items()})

    def plan(self, desired: Desired | None = None) -> Plan:
        """The plan for ``desired`` (default: the current one) against what runs now; no effect."""
        return plan(desired or self.desired, self.observe(), self.revisions)

    async def apply(self, desired: Desired) -> Plan:
        """Apply one plan for ``desired``; returns it. Serialised: one pass at a time."""
        async with self.lock:
            if self.stopping:
                return Plan()
            self.desired = desired
            the_plan = self.plan(desired)
            for action in the_plan:
                log.info("plan: %s", action)
            await self._execute(desired, the_plan)
            self.applied += 1
            self.on_change()
            return the_plan

    async def _execute(self, desired: Desired, the_plan: Plan) -> None:
        specs = desired.services
        # 1. removed services, dependents first
        removed = {n: self.controllers[n].spec for n in the_plan.services() if n not in specs and n in self.controllers}
        for level in reversed(dependency_levels(removed)):
            await asyncio.gather(*(self._remove(name) for name in level))
        # 2. fetch and build, concurrently, beside whatever runs
        to_prepare = [n for n in the_plan.services() if n in specs and any(
            a.kind in (ActionKind.FETCH, ActionKind.BUILD) for a in the_plan.for_service(n))]
        for name in the_plan.services():
            if name in specs and name not in self.controllers:
                self.controllers[name] = self._controller(specs[name])
                self.notifier.emit(EventType.CREATE, name, None, source=specs[name].source.describe())
            elif name in specs and the_plan.for_service(name):
                self.notifier.emit(EventType.UPDATE, name, self.controllers[name].artifact.version
                                   if self.controllers[name].artifact else None,
                                   reason="; ".join(sorted({a.reason for a in the_plan.for_service(name)})))
        semaphore = asyncio.Semaphore(PREPARE_CONCURRENCY)
        artifacts: dict[str, Artifact | None] = {}

        async def prepare(name: str) -> None:
            async with semaphore:
                artifacts[name] = await self._prepare(specs[name])

        await asyncio.gather(*(prepare(n) for n in to_prepare))
        # 3. processes, one dependency level at a time
        for level in dependency_levels(specs):
            await asyncio.gather(*(self._guarded(specs[n], the_plan, artifacts) for n in level
                                   if the_plan.for_service(n)))
        self.on_change()

    def _controller(self, spec: ServiceSpec) -> ServiceController:
        assert self.reaper is not None
        return ServiceController(spec, state_dir=self.state_dir, reaper=self.reaper, notifier=self.notifier,
                                 lookup=self.controllers.get, changed=self.on_change,
                                 sink=self.logs.sink(spec.name, spec.log), cgroup_parent=self.cgroup_parent)

    async def _prepare_in_background(self, spec: ServiceSpec, protect: set[str]) -> Artifact | None:
        """For a git source: run the fetch and build as a task of its own, and wait for it at
        most :data:`FETCH_WAIT` s (not at all when an earlier pass already waited): a remote
        that never answers then holds this one service in ``fetching``, never the whole pass
        (other services' starts, restarts and reloads). When the task ends, another pass is
        asked for, and picks its result up here. Returns None while it runs."""
        assert self.preparer is not None
        name = spec.name
        key = repr((spec.source, spec.build, spec.environment, self.revisions.get(name)))
        pending = self.pending.get(name)
        if pending is not None and pending[0] != key:
            pending[1].cancel()
            pending = None
        waited = pending is not None
        if pending is None:
            task = asyncio.get_running_loop().create_task(self.preparer.prepare(spec, protect))
            task.add_done_callback(lambda _t: self.request())
            pending = self.pending[name] = (key, task)
        task = pending[1]
        if not task.done() and not waited:
            await asyncio.wait([task], timeout=FETCH_WAIT)
        if not task.done():
            controller = self.controllers[name]
            controller.deploy_message = f"waiting for {spec.source.describe()} (the remote is slow to answer)"
            return None
        del self.pending[name]
        return task.result()  # raises PrepareError as the plain call would

    async def _prepare(self, spec: ServiceSpec) -> Artifact | None:
        assert self.preparer is not None
        controller = self.controllers[spec.name]
        protect = {r.launch.artifact.version for r in controller.replicas.values()}
        controller.preparing = Phase.BUILDING if spec.build else Phase.FETCHING
        controller.changed()
        try:
            if self.background_fetches and spec.source.kind == "git":
                artifact = await self._prepare_in_background(spec, protect)
                if artifact is None:
                    return None
                controller.deploy_message = ""
            else:
                artifact = await self.preparer.prepare(spec, protect)
        except asyncio.CancelledError:
            controller.preparing = None
            raise
        except PrepareError as exc:
            controller.preparing = None
            kind = EventType.FETCH_FAILED if exc.stage == "fetch" else EventType.BUILD_FAILED
            log.error("%s: %s%s", spec.name, exc, "".join(f"\n    {line}" for line in exc.tail))
            self.notifier.emit(kind, spec.name, exc.version, error=str(exc), tail=exc.tail)
            tried = exc.version.rsplit("-", 1)[0] if exc.version else self.revisions.get(spec.name)
            controller.mark_build_failed(spec, tried, f"{exc.stage} failed: {exc}")
            return None
        controller.preparing = None
        previous = controller.artifact
        if spec.source.kind == "git" and previous is not None and previous.revision != artifact.revision:
            source = GitSource(spec.source, source_root(self.state_dir, spec.name))
            if not await asyncio.to_thread(source.is_ancestor, previous.revision, artifact.revision):
                log.warning("%s: %s was force-pushed (%s is not an ancestor of %s); deploying it",
                            spec.name, spec.source.ref, previous.revision[:12], artifact.revision[:12])
                self.notifier.emit(EventType.FORCE_PUSHED, spec.name, artifact.version, ref=spec.source.ref,
                                   previous=previous.revision, revision=artifact.revision)
        if spec.build:
            self.notifier.emit(EventType.BUILT, spec.name, artifact.version)
        self.revisions[spec.name] = artifact.revision
        return artifact

    async def _guarded(self, spec: ServiceSpec, the_plan: Plan, artifacts: Mapping[str, Artifact | None]) -> None:
        """Run one service's actions; a bug there is logged and leaves the others alone."""
        try:
            await self._run_actions(spec, the_plan, artifacts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: applying the plan failed; the other services are not affected", spec.name)

    async def _run_actions(self, spec: ServiceSpec, the_plan: Plan, artifacts: Mapping[str, Artifact | None]) -> None:
        name = spec.name
        controller = self.controllers[name]
        actions = the_plan.for_service(name)
        needs_artifact = any(a.kind in (ActionKind.FETCH, ActionKind.BUILD) for a in actions)
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
        for action in actions:
            if action.kind is ActionKind.UPDATE:
                controller.apply_settings(spec)
            elif action.kind is ActionKind.STOP and action.replica is not None:
                await controller.stop_replica(action.replica, action.reason, remove=True)
        starts = [a for a in actions if a.kind in (ActionKind.START, ActionKind.RESTART)]
        if starts and artifact is None:
            artifact = await self._prepare(spec)
            if artifact is None:
                return
        await asyncio.gather(*(
            (controller.restart_replica if a.kind is ActionKind.RESTART else controller.start_replica)(
                a.replica, spec, artifact, a.reason)  # type: ignore[arg-type]
            for a in starts))

    async def _remove(self, name: str) -> None:
        controller = self.controllers[name]
        await controller.stop_all("removed from config")
        del self.controllers[name]
        self.revisions.pop(name, None)
        await asyncio.sleep(0)  # let a pending state write go first
        state.remove(self.state_dir, name)
        self.notifier.emit(EventType.DELETE, name, controller.artifact.version if controller.artifact else None)

    def cancel_fetches(self) -> None:
        """Cancel fetches in flight and kill the git processes behind them (a remote that never
        answers must not hold a stopping supervisor for git's own timeout)."""
        for _key, task in self.pending.values():
            task.cancel()
        self.pending.clear()
        killed = procs.kill_git_children()
        if killed:
            log.info("stopped %d git process%s still waiting for a remote", len(killed), "es" if len(killed) != 1 else "")

    async def shutdown(self) -> None:
        """Stop every service, dependents before their dependencies, and any build."""
        self.stopping = True
        self.cancel_fetches()
        async with self.lock:
            specs = {n: c.spec for n, c in self.controllers.items()}
            for level in reversed(dependency_levels(specs)):
                for name in level:  # the whole level's signals first, then the waits
                    self.controllers[name].signal_all()
                await asyncio.gather(*(self.controllers[n].stop_all("supervisor stopping") for n in level))
            for controller in self.controllers.values():
                controller._persist_now()
            known = set(self.reaper.waiters) if self.reaper is not None else set()
            left = await procs.sweep_orphans(known, self.reaper)
            if left:
                log.warning("stopped %d orphaned process%s left by services: %s", len(left),
                            "es" if len(left) != 1 else "", " ".join(map(str, left)))
        if self.reaper is not None:
            self.reaper.close()
        self.logs.close()
        if self.cgroup_parent is not None:
            cgroups.remove(self.cgroup_parent)

    def kill_all(self) -> None:
        """SIGKILL every replica's group, cgroup and members at once (stops under way then
        finish without waiting for their timeouts)."""
        known = set(self.reaper.waiters) if self.reaper is not None else set()
        for controller in self.controllers.values():
            for replica in controller.replicas.values():
                if replica.handle is not None:
                    procs.kill_now(replica.handle, known)
        if self.preparer is not None:
            for handle in self.preparer.builds.values():
                procs.kill_now(handle, known)

    async def detach(self) -> None:
        """Let go of every service without stopping it: stop reading their output (the FIFOs
        keep it), cancel timers and checks, and write the state files a next supervisor
        adopts from. A replica waiting in backoff has no process; the next supervisor starts it."""
        self.stopping = True
        self.cancel_fetches()
        async with self.lock:
            for controller in self.controllers.values():
                controller.detach()
        if self.reaper is not None:
            self.reaper.close()
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
