"""The foreground supervisor: the engine's front door for ``supervise run``.

It builds an :class:`~supervisor.engine.Engine` (reconciler, state lock, git poller, folder
watcher, event bus) and adds what only a daemon has: the config file watcher, signal handlers,
the control socket and sd_notify. A save, SIGHUP and the ``reload`` verb all go through
:meth:`Daemon.reload`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import selfupdate
from .desired import config
from .execute import logs, procs
from .observe import safefs
from .desired.config import ConfigError
from .control import socket_path
from .control.server import ControlServer
from .control.verbs import COMMANDS
from .desired.durations import format_duration
from .observe.events import Event, EventType, Notifier
from .desired.model import Desired
from .observe.notify import UnitReporter
from .engine import AlreadyRunning, Engine, StateLock
from .decide.errors import Code
from .decide import runonce
from .decide.runonce import Until
from .observe import views
from .observe.history import History
from .decide.plan import Plan
from .triggers.watch import FileWatcher

log = logging.getLogger("supervise")


def _version() -> str:
    """This install's version (``supervisor.__version__``), looked up on first use: it imports
    importlib.metadata (with email, zipfile, csv: 1.4 MB of a supervisor's PSS), which a
    supervisor needs only for an upgrade and a handover."""
    from . import __version__
    return __version__

__all__ = ["AlreadyRunning", "Daemon", "StateLock", "print_event"]


#: Seconds between checks that STATE_DIR is still there (one lstat each).
STATE_DIR_CHECK = 1.0


def process_started() -> float:
    """When this process started (seconds since the epoch, psutil's ``create_time``): the same
    across a self-update's exec, as systemd's view of the unit is."""
    import psutil

    try:
        return psutil.Process(os.getpid()).create_time()
    except psutil.Error:
        return time.time()


def check_trust(path: Path, desired: Desired) -> None:
    """Raise ``safefs.UntrustedConfig`` when we run as root and the config file or an
    ``env_file`` could be changed by another user (see :func:`safefs.check_trusted_file`):
    whoever can edit what root runs is root."""
    safefs.check_trusted_file(path)
    for env_file in sorted({s.env_file for s in desired.services.values() if s.env_file}):
        safefs.check_trusted_file(Path(env_file), "env_file")


def check_state_dir(state_dir: Path, desired: Desired) -> None:
    """Refuse (``safefs.UnsafeStateDir``) a STATE_DIR that is not ours, or that lies inside a
    folder one of the ``user =`` services could write (it could swap the folder for its own)."""
    safefs.ensure_dir(state_dir)
    local = desired.settings.runtime == "local"  # user= of a Kubernetes service is its runAsUser
    for user in sorted({s.user for s in desired.services.values() if s.user and local}):
        safefs.check_not_writable_by(state_dir, user)


def _same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same folder (``../x/.supervise`` and ``.supervise``
    through a symlink): the real paths, as the state lock's name is made of."""
    return os.path.realpath(a) == os.path.realpath(b)


def same_specs(new: Desired, old: Desired) -> Desired:
    """``new`` with each service spec equal to the one ``old`` has under its name replaced by
    that very object. Specs are frozen values, so nothing changes but identity: the comparisons
    every reload makes afterwards on the loop (the triggers follow the new state, the plan diffs
    each service) end at ``is`` for every service the save did not touch, and what is cached
    by spec object (a controller's policy) stays. Run in the loader's thread, off the loop: a
    reload of one service among 2,000 compared all 2,000 specs twice on the loop (issue 17)."""
    services = dict(new.services)
    reused = 0
    for name, spec in services.items():
        before = old.services.get(name)
        if before is not None and before is not spec and before == spec:
            services[name] = before
            reused += 1
    if not reused:
        return new
    return dataclasses.replace(new, services=MappingProxyType(services))


class Daemon:
    """``supervise --config PATH`` in the foreground. :meth:`run` returns the exit code.

    It builds the :class:`~supervisor.engine.Engine` and adds what only a daemon has: the
    config file watcher, signals, the control socket and sd_notify.
    """

    def __init__(self, path: Path, desired: Desired, console: bool = True, until: Until | None = None,
                 handover: selfupdate.Handover | None = None, freeze_heap: bool = False):
        self.path = path
        #: ``gc.freeze()`` once the first plan is applied (see :meth:`changed`); only the
        #: supervise process asks for it, never a test's interpreter that runs a Daemon.
        self.freeze_heap = freeze_heap
        self.desired = desired
        self.state_dir = desired.settings.state_dir
        self.console = console
        self.notifier = Notifier()
        self.console_out = logs.Console() if console else None
        self.unit = UnitReporter.from_environ()  # sd_notify(3); a no-op outside systemd
        self.engine = Engine(desired, bus=self.notifier, on_change=self.changed, console=self.console_out)
        self.reconciler = self.engine.reconciler
        self.reconciler.background_fetches = True  # a slow remote holds its own service only
        self.reconciler.keep_failed = until is None  # a run once starts everything afresh
        self.reconciler.keep_completed = until is None  # a run once runs every job afresh
        self.reconciler.ending = self._run_is_over
        self.unit.attach(self.reconciler)
        self.stop_event: asyncio.Event | None = None
        self.last_error = ""
        self.reloads = 0  # reloads asked for by saves, SIGHUP and the reload verb
        self.detaching = False  # SIGQUIT: leave the services running for the next supervise
        self.started = process_started()  # the pid's start: an upgrade's exec does not reset it
        self.file_watcher: FileWatcher | None = None
        self.control: ControlServer | None = None
        self.state_dir_check: asyncio.TimerHandle | None = None
        #: The state dir a save named instead of ours (refused): its lock and a control socket
        #: there, held while the file names it (see :meth:`_refuse_state_dir`).
        self.moved: tuple[StateLock, ControlServer] | None = None
        self.moved_to: Path | None = None  # the state_dir the file names, when not ours (refused)
        self.history = History(self.state_dir, desired.settings.event_history)  # opened by run()
        #: Run once (``run --exit-when-done``/``--exit-when NAME``): what ends the run, its
        #: outcome once over, the signal that stopped it first (then 128+N is the status).
        self.until = until
        self.outcome: runonce.Outcome | None = None
        self.stop_signal: int | None = None
        self._judging = False
        # self-update ([supervise] self, `supervise upgrade`): see supervisor/selfupdate.py
        self.handover = handover or selfupdate.Handover()
        self.engine.lock.inherited = self.handover.lock
        self.revision = self.handover.revision  # what this install was made from (None: unknown)
        self.bad_revisions: set[str] = set(self.handover.bad) | selfupdate.load_failed(self.state_dir)
        self.last_upgrade: dict[str, Any] | None = None  # the last upgrade's outcome, for `upgrade`
        self.pending_plan: selfupdate.Exec | None = None  # checked, waiting for hand_over
        self.exec_plan: selfupdate.Exec | None = None  # set: exec it once every service is let go
        self.upgrading: asyncio.Lock | None = None
        self.control_fd: int | None = None  # the listening socket, kept for the next supervise
        self.self_source: selfupdate.SelfSource | None = None  # the last upgrade's (cancelled at a stop)
        self.self_poller: asyncio.Task | None = None  # the [supervise] self poll, when it has one

    @property
    def lock(self) -> StateLock:
        """The engine's state-dir lock."""
        return self.engine.lock

    @property
    def source_watcher(self):
        """The engine's folder watcher (None until :meth:`run` opened the engine)."""
        return self.engine.source_watcher

    @property
    def poller(self):
        """The engine's git poller (None until :meth:`run` opened the engine)."""
        return self.engine.poller

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> Desired | None:
        """The desired state from the file, or None (error reported once) if it is invalid."""
        return self._accept(self._read())

    async def load_async(self, report: bool = False) -> Desired | None:
        """:meth:`load` with the reading and validation in a thread: a slow file (a large one,
        one with thousands of mistakes) never holds restarts, the socket or log pumping.
        ``report``: say what is wrong even when it was said already (see :meth:`_accept`)."""
        return self._accept(await asyncio.to_thread(self._read), report)

    def _read(self) -> Desired | ConfigError:
        """The file's desired state, or the ConfigError saying why not; raises nothing (any
        failure while loading is a config error naming the file: the last good one stays).
        A file (or env_file) that a user other than root could change is such an error when
        we run as root (:func:`check_trust`): a save by a service user is never applied."""
        try:
            desired = config.load(self.path)
            check_trust(self.path, desired)
            return same_specs(desired, self.desired)
        except ConfigError as exc:
            return exc
        except safefs.UntrustedConfig as exc:
            return ConfigError([config.Diagnostic(str(self.path), 0, 0, str(exc))])
        except Exception as exc:  # noqa: BLE001 - config.load should not; a bad file never stops us
            return ConfigError([config.Diagnostic(str(self.path), 0, 0, f"cannot load: {exc!r}"[:300])])

    def _accept(self, new: Desired | ConfigError, report: bool = False) -> Desired | None:
        """Take a good desired state; for a bad one, log the error line and emit the
        ``config-error`` event, once per distinct error (a wake-up or a second save of the same
        mistake repeats nothing), or every time with ``report`` (an explicit reload: SIGHUP
        and the verb always answer)."""
        if isinstance(new, ConfigError):
            exc = new
            text = str(exc)
            if text != self.last_error or report:
                log.error("config not applied, the last good one stays in force:\n%s", text)
                self.notifier.emit(EventType.CONFIG_ERROR, None, None, errors=[str(d) for d in exc.diagnostics])
            self.last_error = text
            return None
        if new.settings.state_dir != self.state_dir and not _same_folder(new.settings.state_dir, self.state_dir):
            self._refuse_state_dir(new.settings.state_dir, report)
            return None
        if new.settings.state_dir != self.state_dir:  # another name of the same folder: ours stays
            new = replace(new, settings=replace(new.settings, state_dir=self.state_dir))
        self.moved_to = None
        self._release_moved()
        if self.last_error:
            log.info("config is valid again")
        self.last_error = ""
        self.desired = new
        if self.stop_event is not None:  # (running)
            self._follow_self()
        try:
            self._watch(new)
        except Exception:  # noqa: BLE001 - e.g. out of inotify watches: run without following
            log.exception("cannot follow the files and folders of the new config")
        return new

    def _refuse_state_dir(self, moved: Path, report: bool) -> None:
        """The file names another ``state_dir`` than the one in use: refuse the whole save (the
        lock, the socket, the records and the logs are in the old folder; moving them under
        running services is not done), said once in one line and a ``config-error`` event, and
        hold the new folder's lock and a second control socket there while the file names it,
        so that a client reading the file still reaches this supervisor and a second
        ``supervise`` on the file is refused (it would start every service a second time)."""
        text = (f"{self.path}: [supervise] state_dir changed from {self.state_dir} to {moved} while "
                f"supervise runs: state_dir changes need a restart of supervise; not applied, still using {self.state_dir}")
        if text != self.last_error or report:
            log.error("%s", text)
            self.notifier.emit(EventType.CONFIG_ERROR, None, None, errors=[text])
        self.last_error = text
        self.moved_to = moved
        self._hold_moved(moved)

    def _hold_moved(self, moved: Path) -> None:
        """Hold ``moved`` (the state dir the file names now): its lock and a control socket
        answering as this supervisor; a folder held by another supervise is left alone (said)."""
        if self.moved is not None and self.moved[0].state_dir == moved:
            return
        self._release_moved()
        if self.stop_event is None or self.stop_event.is_set():
            return  # (not running: nothing to answer with)
        lock = StateLock(moved)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            log.error("the file's new state_dir is in use: %s; clients reading the file reach that one", exc)
            return
        except (OSError, safefs.UnsafeStateDir) as exc:
            log.error("cannot hold the file's new state_dir %s: %s; clients reading the file will not find "
                      "this supervise (state in %s)", moved, exc, self.state_dir)
            return
        server = ControlServer(socket_path(moved), self.handlers())
        self.moved = (lock, server)

        async def listen() -> None:
            try:
                await server.start()
            except (OSError, safefs.UnsafeStateDir) as exc:
                log.error("cannot listen at %s: %s; clients reading the file will not find this supervise "
                          "(state in %s)", server.path, exc, self.state_dir)
                return
            log.warning("listening at %s too, until state_dir is put back or supervise restarts", server.path)

        self.engine.spawn(listen())

    def _release_moved(self) -> None:
        """Let go of the folder held by :meth:`_hold_moved` (the file names ours again, or we stop)."""
        if self.moved is None:
            return
        lock, server = self.moved
        self.moved = None

        async def close() -> None:
            try:
                await server.close()
            finally:
                lock.release()

        try:
            asyncio.get_running_loop().create_task(close())
        except RuntimeError:  # no loop: nothing listens
            lock.release()

    def _watch(self, desired: Desired) -> None:
        if self.file_watcher is not None:
            env_files = [s.env_file for s in desired.services.values() if s.env_file]
            self.file_watcher.set_files([self.path, *env_files])
        self.engine.follow(desired)

    async def reload(self, trigger: str) -> tuple[Plan | None, str]:
        """The one reload path, for a save, SIGHUP and the ``reload`` verb alike: re-read the
        file and apply it. Returns (the plan, "") or (None, the error) for an invalid file,
        which is reported the same way whatever the trigger and never announced as reloaded.
        An explicit trigger (SIGHUP, the verb) reports an error even if a save reported it
        already: whoever asked gets an answer; a save of the same mistake again does not."""
        self.reloads += 1
        log.info("%s: reloading %s", trigger, self.path.name)
        desired = await self.load_async(report=trigger != "save")
        if desired is None:
            return None, self.last_error
        if trigger != "save":  # whoever asks by hand wants the folders' edits too
            await self.engine.refresh_folders(desired)
        the_plan = await self.engine.apply(desired)
        self.notifier.emit(EventType.RELOADED, None, None, trigger=trigger, actions=len(the_plan.lines()))
        return the_plan, ""

    # -- wake-ups --------------------------------------------------------------------------

    def changed(self) -> None:
        """A phase changed or a plan was applied: tell systemd, follow ``[supervise] self``
        once the first pass is done, prove a new version (exec'd by an upgrade) once it applied
        one, and in a run-once see (soon, once per burst of changes) whether the run is over."""
        self.unit.changed()
        if self.freeze_heap and self.reconciler.applied:
            # The start-up's objects (controllers, specs, replicas: hundreds of thousands at
            # 2,000 services) live as long as the supervisor; every full collection scanned them
            # all, and the allocations of one status or reload set one off: 15-20 ms of a
            # status's 60 ms at 2,000 (issue 17). Frozen, collections scan only what came
            # after. Once: what is frozen is never collected as a cycle, so nothing made
            # later ever is; objects are still freed as their references go (reference counts).
            self.freeze_heap = False
            gc.freeze()
        self._follow_self()
        if self.handover.ready_fd is not None and self.reconciler.applied:
            # exec'd by an upgrade: every replica adopted, the socket open, one pass applied
            selfupdate.say_ready(self.handover)
            self._announce_handover()
        if self.until is not None and not self._judging and self.outcome is None:
            self._judging = True
            asyncio.get_running_loop().call_soon(self._judge)

    def _run_is_over(self) -> bool:
        """Run once: whether the run has ended (judged now when a judgement is due), so that
        nothing starts between the verdict and the stop (a dependent of the job that ended it)."""
        if self.until is None:
            return False
        if self.outcome is None:
            self._judge(now=True)  # (also inside the first pass: a job may end before it is over)
        return self.outcome is not None

    def _judge(self, now: bool = False) -> None:
        """Run once: stop every service when :func:`runonce.outcome` says the run is over.
        ``now``: asked before a start, also while the first plan applies."""
        self._judging = False
        if self.until is None or self.outcome is not None or self.stop_event is None or self.stop_event.is_set():
            return
        if self.reconciler.applied == 0 and not now:  # the first plan has not run: nothing is known yet
            return
        outcome = runonce.outcome(self.until, self.reconciler.desired.services, self.reconciler.observe())
        if outcome is None:
            return
        self.outcome = outcome
        log.log(logging.INFO if outcome.code == 0 else logging.ERROR,
                "run once: %s: stopping the rest, exit status %d", outcome.reason, outcome.code)
        self.stop_event.set()

    def on_file_saved(self) -> None:
        self.engine.spawn(self.reload("save"))

    # -- control verbs ---------------------------------------------------------------------

    def handlers(self) -> dict[str, Any]:
        """The control socket's verbs: the server half of each
        :class:`~supervisor.control.verbs.base.Command` (one file each in control/verbs/)."""
        return {name: functools.partial(command.handle, self) for name, command in COMMANDS.items()}

    def _stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    # -- self-update ---------------------------------------------------------------------

    async def upgrade(self, trigger: str, force: bool = False) -> dict[str, Any]:
        """Install the newest version of ``[supervise] self`` beside this one and check it;
        when it passes, set :attr:`exec_plan` (the caller then lets the services go and execs).
        Returns a control reply: ``{"ok": True, "exec": True, "from", "to", "pid"}``, ``{"ok":
        True, "exec": False, "message"}`` (nothing new), or ``{"ok": False, "error", "code"}``.
        ``force``: also try a revision that failed before (a user asked)."""
        if self.upgrading is None:
            self.upgrading = asyncio.Lock()
        if self.upgrading.locked():
            return {"ok": False, "error": "an upgrade is already under way", "code": Code.UPGRADE_FAILED}
        async with self.upgrading:
            if self._stopping():
                return {"ok": False, "error": "supervise is stopping", "code": Code.UPGRADE_FAILED}
            if self.moved_to is not None:  # the new version would start afresh there, beside these
                return {"ok": False, "error": f"{self.path} names state_dir {self.moved_to}, not {self.state_dir}: "
                        "state_dir changes need a restart of supervise", "code": Code.UPGRADE_FAILED}
            spec = self.desired.settings.self_source
            if spec is None:
                return {"ok": False, "error": f"{self.path}: no [supervise] self = {{ git = ... }} or "
                        "{ pip = ... } to upgrade from", "code": Code.UPGRADE_FAILED}
            source = self.self_source = selfupdate.SelfSource(spec, self.state_dir)
            current = selfupdate.label(_version(), self.revision)
            revision: str | None = None
            installed: str | None = None  # once installed, a failure is the version's: not tried again by the poll
            try:
                revision = await asyncio.to_thread(source.latest)
                if revision == self.revision or (spec.kind == "pip" and revision == _version()):
                    return {"ok": True, "exec": False, "message": f"supervise {current} is the newest version"}
                if revision in self.bad_revisions and not force:
                    return {"ok": True, "exec": False,
                            "message": f"{revision[:12]} failed before; still {current} (`supervise upgrade` tries again)"}
                log.info("%s: installing supervise %s beside %s", trigger, revision[:12], current)
                revision, venv = await asyncio.to_thread(source.install, revision)  # (a ref may have moved on)
                if revision == self.revision:  # ... back to what runs
                    return {"ok": True, "exec": False, "message": f"supervise {current} is the newest version"}
                installed = revision
                version = await asyncio.to_thread(source.check, venv, self.path)
                boot = await asyncio.to_thread(selfupdate.boot_file, self.state_dir)
            except selfupdate.UpgradeError as exc:
                return self._upgrade_failed(str(exc), installed)
            assert installed is not None
            new = selfupdate.label(version, installed if spec.kind == "git" else None)
            try:
                await asyncio.to_thread(source.prune, max(2, self.desired.settings.keep_versions),
                                        {venv.name, Path(sys.prefix).name})
            except OSError as exc:
                log.warning("cannot prune old supervise installs: %s", exc)
            ident = os.urandom(8).hex()  # names this upgrade's outcome for the client that waits for it
            mine = {"version": _version(), "revision": self.revision, "id": ident}
            bad = sorted(self.bad_revisions)
            if self._stopping():  # a stop signal came during the install: no exec
                return {"ok": False, "error": "supervise is stopping", "code": Code.UPGRADE_FAILED}
            self.pending_plan = selfupdate.Exec(
                venv=venv, boot=boot, version=version, revision=installed, label=new,
                handover={"revision": installed, "from": mine, "bad": bad},
                fallback={"revision": self.revision, "bad": sorted({*bad, installed}),
                          "failed": {"to": new, "revision": installed, "error": "", "id": ident}})
            log.info("%s: supervise %s passed its checks; handing over to it (pid %d)", trigger, new, os.getpid())
            return {"ok": True, "exec": True, "from": current, "to": new, "pid": os.getpid(), "id": ident}

    def _upgrade_failed(self, error: str, revision: str | None) -> dict[str, Any]:
        """Report a failed upgrade; ``revision`` (a version that failed its checks) is not tried
        again by the poll. A failed fetch or install (maybe the network) is retried at the next."""
        log.error("upgrade of supervise failed, %s keeps running: %s",
                  selfupdate.label(_version(), self.revision), error)
        if revision:
            self.bad_revisions.add(revision)
            selfupdate.save_failed(self.state_dir, self.bad_revisions)
        self.last_upgrade = {"ok": False, "error": error, "revision": revision}
        self.notifier.emit(EventType.UPGRADE_FAILED, None, _version(), error=error)
        return {"ok": False, "error": error, "code": Code.UPGRADE_FAILED}

    def hand_over(self) -> None:
        """Let every service go (as for SIGQUIT) and end :meth:`run`; the CLI then execs
        :attr:`exec_plan` (same pid)."""
        if self._stopping():
            return
        self.detaching = True
        plan = self.exec_plan = self.pending_plan
        if plan is not None:
            plan.handover["paused_at"] = time.monotonic()
            self.notifier.emit(EventType.UPGRADING, None, _version(), **{
                "from": selfupdate.label(_version(), self.revision), "to": plan.label, "pid": os.getpid()})
        if self.stop_event is not None:
            self.stop_event.set()

    def _follow_self(self) -> None:
        """Run the ``[supervise] self`` poll when the file asks for one (a ``poll`` in it) and
        the first pass is done (no exec in the middle of a start); none otherwise: an idle
        supervisor without it has no timer for it."""
        spec = self.desired.settings.self_source
        wanted = spec is not None and spec.poll is not None and self.reconciler.applied > 0 and not self._stopping()
        if wanted and (self.self_poller is None or self.self_poller.done()):
            self.self_poller = asyncio.get_running_loop().create_task(self._poll_self())

    async def _poll_self(self) -> None:
        """Check ``[supervise] self`` now and every ``poll`` seconds while the file has one: a
        new version is installed and exec'd, a bad one reported (and not tried again by the
        poll) while this one keeps running."""
        while True:
            spec = self.desired.settings.self_source
            if spec is None or spec.poll is None:
                return  # (a reload that brings one back starts the poll again)
            reply = await self.upgrade("self poll")
            if reply.get("ok") and reply.get("exec"):
                self.hand_over()
                return
            log.debug("self poll: %s", reply.get("message") or reply.get("error"))
            await asyncio.sleep(spec.poll)

    def _announce_handover(self) -> None:
        """After the exec: say from which version to which this supervise was upgraded, or
        (the old one back) why the new one failed."""
        came = self.handover.upgraded_from
        failed = self.handover.failed
        if came is None and failed is None:
            return
        now = selfupdate.label(_version(), self.revision)
        if came is not None:
            old = selfupdate.label(str(came.get("version")), came.get("revision"))
            figures = {}
            for key, at in (("paused", self.handover.paused_at), ("exec", self.handover.exec_at)):
                if at is not None:
                    figures[key] = round(time.monotonic() - at, 3)
            log.info("supervise upgraded from %s to %s, pid %d%s", old, now, os.getpid(),
                     " (services unattended %.2fs, of which %.2fs from exec to ready)" % (
                         figures["paused"], figures["exec"]) if len(figures) == 2 else "")
            self.last_upgrade = {"ok": True, "from": old, "to": now, "id": came.get("id"), **figures}
            if self.revision in self.bad_revisions:  # tried again by hand, and good this time
                self.bad_revisions.discard(self.revision)
                selfupdate.save_failed(self.state_dir, self.bad_revisions)
            self.notifier.emit(EventType.UPGRADED, None, _version(), **{"from": old, "to": now}, **figures)
        if failed is not None:
            error = f"supervise {failed.get('to')} did not start: {failed.get('error') or 'unknown'}; {now} runs again"
            log.error("upgrade failed: %s", error)
            self.last_upgrade = {"ok": False, "error": error, "revision": failed.get("revision"), "id": failed.get("id")}
            if isinstance(failed.get("revision"), str):
                self.bad_revisions.add(failed["revision"])
                selfupdate.save_failed(self.state_dir, self.bad_revisions)
            self.notifier.emit(EventType.UPGRADE_FAILED, None, _version(), error=error)


    def status_rows(self, names: list[str]) -> list[dict[str, Any]]:
        """The status rows of ``names`` (all with none): a pure view of the observed state."""
        listed = [n for n, spec in self.reconciler.desired.services.items() if spec.replicas > 0]  # 0: as asked
        return views.status_rows(self.reconciler.observe(), names, time.time(), listed)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGINT/SIGTERM (stop every service) or SIGQUIT (leave them running).
        Raises :class:`AlreadyRunning` when another supervisor holds the state dir."""
        loop = asyncio.get_running_loop()
        self.notifier.add_listener(print_event)
        check_trust(self.path, self.desired)
        check_state_dir(self.state_dir, self.desired)
        try:
            return await self._run(loop)
        finally:
            if self.exec_plan is None and self.handover.ready_fd is None:
                self.engine.release()  # else held across the exec (selfupdate.exec_new, or back)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> int:
        soft, _hard = procs.raise_fd_limit()
        needed = 2 * sum(s.replicas for s in self.desired.services.values()) + 64
        if needed > soft:
            log.warning("%d services need about %d file descriptors, but the limit is %d; raise "
                        "LimitNOFILE= (or ulimit -Hn) or some will not start", len(self.desired.services), needed, soft)
        await self.engine.open()
        # the history is ours to write once we hold the state dir's lock; numbers go on from it
        self.history = History(self.state_dir, self.desired.settings.event_history)
        self.history.open()
        self.notifier.seq = max(self.notifier.seq, self.history.last_seq)
        self.notifier.add_listener(self.history.write)
        # signals before the control socket answers: whoever sees it answer may send SIGTERM
        # and must get a clean stop (the default action would kill us and leave the adopted
        # services running); a SIGHUP this early is applied once the first pass runs
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGQUIT, self.on_sigquit)
        early_hups: list[int] = []
        loop.add_signal_handler(signal.SIGHUP, early_hups.append, 1)
        procs.quiet_wakeup_fd()  # each add_signal_handler above turned the warnings back on
        self.control = ControlServer(socket_path(self.state_dir), self.handlers(), inherited=self.handover.control,
                                     settle=self.engine.reconciler.records.flush)
        await self.control.start()
        self.file_watcher = FileWatcher(loop, self.on_file_saved)
        self._watch(self.desired)
        self.state_dir_check = loop.call_later(STATE_DIR_CHECK, self._check_state_dir)


        log.info("supervise %s: %d services from %s (state in %s, pid %d)", _version(),
                 len(self.desired.services), self.path, self.state_dir, os.getpid())
        adopted = await self.reconciler.adopt(self.desired)
        if adopted:
            log.info("adopted %d replica%s left running by the previous supervisor", adopted, "s" if adopted != 1 else "")
        if self.handover.ready_fd is None:
            self._announce_handover()  # (the old one back after a failed upgrade)
        if self.handover.stop:  # a stop signal came while the previous one was handing over
            log.info("stopping, as asked during the upgrade")
            selfupdate.say_ready(self.handover)  # this version does the stop: no going back
            self._announce_handover()
            self.stop_event.set()
        runner = asyncio.create_task(self.engine.run(self.load_async))
        self.reconciler.request()
        self.unit.start()
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        procs.quiet_wakeup_fd()
        if early_hups:
            self.on_sighup()
        stopper = asyncio.create_task(self.stop_event.wait())
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = runner.done() and not runner.cancelled() and runner.exception() is not None
        if failed:  # a bug: still stop cleanly, and exit non-zero so systemd restarts us
            log.error("reconciler failed", exc_info=runner.exception())
            if self.handover.ready_fd is not None:  # a new version that never proved itself
                log.error("leaving every service running for the previous version, which takes over again")
                self.detaching = True
        if self.exec_plan is not None:
            self.unit.sd.reloading()  # the same pid goes on: a reload to systemd, not a stop
        else:
            self.unit.stopping()
        log.info("leaving every service running for the next supervise" if self.detaching
                 else "stopping every service")
        runner.cancel()
        stopper.cancel()
        if self.self_poller is not None:
            self.self_poller.cancel()
        if self.self_source is not None and self.exec_plan is None:
            self.self_source.cancel()  # an install or check under way: killed, not waited for
        self.reconciler.cancel_fetches()  # before the pass in progress is awaited
        await asyncio.gather(runner, stopper, *([self.self_poller] if self.self_poller else []), return_exceptions=True)
        await self.unit.close()  # a SIGHUP reload in progress ends here, before the services stop
        if self.state_dir_check is not None:
            self.state_dir_check.cancel()
        self.file_watcher.stop()
        await self.engine.close(detach=self.detaching)
        self.notifier.close()  # event streams end after the last event, before their connection
        if self.moved is not None:
            lock, server = self.moved
            self.moved = None
            await server.close()
            lock.release()
        if self.exec_plan is not None or self.handover.ready_fd is not None:  # to the next one, or back
            self.control_fd = await self.control.hand_over()
        else:
            await self.control.close()
        if self.console_out is not None:
            self.console_out.close()
        self.history.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            loop.remove_signal_handler(sig)
        plan = self.exec_plan
        if plan is not None:  # until the exec, a stop signal is passed on, not the end of the process

            def stop_later(signum: int, frame: object) -> None:
                plan.handover["stop"] = plan.fallback["stop"] = True

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, stop_later)
        log.info("handing over to supervise %s" % self.exec_plan.version if self.exec_plan is not None
                 else "detached" if self.detaching else "stopped")
        if failed:
            return 1
        if self.until is not None and not self.detaching:  # run once: how the run ended
            if self.outcome is not None:
                return self.outcome.code
            return 128 + (self.stop_signal or signal.SIGTERM)  # stopped before the end, as a shell says
        return 0

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
                self.history.reopen()
                if self.control is not None:
                    loop.create_task(self.control.restart())
                log.warning("state dir %s recreated", self.state_dir)
        except (OSError, safefs.UnsafeStateDir) as exc:
            log.error("state dir %s is gone and cannot be recreated: %s (retrying)", self.state_dir, exc)
        if self.stop_event is None or not self.stop_event.is_set():
            self.state_dir_check = loop.call_later(STATE_DIR_CHECK, self._check_state_dir)

    def on_stop_signal(self, signum: int = signal.SIGTERM) -> None:
        """SIGINT/SIGTERM: stop gracefully; a second one while stopping: SIGKILL everything now
        (a second Ctrl-C means "I will not wait for stop_timeout")."""
        assert self.stop_event is not None
        if self.exec_plan is not None:  # handing over: the services are being let go, not stopped
            log.warning("stop signal during an upgrade: the new supervise stops every service once it has started")
            self.exec_plan.handover["stop"] = self.exec_plan.fallback["stop"] = True
            return
        if not self.stop_event.is_set():
            self.stop_signal = signum
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
        """SIGHUP: :meth:`reload`, between sd_notify's RELOADING=1 and READY=1."""
        self.unit.reload(lambda: self.reload("SIGHUP"))


def print_event(event: Event) -> None:
    """One readable log line per life-cycle event (JSON is what ``supervise events`` gives)."""
    if event.type in (EventType.CONFIG_ERROR, EventType.UPGRADING, EventType.UPGRADED, EventType.UPGRADE_FAILED):
        return  # each already said in a line of its own
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
