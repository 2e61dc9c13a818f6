"""The engine: one object that owns everything between the triggers and the executors.

Both front doors build it: the daemon (:mod:`supervisor.daemon`, ``supervise run``) and the
library (:class:`supervisor.runtimes.local.LocalRuntime`); neither imports the other. It owns

- the state-dir lock (one engine per state dir, whichever front door holds it),
- the reconciler (observe -> plan -> execute) and its wake-ups,
- the observed source revisions: :meth:`Engine.new_revision` is their one writer from outside
  (the reconciler records the revision it built),
- the triggers that find new revisions: the git poller and the folder watcher,
- the event bus every life-cycle event goes through.

Front doors add what is theirs: the daemon its config file watcher, signals and control socket;
the library its thread and blocking calls.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

from . import logs
from .builds import source_root
from .clock import SYSTEM, Clock
from .control import lock_path
from .events import EventType, Notifier
from .model import Desired
from .plan import Plan, same_revision
from .reconciler import Reconciler
from .sources.path import content_hash
from .watch import GitPoller, SourceWatcher

log = logging.getLogger("supervise")

#: More watch-triggered rebuilds than this within WATCH_STORM_WINDOW seconds stop the
#: following of that folder's edits (a service writing into its own watched folder loops).
WATCH_STORM_COUNT = 5
WATCH_STORM_WINDOW = 60.0


class AlreadyRunning(Exception):
    """Another supervisor holds the state dir's lock. The message names its pid."""


class StateLock:
    """An exclusive ``flock`` on ``STATE_DIR/supervise.lock`` for the life of the engine.

    The kernel drops it when we die, however we die, so a stale lock never blocks a restart.
    :meth:`acquire` raises :class:`AlreadyRunning` when another process holds it.
    """

    def __init__(self, state_dir: Path):
        self.path = lock_path(state_dir)
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another supervise (pid {other}) is running on {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Engine:
    """The reconciler, its triggers, the state lock and the event bus of one state dir.

    ``desired`` is the first desired state (its ``settings.state_dir`` is the engine's for
    life); ``bus`` the event bus (a new one by default); ``console`` where service output is
    echoed; ``on_change`` is called after every phase change and plan; ``watch_sources``
    follows local sources' ``watch`` globs. All methods run on the engine's event loop.
    """

    def __init__(self, desired: Desired, *, bus: Notifier | None = None, console: logs.Console | None = None,
                 on_change: Callable[[], None] | None = None, clock: Clock = SYSTEM, watch_sources: bool = True):
        self.desired = desired
        self.state_dir = desired.settings.state_dir
        self.bus = bus or Notifier()
        self.clock = clock
        self.reconciler = Reconciler(desired, self.bus, on_change=on_change, console=console, clock=clock)
        self.lock = StateLock(self.state_dir)
        self.watch_sources = watch_sources
        self.poller: GitPoller | None = None
        self.source_watcher: SourceWatcher | None = None
        self.edit_storms: dict[str, collections.deque[float]] = {}  # watch-triggered rebuild times
        self._tasks: set[asyncio.Task] = set()
        self._open = False

    # -- life ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Take the state dir's lock (:class:`AlreadyRunning` if taken), set up the reconciler
        and start the triggers. On failure nothing is left held."""
        self.lock.acquire()
        try:
            await self.reconciler.start()
        except BaseException:
            self.lock.release()
            raise
        loop = asyncio.get_running_loop()
        self.poller = GitPoller(lambda name: source_root(self.state_dir, name),
                                lambda spec: spec.source.poll or self.desired.settings.poll,
                                self._polled, self.on_poll_error)
        if self.watch_sources:
            self.source_watcher = SourceWatcher(loop, self.on_source_edited, self.state_dir)
        self._open = True

    async def close(self, detach: bool = False) -> None:
        """Stop the triggers, then stop every service (dependents first) or, with ``detach``,
        leave them running for the next engine to adopt. The lock stays held until
        :meth:`release` (the front door may have more to close first: its control socket)."""
        if not self._open:
            return
        self._open = False
        if self.poller is not None:
            self.poller.stop()
        if self.source_watcher is not None:
            self.source_watcher.stop()
        for task in list(self._tasks):
            task.cancel()
        if detach:
            await self.reconciler.detach()
        else:
            await self.reconciler.shutdown()

    def release(self) -> None:
        """Release the state dir's lock (idempotent): another engine may start here now."""
        self.lock.release()

    # -- desired state ---------------------------------------------------------------------

    def follow(self, desired: Desired) -> None:
        """Make ``desired`` the state the triggers watch (git poller, folder watcher, logs)."""
        for name, spec in desired.services.items():  # a changed service is followed again
            if self.desired.services.get(name) != spec:
                self.edit_storms.pop(name, None)
        self.desired = desired
        if self.source_watcher is not None:
            self.source_watcher.set_services(desired.services.values())
        if self.poller is not None:
            self.poller.set_services(desired.services.values())
        for name, spec in desired.services.items():
            self.reconciler.logs.sink(name, spec.log)

    async def apply(self, desired: Desired) -> Plan:
        """Follow ``desired`` and apply one plan for it now; returns the plan."""
        self.follow(desired)
        return await self.reconciler.apply(desired)

    async def run(self, load: Callable[[], Awaitable[Desired | None]]) -> None:
        """Reconcile on every wake-up until the engine closes; ``load`` gives the desired state
        (None: keep the last good one)."""

        async def followed() -> Desired | None:
            desired = await load()
            if desired is not None:
                self.follow(desired)
            return desired

        await self.reconciler.run(followed)

    def request(self) -> None:
        """Ask for a reconcile pass soon."""
        self.reconciler.request()

    # -- observed revisions: what the triggers report ----------------------------------------

    def new_revision(self, name: str, revision: str) -> bool:
        """A trigger saw ``revision`` of ``name``'s source (a commit, a folder's content hash).
        Records it and asks for a pass; False (and nothing done) when it is what runs."""
        if same_revision(self.reconciler.revisions.get(name), revision):
            return False
        log.info("%s: new commit %s", name, revision[:12])
        self._record(name, revision)
        return True

    def _polled(self, name: str, revision: str) -> None:
        self.new_revision(name, revision)

    def _record(self, name: str, revision: str) -> None:
        self.reconciler.revisions[name] = revision
        self.request()

    def on_poll_error(self, name: str, message: str) -> None:
        """A git remote could not be reached: reported (once per message by the poller),
        retried with backoff, and what runs keeps running."""
        log.warning("%s: %s (retrying; what runs keeps running)", name, message)
        self.bus.emit(EventType.FETCH_FAILED, name, None, error=message)

    def on_source_edited(self, name: str, last_edit: float) -> None:
        """A watched local source was edited (debounced): hash it and deploy the result,
        unless the edits are the build's own output or a loop of them (a service writing into
        its own watched folder)."""
        spec = self.desired.services.get(name)
        if spec is None or spec.source.path is None:
            return
        now = self.clock.monotonic()
        storm = self.edit_storms.setdefault(name, collections.deque(maxlen=WATCH_STORM_COUNT))
        if len(storm) == WATCH_STORM_COUNT and now - storm[0] < WATCH_STORM_WINDOW:
            if storm[-1] != -1.0:
                log.error("%s: %d rebuilds for edits in %gs: is the service writing into its own watched "
                          "folder? Ignoring its edits for a while", name,
                          WATCH_STORM_COUNT, WATCH_STORM_WINDOW)
                storm.append(-1.0)
            return
        preparer = self.reconciler.preparer
        if preparer is not None and (name in preparer.builds or last_edit <= preparer.last_build_end.get(name, 0.0)):
            # The last edit came while it was being built: the build's own output (a build
            # writing into a watched folder). Rebuilding for it would loop forever.
            log.debug("%s: ignoring edits made while it was being built", name)
            return
        storm.append(now)
        path = spec.source.path

        async def rehash() -> None:
            revision = await asyncio.to_thread(content_hash, path, [self.state_dir])
            log.info("%s: source edited (%s): rebuilding", name, revision[:12])
            self._record(name, revision)

        self.spawn(rehash())

    def spawn(self, coro: Awaitable[object]) -> None:
        """Run ``coro`` as a task the engine cancels when it closes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
