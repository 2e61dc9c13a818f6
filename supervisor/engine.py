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
import errno
import fcntl
import hashlib
import logging
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Awaitable, Callable

from .execute import logs
from .observe import safefs
from .execute.builds import source_root
from .clock import SYSTEM, Clock
from .control import LOCK_NAME, lock_path
from .observe.events import Event, EventType, Notifier, UpdateNotifier
from .desired.model import Desired, ServiceSpec
from .decide.plan import Plan, same_revision
from .reconciler import Reconciler
from .execute.sources import SourceError
from .execute.sources.git import GitSource
from .execute.sources.path import content_hash
from .execute.sources.pip import PipSource
from .triggers.watch import GitPoller, SourceWatcher

log = logging.getLogger("supervise")

#: More watch-triggered rebuilds than this within WATCH_STORM_WINDOW seconds stop the
#: following of that folder's edits (a service writing into its own watched folder loops).
WATCH_STORM_COUNT = 5
WATCH_STORM_WINDOW = 60.0


class AlreadyRunning(Exception):
    """Another supervisor holds the state dir's lock. The message names its pid."""


class StateLock:
    """One supervisor per state dir, for the life of the process, held two ways:

    - an abstract Unix socket named after the state dir's real path (``@supervise-HASH``): the
      kernel holds the name while we live and frees it when we die, however we die, and no
      one can remove it from the file system (a STATE_DIR deleted under a running supervisor
      must not let a second one start on a new, empty folder of the same name);
    - an exclusive ``flock`` on ``STATE_DIR/supervise.lock`` (opened ``O_NOFOLLOW`` relative to
      an fd on the folder, never through a symlink), which also records our pid for the
      message another supervisor prints.

    Raises :class:`AlreadyRunning`, or ``safefs.UnsafeStateDir`` when the folder is not ours.
    """

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.path = lock_path(state_dir)
        self.fd: int | None = None
        self.dir_fd: int | None = None
        self.anchor: socket.socket | None = None
        #: (anchor fd, lock file fd) handed over by the supervise this process exec'd from (a
        #: self-update): :meth:`acquire` takes them when they prove to be this state dir's lock.
        self.inherited: tuple[int, int] | None = None

    def _anchor_name(self) -> bytes:
        real = os.path.realpath(self.state_dir)
        return b"\0supervise-" + hashlib.sha256(os.fsencode(real)).hexdigest()[:40].encode()

    def _other_pid(self) -> str:
        try:
            return safefs.read_regular(self.state_dir, LOCK_NAME, 64).decode(errors="replace").strip() or "?"
        except (OSError, safefs.UnsafeStateDir):
            return "?"

    def acquire(self) -> None:
        safefs.ensure_dir(self.state_dir)
        if self.inherited is not None and self._take_inherited(*self.inherited):
            return
        anchor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            anchor.bind(self._anchor_name())
        except OSError as exc:
            anchor.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            raise AlreadyRunning(f"another supervise (pid {self._other_pid()}) is running on "
                                 f"{self.state_dir}") from None
        self.anchor = anchor
        try:
            self._lock_file()
        except BaseException:
            self.release()
            raise

    def _take_inherited(self, anchor_fd: int, lock_fd: int) -> bool:
        """Hold the lock through fds the previous supervise of this pid left open across its
        exec, if they are this state dir's anchor socket and lock file; else False (and those
        fds are left alone: not ours to close)."""
        self.inherited = None
        try:
            anchor = socket.socket(fileno=anchor_fd)
        except OSError:
            return False
        try:
            if anchor.family != socket.AF_UNIX or anchor.getsockname() != self._anchor_name():
                anchor.detach()
                return False
            st, held = os.fstat(lock_fd), os.lstat(self.path)
        except OSError:
            anchor.detach()
            return False
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino) or st.st_uid != os.geteuid():
            anchor.detach()
            return False
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: the same open file
        except OSError:
            anchor.detach()
            return False
        os.set_inheritable(anchor_fd, False)
        os.set_inheritable(lock_fd, False)
        self.anchor, self.fd = anchor, lock_fd
        self.dir_fd = safefs.open_dir(self.state_dir)
        return True

    def handover_fds(self) -> tuple[int, int] | None:
        """(anchor fd, lock file fd) for the next supervise of this pid (a self-update's exec)."""
        if self.anchor is None or self.fd is None:
            return None
        return self.anchor.fileno(), self.fd

    def _lock_file(self) -> None:
        self.dir_fd = safefs.open_dir(self.state_dir)
        try:
            fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600,
                         dir_fd=self.dir_fd)
        except OSError as exc:
            raise safefs.UnsafeStateDir(f"{self.path}: {exc.strerror} (a symlink or another planted file?); "
                                        "refusing to use it") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            raise safefs.UnsafeStateDir(f"{self.path} is not a plain file of ours; refusing to use it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another supervise (pid {other}) is running on {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd

    def gone(self) -> bool:
        """True when STATE_DIR was removed or replaced since we locked it."""
        if self.dir_fd is None:
            return False
        try:
            st = os.lstat(self.state_dir)
        except OSError:
            return True
        held = os.fstat(self.dir_fd)
        return (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino) or held.st_nlink == 0

    def recreate(self) -> None:
        """Make STATE_DIR and the lock file again after they were removed (we still hold the
        kernel's name, so no second supervisor could start meanwhile)."""
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None
        safefs.ensure_dir(self.state_dir)
        self._lock_file()

    def release(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.dir_fd = None
        if self.anchor is not None:
            self.anchor.close()
            self.anchor = None


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
        self._followed = False  # follow() has run for self.desired

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
                                lambda spec: spec.source.poll or self.desired.settings.poll, self.on_poll_error,
                                self.reconciler.fetch_outages.discard)
        self.listen(self.poller)
        if self.watch_sources:
            self.source_watcher = SourceWatcher(loop, self.state_dir)
            self.listen(self.source_watcher)
        self._followed = False  # the new triggers have not been given the services yet
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
        """Make ``desired`` the state the triggers watch (git poller, folder watcher, logs).
        Following the very object already followed does nothing (a reload follows it when it
        is loaded, then :meth:`apply` would again: 2,000 spec comparisons each time)."""
        if desired is self.desired and self._followed:
            return
        self._followed = True
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

    def listen(self, notifier: UpdateNotifier) -> None:
        """Read ``notifier`` (go-micro's "notifier for updates") in a thread of its own until it
        closes; each ``update`` event is handed to :meth:`on_update` on the engine's loop. The
        git poller and the folder watcher come in this way; so may a caller's notifier."""
        loop = asyncio.get_running_loop()

        def read() -> None:
            try:
                for event in notifier.notify():
                    loop.call_soon_threadsafe(self.on_update, event)
            except RuntimeError:  # the loop closed under us: the engine is gone
                pass
            except Exception:  # a broken notifier must not take the engine down
                log.exception("an update notifier failed")

        threading.Thread(target=read, name=f"updates-{type(notifier).__name__}", daemon=True).start()

    def on_update(self, event: Event) -> None:
        """An ``update`` event from a notifier: deploy the version it names for its service
        (every service when it names none). Other event types are ignored, as go-micro's
        runtime ignores them. Edits of a watched folder go through :meth:`_edits_wanted` first."""
        if event.type is not EventType.UPDATE or not self._open:
            return
        names = [event.service] if event.service else list(self.desired.services)
        for name in names:
            if event.data.get("trigger") == "edit" and not self._edits_wanted(name, float(event.data.get("last_edit", 0.0))):
                continue
            self.spawn(self._deploy_logged(name, event))

    async def _deploy_logged(self, name: str, event: Event) -> None:
        try:
            await self.deploy(name, event.version, event.data.get("revision"), trigger=event.data.get("trigger"))
        except SourceError as exc:
            log.warning("%s: update to %s failed: %s", name, event.version or "the newest version", exc)

    async def deploy(self, name: str, version: str | None = None, revision: str | None = None,
                     spec: ServiceSpec | None = None, trigger: str | None = None) -> bool:
        """Deploy ``version`` of ``name``: ``revision`` when the trigger already knows it (a
        polled commit), else the revision ``spec``'s source holds now (default: the followed
        spec): its ref's commit on the remote, the newest release on the index, a folder's
        content hash. Records it and asks for a pass; False when it is what runs or the
        service is unknown. Raises :class:`~supervisor.execute.sources.SourceError` when the source
        cannot be asked."""
        spec = spec or self.desired.services.get(name)
        if spec is None:
            log.debug("update for unknown service %s ignored", name)
            return False
        if revision is None:
            revision = await asyncio.to_thread(self._resolve, spec)
        if same_revision(self.reconciler.revisions.get(name), revision):
            return False
        if trigger == "edit":
            log.info("%s: source edited (%s): rebuilding", name, revision[:12])
        else:
            log.info("%s: new commit %s", name, revision[:12])
        self._record(name, revision)
        return True

    async def refresh_folders(self, desired: Desired) -> None:
        """An explicit reload (SIGHUP, the ``reload`` verb) looks at every local folder source
        run from snapshots again: edits made without ``watch`` (or that a watch missed) deploy
        now, as a new content hash, instead of never. Folders run in place and services that
        have not started yet are left to the plan. A folder that cannot be read is logged;
        what runs keeps running."""
        for name, spec in desired.services.items():
            source = spec.source
            if source.kind != "path" or source.path is None or source.mode != "snapshot":
                continue
            if name not in self.reconciler.controllers:
                continue
            try:
                revision = await asyncio.to_thread(self._resolve, spec)
            except (SourceError, OSError) as exc:
                log.warning("%s: cannot read its folder: %s", name, exc)
                continue
            self.new_revision(name, revision)

    def _resolve(self, spec: ServiceSpec) -> str:
        """The revision ``spec``'s source holds now (blocking: a thread's)."""
        root = source_root(self.state_dir, spec.name)
        if spec.source.kind == "git":
            return GitSource(spec.source, root).remote_revision()
        if spec.source.kind == "pip":
            return PipSource(spec.source, root).latest()
        if spec.source.path is None:
            raise SourceError(f"{spec.name}: its source has no revision to follow")
        return content_hash(spec.source.path, [self.state_dir])

    def new_revision(self, name: str, revision: str) -> bool:
        """A trigger saw ``revision`` of ``name``'s source (a commit, a folder's content hash).
        Records it and asks for a pass; False (and nothing done) when it is what runs."""
        known = self.reconciler.revisions.get(name)
        controller = self.reconciler.controllers.get(name)
        if known is None and controller is not None and controller.artifact is not None:
            known = controller.artifact.revision  # adopted: what runs is what the record says
        if same_revision(known, revision):
            return False
        log.info("%s: new commit %s", name, revision[:12])
        self._record(name, revision)
        return True

    def _record(self, name: str, revision: str) -> None:
        self.reconciler.revisions[name] = revision
        self.request()

    def on_poll_error(self, name: str, message: str) -> None:
        """A git remote could not be reached: logged (once per distinct message by the poller),
        retried with backoff, and what runs keeps running. One ``fetch-failed`` event per outage:
        none when a prepare of the same service already reported it."""
        log.warning("%s: %s (retrying; what runs keeps running)", name, message)
        if name not in self.reconciler.fetch_outages:
            self.reconciler.fetch_outages.add(name)
            self.bus.emit(EventType.FETCH_FAILED, name, None, error=message)

    def _edits_wanted(self, name: str, last_edit: float) -> bool:
        """A watched local source was edited (debounced): deploy it, unless the edits are the
        build's own output or a loop of them (a service writing into its own watched folder)."""
        spec = self.desired.services.get(name)
        if spec is None or spec.source.path is None:
            return False
        now = self.clock.monotonic()
        storm = self.edit_storms.setdefault(name, collections.deque(maxlen=WATCH_STORM_COUNT))
        if len(storm) == WATCH_STORM_COUNT and now - storm[0] < WATCH_STORM_WINDOW:
            if storm[-1] != -1.0:
                log.error("%s: %d rebuilds for edits in %gs: is the service writing into its own watched "
                          "folder? Ignoring its edits for a while", name,
                          WATCH_STORM_COUNT, WATCH_STORM_WINDOW)
                storm.append(-1.0)
            return False
        preparer = self.reconciler.preparer
        if spec.source.in_place and preparer is not None and (
                name in preparer.builds or last_edit <= preparer.last_build_end.get(name, 0.0)):
            # The last edit came while it was being built in place: the build's own output (a
            # build writing into its watched folder). Rebuilding for it would loop forever. A
            # snapshot builds in its copy: an edit then is the user's, and deploys.
            log.debug("%s: ignoring edits made while it was being built", name)
            return False
        storm.append(now)
        return True

    def spawn(self, coro: Awaitable[object]) -> None:
        """Run ``coro`` as a task the engine cancels when it closes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
