"""The foreground supervisor: wires the reconciler to its wake-ups, the console and the socket.

Side effects live here: the state-dir lock, signal handlers, watchdog observers, the git
poller, the control socket. The reconciler in the middle only observes, plans and executes.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import hashlib
import logging
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any

from . import __version__, config, logs, procs, safefs
from .config import ConfigError
from .control import LOCK_NAME, lock_path, socket_path
from .control.server import ControlServer, send
from .durations import format_duration
from .events import Event, EventType, Notifier
from .model import Desired, Phase
from .notify import UnitReporter
from .reconciler import Reconciler, dependency_levels
from .builds import source_root
from .watch import FileWatcher, GitPoller, SourceWatcher
from .sources.path import content_hash

log = logging.getLogger("supervise")

#: More watch-triggered rebuilds than this within WATCH_STORM_WINDOW seconds stop the
#: following of that folder's edits (a service writing into its own watched folder loops).
WATCH_STORM_COUNT = 5
WATCH_STORM_WINDOW = 60.0


#: Seconds between checks that STATE_DIR is still there (one lstat each).
STATE_DIR_CHECK = 1.0


def check_state_dir(state_dir: Path, desired: Desired) -> None:
    """Refuse (``safefs.UnsafeStateDir``) a STATE_DIR that is not ours, or that lies inside a
    folder one of the ``user =`` services could write (it could swap the folder for its own)."""
    safefs.ensure_dir(state_dir)
    local = desired.settings.runtime == "local"  # user= of a Kubernetes service is its runAsUser
    for user in sorted({s.user for s in desired.services.values() if s.user and local}):
        safefs.check_not_writable_by(state_dir, user)


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


class Daemon:
    """``supervise --config PATH`` in the foreground. :meth:`run` returns the exit code."""

    def __init__(self, path: Path, desired: Desired, console: bool = True):
        self.path = path
        self.desired = desired
        self.state_dir = desired.settings.state_dir
        self.console = console
        self.notifier = Notifier()
        self.console_out = logs.Console() if console else None
        self.unit = UnitReporter.from_environ()  # sd_notify(3); a no-op outside systemd
        self.reconciler = Reconciler(desired, self.notifier, on_change=self.unit.changed, console=self.console_out)
        self.reconciler.background_fetches = True  # a slow remote holds its own service only
        self.unit.attach(self.reconciler)
        self.lock = StateLock(self.state_dir)
        self.stop_event: asyncio.Event | None = None
        self.last_error = ""
        self.reloads = 0  # reloads asked for by saves and SIGHUP
        self.detaching = False  # SIGQUIT: leave the services running for the next supervise
        self.edit_storms: dict[str, collections.deque[float]] = {}  # watch-triggered rebuild times
        self.started = time.time()
        self.file_watcher: FileWatcher | None = None
        self.source_watcher: SourceWatcher | None = None
        self.poller: GitPoller | None = None
        self.control: ControlServer | None = None
        self.state_dir_check: asyncio.TimerHandle | None = None

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> Desired | None:
        """The desired state from the file, or None (error reported once) if it is invalid."""
        return self._accept(self._read())

    async def load_async(self) -> Desired | None:
        """:meth:`load` with the reading and validation in a thread: a slow file (a large one,
        one with thousands of mistakes) never holds restarts, the socket or log pumping."""
        return self._accept(await asyncio.to_thread(self._read))

    def _read(self) -> Desired | ConfigError:
        """The file's desired state, or the ConfigError saying why not; raises nothing (any
        failure while loading is a config error naming the file: the last good one stays)."""
        try:
            return config.load(self.path)
        except ConfigError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - config.load should not; a bad file never stops us
            return ConfigError([config.Diagnostic(str(self.path), 0, 0, f"cannot load: {exc!r}"[:300])])

    def _accept(self, new: Desired | ConfigError) -> Desired | None:
        if isinstance(new, ConfigError):
            exc = new
            text = str(exc)
            if text != self.last_error:
                log.error("config not applied, the last good one stays in force:\n%s", text)
                self.notifier.emit(EventType.CONFIG_ERROR, None, None, errors=[str(d) for d in exc.diagnostics])
            self.last_error = text
            return None
        if self.last_error:
            log.info("config is valid again")
        self.last_error = ""
        if new.settings.state_dir != self.state_dir:
            log.warning("state_dir changes take effect at the next start; still using %s", self.state_dir)
            new = Desired(settings=self.desired.settings, services=new.services, path=new.path)
        for name, spec in new.services.items():  # a changed service is followed again
            if self.desired.services.get(name) != spec:
                self.edit_storms.pop(name, None)
        self.desired = new
        try:
            self._watch(new)
        except Exception:  # noqa: BLE001 - e.g. out of inotify watches: run without following
            log.exception("cannot follow the files and folders of the new config")
        return new

    def _watch(self, desired: Desired) -> None:
        if self.file_watcher is not None:
            env_files = [s.env_file for s in desired.services.values() if s.env_file]
            self.file_watcher.set_files([self.path, *env_files])
        if self.source_watcher is not None:
            self.source_watcher.set_services(desired.services.values())
        if self.poller is not None:
            self.poller.set_services(desired.services.values())
        for name, spec in desired.services.items():
            self.reconciler.logs.sink(name, spec.log)

    # -- wake-ups --------------------------------------------------------------------------

    def on_file_saved(self) -> None:
        self.reloads += 1
        log.info("%s saved: reloading", self.path.name)
        self.notifier.emit(EventType.RELOADED, None, None, trigger="save")
        self.reconciler.request()

    def on_source_edited(self, name: str, last_edit: float) -> None:
        spec = self.desired.services.get(name)
        if spec is None or spec.source.path is None:
            return
        storm = self.edit_storms.setdefault(name, collections.deque(maxlen=WATCH_STORM_COUNT))
        if len(storm) == WATCH_STORM_COUNT and time.monotonic() - storm[0] < WATCH_STORM_WINDOW:
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

        storm.append(time.monotonic())

        async def rehash() -> None:
            revision = await asyncio.to_thread(content_hash, spec.source.path, [self.state_dir])
            log.info("%s: source edited (%s): rebuilding", name, revision[:12])
            self.reconciler.revisions[name] = revision
            self.reconciler.request()

        asyncio.get_running_loop().create_task(rehash())

    def on_new_commit(self, name: str, commit: str) -> None:
        running = self.reconciler.revisions.get(name)
        if running and running.startswith(commit[:12]):
            return
        log.info("%s: new commit %s", name, commit[:12])
        self.reconciler.revisions[name] = commit
        self.reconciler.request()

    def on_poll_error(self, name: str, message: str) -> None:
        log.warning("%s: %s (retrying; what runs keeps running)", name, message)
        self.notifier.emit(EventType.FETCH_FAILED, name, None, error=message)

    # -- control verbs ---------------------------------------------------------------------

    def handlers(self) -> dict[str, Any]:
        return {"ping": self.h_ping, "status": self.h_status, "plan": self.h_plan, "reload": self.h_reload,
                "start": self.h_start, "stop": self.h_stop, "restart": self.h_restart, "events": self.h_events}

    async def h_ping(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        return {"pid": os.getpid(), "version": __version__, "config": str(self.path)}

    async def h_status(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        names = request.get("services") or []
        unknown = [n for n in names if n not in self.reconciler.controllers]
        if unknown:
            return {"ok": False, "error": "unknown service: " + ", ".join(unknown)}
        return {"services": self.status_rows(names), "supervisor": {
            "pid": os.getpid(), "uptime": time.time() - self.started, "config": str(self.path),
            "config_error": self.last_error or None}}

    def status_rows(self, names: list[str]) -> list[dict[str, Any]]:
        rows = []
        now = time.time()
        for name, controller in self.reconciler.controllers.items():
            if names and name not in names:
                continue
            if not controller.replicas:
                wanted = controller.spec.replicas
                rows.append({"service": name, "replica": None, "phase": controller.phase.value, "pid": None,
                             "version": controller.artifact.version if controller.artifact else None,
                             "uptime": None, "restarts": 0, "last_exit": None, "ready": False,
                             "held": controller.held, "desired": wanted, "log_error": controller.sink.trouble or None,
                             "message": controller.deploy_message or ("replicas = 0" if not wanted else "")})
            for index, replica in sorted(controller.replicas.items()):
                up = replica.phase in (Phase.RUNNING, Phase.READY) and replica.started_at
                rows.append({
                    "service": name, "replica": index, "phase": replica.phase.value, "pid": replica.pid,
                    "version": replica.launch.artifact.version,
                    "uptime": round(now - replica.started_at, 3) if up else None,  # type: ignore[operator]
                    "restarts": replica.restarts,
                    "last_exit": str(replica.last_exit) if replica.last_exit else None,
                    "ready": replica.ready and replica.phase in (Phase.RUNNING, Phase.READY),
                    "held": controller.held, "desired": controller.spec.replicas,
                    "message": replica.message or controller.deploy_message or controller.sink.trouble,
                    "log_error": controller.sink.trouble or None,
                })
        return rows

    async def h_plan(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        """The plan for ``request["config"]`` (default: our own file) against what runs."""
        try:
            desired = await asyncio.to_thread(config.load, Path(request.get("config") or self.path))
        except ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        return {"actions": self.reconciler.plan(desired).lines()}

    async def h_reload(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        new = await asyncio.to_thread(self._read)
        desired = self._accept(new)  # reports an error the usual way
        if desired is None:
            return {"ok": False, "error": str(new)}
        the_plan = await self.reconciler.apply(desired)
        return {"actions": the_plan.lines()}

    def _controllers(self, request: dict):
        names = request.get("services") or []
        unknown = [n for n in names if n not in self.reconciler.controllers]
        if unknown:
            raise KeyError("unknown service: " + ", ".join(unknown))
        return [self.reconciler.controllers[n] for n in names]

    async def h_start(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        try:
            controllers = self._controllers(request)
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0]}
        for controller in controllers:
            controller.release()
        await self.reconciler.apply(self.desired)
        return {"services": self.status_rows([c.name for c in controllers])}

    async def h_stop(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        try:
            controllers = self._controllers(request)
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0]}
        await asyncio.gather(*(c.hold("stopped by user") for c in controllers))
        return {"services": self.status_rows([c.name for c in controllers])}

    async def h_restart(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        try:
            controllers = self._controllers(request)
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0]}
        # dependents that asked for it (depends_on ... restart = true) restart too, after
        names = {c.name for c in controllers}
        specs = {n: c.spec for n, c in self.reconciler.controllers.items()}
        for level in dependency_levels(specs):
            for name in level:
                if name not in names and any(d.restart and d.service in names for d in specs[name].depends_on):
                    names.add(name)
        roots = {c.name for c in controllers}
        # dependents stop first (deepest first), then the asked-for services restart, then the
        # plan starts the dependents again, each after its dependencies (compose's order)
        for level in reversed(dependency_levels(specs)):
            await asyncio.gather(*(self.reconciler.controllers[n].stop_all("dependency restarts")
                                   for n in level if n in names - roots))
        for level in dependency_levels(specs):
            await asyncio.gather(*(self.reconciler.controllers[n].user_restart() for n in level if n in roots))
        await self.reconciler.apply(self.desired)
        return {"services": self.status_rows([c.name for c in controllers])}

    async def h_events(self, request: dict, writer: asyncio.StreamWriter) -> None:
        names = set(request.get("services") or [])
        queue = self.notifier.subscribe()
        try:
            await send(writer, {"ok": True})
            while True:
                event = await queue.get()
                if event is None:
                    return
                if names and event.service not in names:
                    continue
                writer.write((event.to_json() + "\n").encode())
                await writer.drain()
        finally:
            self.notifier.unsubscribe(queue)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        check_state_dir(self.state_dir, self.desired)
        self.lock.acquire()
        try:
            return await self._run(loop)
        finally:
            self.lock.release()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> int:
        self.notifier.add_listener(print_event)
        soft, _hard = procs.raise_fd_limit()
        needed = 2 * sum(s.replicas for s in self.desired.services.values()) + 64
        if needed > soft:
            log.warning("%d services need about %d file descriptors, but the limit is %d; raise "
                        "LimitNOFILE= (or ulimit -Hn) or some will not start", len(self.desired.services), needed, soft)
        await self.reconciler.start()
        self.control = ControlServer(socket_path(self.state_dir), self.handlers())
        await self.control.start()
        self.file_watcher = FileWatcher(loop, self.on_file_saved)
        self.source_watcher = SourceWatcher(loop, self.on_source_edited, self.state_dir)
        self.poller = GitPoller(lambda name: source_root(self.state_dir, name),
                                lambda spec: spec.source.poll or self.desired.settings.poll,
                                lambda name, commit: loop.call_soon(self.on_new_commit, name, commit),
                                self.on_poll_error)
        self._watch(self.desired)
        self.state_dir_check = loop.call_later(STATE_DIR_CHECK, self._check_state_dir)

        self.stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        loop.add_signal_handler(signal.SIGQUIT, self.on_sigquit)
        procs.quiet_wakeup_fd()  # each add_signal_handler above turned the warnings back on

        log.info("supervise %s: %d services from %s (state in %s, pid %d)", __version__,
                 len(self.desired.services), self.path, self.state_dir, os.getpid())
        adopted = await self.reconciler.adopt(self.desired)
        if adopted:
            log.info("adopted %d replica%s left running by the previous supervisor", adopted, "s" if adopted != 1 else "")
        runner = asyncio.create_task(self.reconciler.run(self.load_async))
        self.reconciler.request()
        self.unit.start()
        stopper = asyncio.create_task(self.stop_event.wait())
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = runner.done() and not runner.cancelled() and runner.exception() is not None
        if failed:  # a bug: still stop cleanly, and exit non-zero so systemd restarts us
            log.error("reconciler failed", exc_info=runner.exception())
        self.unit.stopping()
        log.info("leaving every service running for the next supervise" if self.detaching
                 else "stopping every service")
        runner.cancel()
        stopper.cancel()
        self.reconciler.cancel_fetches()  # before the pass in progress is awaited
        await asyncio.gather(runner, stopper, return_exceptions=True)
        await self.unit.close()  # a SIGHUP reload in progress ends here, before the services stop
        if self.state_dir_check is not None:
            self.state_dir_check.cancel()
        self.file_watcher.stop()
        self.source_watcher.stop()
        self.poller.stop()
        if self.detaching:
            await self.reconciler.detach()
        else:
            await self.reconciler.shutdown()
        await self.control.close()
        if self.console_out is not None:
            self.console_out.close()
        self.notifier.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            loop.remove_signal_handler(sig)
        log.info("detached" if self.detaching else "stopped")
        return 1 if failed else 0

    def _check_state_dir(self) -> None:
        """Every :data:`STATE_DIR_CHECK` s: if STATE_DIR was removed (or replaced) under us,
        make it again with the lock, the control socket, the logs and the state records, and
        say so. (The kernel-held lock name keeps a second supervisor out meanwhile.)"""
        loop = asyncio.get_running_loop()
        self.state_dir_check = None
        try:
            if self.lock.gone() and not self.reconciler.stopping:
                log.warning("state dir %s was removed or replaced under the running supervisor: recreating "
                            "its lock, control socket, logs and state records (services keep running)",
                            self.state_dir)
                self.lock.recreate()
                self.reconciler.recreate_state_dir()
                if self.control is not None:
                    loop.create_task(self.control.restart())
                log.warning("state dir %s recreated", self.state_dir)
        except (OSError, safefs.UnsafeStateDir) as exc:
            log.error("state dir %s is gone and cannot be recreated: %s (retrying)", self.state_dir, exc)
        if self.stop_event is None or not self.stop_event.is_set():
            self.state_dir_check = loop.call_later(STATE_DIR_CHECK, self._check_state_dir)

    def on_stop_signal(self) -> None:
        """SIGINT/SIGTERM: stop gracefully; a second one while stopping: SIGKILL everything now
        (a second Ctrl-C means "I will not wait for stop_timeout")."""
        assert self.stop_event is not None
        if not self.stop_event.is_set():
            self.stop_event.set()
            return
        log.warning("second stop signal: SIGKILL to every service now")
        self.reconciler.kill_all()

    def on_sigquit(self) -> None:
        """SIGQUIT: exit *without* stopping the services, for an in-place upgrade or restart of
        supervise itself; the next ``supervise`` on this state dir adopts them."""
        self.detaching = True
        assert self.stop_event is not None
        self.stop_event.set()

    def on_sighup(self) -> None:
        self.reloads += 1
        log.info("SIGHUP: reloading %s", self.path.name)
        self.notifier.emit(EventType.RELOADED, None, None, trigger="SIGHUP")
        self.unit.reload(self._reload_pass)

    async def _reload_pass(self) -> None:
        """One load-and-apply pass for SIGHUP, run between RELOADING=1 and READY=1 (an invalid
        file is reported by :meth:`load` and changes nothing)."""
        desired = await self.load_async()
        if desired is not None:
            await self.reconciler.apply(desired)


def print_event(event: Event) -> None:
    """One readable log line per life-cycle event (JSON is what ``supervise events`` gives)."""
    if event.type is EventType.CONFIG_ERROR:
        return
    data = event.data
    who = event.service or ""
    if "replica" in data:
        who = f"{who}[{data['replica']}]"
    detail = []
    for key in ("pid", "exit", "delay", "reason", "error"):
        value = data.get(key)
        if value in (None, ""):
            continue
        if key == "delay":
            detail.append(f"in {format_duration(float(value))}" if value else "at once")
        elif key == "pid":
            detail.append(f"pid {value}")
        else:
            detail.append(str(value))
    if event.version:
        detail.append(f"version {event.version}")
    bad = (EventType.BUILD_FAILED, EventType.FETCH_FAILED, EventType.FAILED, EventType.START_FAILED)
    level = logging.ERROR if event.type in bad else logging.INFO
    if event.type is EventType.RELOADED:
        detail = [f"by {data['trigger']}"] if data.get("trigger") else []
    log.log(level, "%s%s%s", event.type.value, f" {who}" if who else "", (": " + ", ".join(detail)) if detail else "")
    for line in data.get("tail", []) or []:
        log.log(level, "    %s", line)
