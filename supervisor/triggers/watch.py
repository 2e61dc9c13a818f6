"""What wakes the reconciler: file saves (watchdog) and new commits (the git poller).

**Config saves.** Editors save in many ways: in place, truncate-then-write in chunks, write a
temporary file and rename it over, delete and recreate. We reload when a write is *finished*:
inotify's ``IN_CLOSE_WRITE`` on the file (a writer that keeps the file open mid-save is never
read half-way), or a rename onto it, then after a debounce of :data:`DEBOUNCE` seconds of
quiet (:data:`RENAME_DEBOUNCE` after a rename: the file is complete at once). A plain modification with no close (a writer that never closes, or a filesystem without
close events) is picked up after :data:`QUIET` seconds of quiet. A burst of events is one reload.

**Local sources** with ``watch`` globs: matching edits (state dir and VCS folders ignored) end
in one rebuild and restart per burst of saves, after :data:`SOURCE_DEBOUNCE` seconds of quiet.

**Git sources** are asked for their ref's commit every ``poll`` seconds (``git ls-remote``,
nothing fetched). A failure is logged once per distinct message, reported as one event per outage, and retried with backoff, up
to the poll interval; what runs keeps running.

The source watcher and the git poller are notifiers for updates of go-micro's shape
(:class:`supervisor.observe.events.UpdateNotifier`): they only *say* a service has a new version, as an
``update`` event; the engine reads them (``Engine.listen``) exactly as it reads a caller's own
notifier, and decides.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..observe.events import Updates
from ..desired.model import ServiceSpec
from ..decide.plan import same_revision
from ..execute.sources import SourceError
from ..execute.sources.git import GitSource
from ..execute.sources.path import IGNORED_DIRS
from ..execute.sources.pip import PipSource

log = logging.getLogger("supervise")


class _StopRace(logging.Filter):
    """Drops watchdog's "InotifyEmitter.queue_events() called when the thread is inactive":
    logged at ERROR by an emitter thread that was between its should-keep-running check and
    its read when ``Observer.stop`` (from whatever thread, in whatever order) closed its
    inotify group: a harmless shutdown race inside watchdog (since 3.0, gorakhargosh/watchdog
    PR 963: "return as if there were no events, and log"), about one stop in four under load.
    Every other watchdog record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and record.msg.__class__ is str
                    and record.msg.startswith("InotifyEmitter.queue_events() called when the thread is inactive"))


STOP_RACE = _StopRace()
logging.getLogger("watchdog.observers.inotify").addFilter(STOP_RACE)

#: Seconds of quiet after a finished save before the reload (one reload per save).
DEBOUNCE = 0.15
#: The same after a rename onto the file (the atomic save of most editors and tools): the file
#: is complete at once, so only the tail of the editor's burst (a chmod, a second rename) is
#: waited for. Half the 150 ms reload target of issue 17 went to the debounce before.
RENAME_DEBOUNCE = 0.03
#: Seconds of quiet after an unfinished write (no close seen) before reloading anyway.
QUIET = 10.0
#: Seconds of quiet after edits to a watched local source before it is rebuilt.
SOURCE_DEBOUNCE = 0.3


class Debouncer:
    """Calls ``callback`` once, ``delay`` seconds after the last :meth:`poke` (on the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]):
        self.loop = loop
        self.callback = callback
        self.timer: asyncio.TimerHandle | None = None
        self.last_poke = 0.0

    def poke(self, delay: float) -> None:
        """Restart the countdown with ``delay`` s (``last_poke`` records when, monotonic)."""
        self.last_poke = time.monotonic()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, self._fire)

    def poke_threadsafe(self, delay: float) -> None:
        self.loop.call_soon_threadsafe(self.poke, delay)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        self.callback()


class FileWatcher:
    """Watches a set of files (the config and its env files) and calls ``on_change`` once per
    finished save. Paths can be replaced with :meth:`set_files` after each reload."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]):
        self.loop = loop
        self.debouncer = Debouncer(loop, on_change)
        self.observer = Observer()
        self.observer.daemon = True
        self.files: set[Path] = set()
        self.watched_dirs: dict[Path, object] = {}
        self.observer.start()

    def set_files(self, files: Iterable[Path]) -> None:
        """Watch exactly ``files`` from now on (the config and its env files). A symlinked file
        is watched at both ends: the link (a swap of it is a save) and the file it names (an
        edit through the link is one too); called again after each reload, which follows a
        swapped link to its new target."""
        given = [Path(os.path.abspath(f)) for f in files]
        self.files = {*given, *(Path(os.path.realpath(f)) for f in given)}
        wanted = {f.parent for f in self.files}
        for folder in set(self.watched_dirs) - wanted:
            self.observer.unschedule(self.watched_dirs.pop(folder))  # type: ignore[arg-type]
        for folder in wanted - set(self.watched_dirs):
            if folder.is_dir():
                self.watched_dirs[folder] = self.observer.schedule(_Handler(self), str(folder), recursive=False)

    def stop(self) -> None:
        self.debouncer.cancel()
        self.observer.stop()
        self.observer.join(timeout=5)

    # called on the watchdog thread
    def event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        hit = [Path(os.fsdecode(p)) for p in paths if p and Path(os.fsdecode(p)) in self.files]
        if not hit:
            return
        kind = event.event_type
        if kind in ("closed", "moved", "created"):
            if kind == "moved" and Path(os.fsdecode(event.src_path)) in self.files and not (
                    getattr(event, "dest_path", "") and Path(os.fsdecode(event.dest_path)) in self.files):
                return  # the file was moved away: wait for the new one
            self.loop.call_soon_threadsafe(self._finished, kind == "moved")
        elif kind == "modified":
            self.loop.call_soon_threadsafe(self._modified)
        # "deleted": wait for the file to come back (delete-and-recreate saves)

    def _finished(self, renamed: bool = False) -> None:
        self.debouncer.poke(RENAME_DEBOUNCE if renamed else DEBOUNCE)

    def _modified(self) -> None:
        # A write is under way: hold any pending reload until the writer has been quiet.
        self.debouncer.poke(QUIET)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "opened" or event.is_directory:
            return
        self.watcher.event(event)


def glob_match(relative: str, patterns: Iterable[str]) -> bool:
    """``relative`` (with ``/``) matches one of the globs; ``**/`` also matches no folder."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(relative, pattern):
            return True
        while pattern.startswith("**/"):
            pattern = pattern[3:]
            if fnmatch.fnmatchcase(relative, pattern):
                return True
    return False


class SourceWatcher(Updates):
    """Watches local-folder sources that have ``watch`` globs: one ``update`` event per burst
    of matching edits, naming no version (the folder's content now: the engine hashes it),
    with ``data`` ``{"trigger": "edit", "last_edit": T}`` (T: monotonic time of the last edit).

    Several services may follow one folder: the folder has one watchdog watch (watchdog keys
    its watches by path, so a second ``schedule`` of the path is the same watch and one
    ``unschedule`` would end both), shared and reference-counted by the services on it; each
    service keeps its own globs and debouncer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, state_dir: Path):
        super().__init__()
        self.loop = loop
        self.state_dir = state_dir.resolve()
        self.observer = Observer()
        self.observer.daemon = True
        self.observer.start()
        #: service name -> (folder, globs, debouncer)
        self.watches: dict[str, tuple[Path, tuple[str, ...], Debouncer]] = {}
        #: folder -> (watchdog watch, the handler holding every service on that folder)
        self.folders: dict[Path, tuple[object, _SourceHandler]] = {}

    def set_services(self, specs: Iterable[ServiceSpec]) -> None:
        """Follow exactly the sources of ``specs`` from now on (unchanged ones keep their state).

        A folder that cannot be watched (gone, out of inotify watches) is logged and skipped.
        """
        wanted = {s.name: s for s in specs if s.watch and s.source.kind == "path" and s.source.path}
        for name in list(self.watches):
            root, globs, debouncer = self.watches[name]
            spec = wanted.get(name)
            if spec is None or spec.source.path != root or spec.watch != globs:
                debouncer.cancel()
                del self.watches[name]
                self._release(root, name)
        for name, spec in wanted.items():
            if name in self.watches:
                continue
            path = spec.source.path
            assert path is not None
            root = path

            def changed(name: str = name) -> None:
                self.update(name, None, trigger="edit", last_edit=self.watches[name][2].last_poke)

            debouncer = Debouncer(self.loop, changed)
            if self._hold(root, name, spec.watch, debouncer):
                self.watches[name] = (root, spec.watch, debouncer)

    def services_on(self, root: Path) -> set[str]:
        """The services following folder ``root`` now (its reference count is their number)."""
        entry = self.folders.get(root)
        return set(entry[1].services) if entry else set()

    def _hold(self, root: Path, name: str, globs: tuple[str, ...], debouncer: Debouncer) -> bool:
        entry = self.folders.get(root)
        if entry is None:
            handler = _SourceHandler(self, root)
            try:
                watch = self.observer.schedule(handler, str(root), recursive=True)
            except (OSError, ValueError) as exc:
                log.error("%s: cannot watch %s: %s (edits there are not followed)", name, root, exc)
                return False
            entry = self.folders[root] = (watch, handler)
        handler = entry[1]
        # replaced whole, never mutated: the watchdog thread reads it without a lock
        handler.services = {**handler.services, name: (globs, debouncer)}
        return True

    def _release(self, root: Path, name: str) -> None:
        entry = self.folders.get(root)
        if entry is None:
            return
        watch, handler = entry
        handler.services = {n: v for n, v in handler.services.items() if n != name}
        if not handler.services:
            del self.folders[root]
            try:
                self.observer.unschedule(watch)  # type: ignore[arg-type]
            except (KeyError, OSError) as exc:  # already gone with its folder
                log.debug("unwatching %s: %r", root, exc)

    def stop(self) -> None:
        """Stop watching and end the event stream."""
        for _root, _globs, debouncer in self.watches.values():
            debouncer.cancel()
        self.observer.stop()
        self.observer.join(timeout=5)
        self.close()


class _SourceHandler(FileSystemEventHandler):
    """The one handler of a watched folder: pokes the debouncer of every service on it whose
    globs match the edited path."""

    def __init__(self, watcher: SourceWatcher, root: Path):
        self.watcher = watcher
        self.root = root
        self.services: dict[str, tuple[tuple[str, ...], Debouncer]] = {}

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        relatives = []
        for raw in (event.src_path, getattr(event, "dest_path", "") or ""):
            if not raw:
                continue
            path = Path(os.fsdecode(raw))
            if path.is_relative_to(self.watcher.state_dir):
                continue
            try:
                relative = path.relative_to(self.root)
            except ValueError:
                continue
            if any(part in IGNORED_DIRS for part in relative.parts[:-1]):
                continue
            relatives.append(relative.as_posix())
        for globs, debouncer in self.services.values():
            if any(glob_match(relative, globs) for relative in relatives):
                debouncer.poke_threadsafe(SOURCE_DEBOUNCE)


class GitPoller(Updates):
    """Polls each git source's remote ref, and each pip source's index (the version pip
    would install now): an ``update`` event when it moved, its version the revision found,
    ``data`` ``{"revision": REV, "trigger": "poll"}``.

    ``interval(spec)`` gives the poll period in seconds. Errors are reported through
    ``on_error(name, message)`` once per distinct message, then retried with doubling delays
    from 1 s up to the poll period; ``on_recovered(name)`` when the source answers again.
    """

    def __init__(self, root_for: Callable[[str], Path], interval: Callable[[ServiceSpec], float],
                 on_error: Callable[[str, str], None], on_recovered: Callable[[str], None] = lambda name: None):
        super().__init__()
        self.root_for = root_for
        self.interval = interval
        self.on_error = on_error
        self.on_recovered = on_recovered
        self.tasks: dict[str, tuple[ServiceSpec, asyncio.Task]] = {}
        self.known: dict[str, str] = {}

    def set_services(self, specs: Iterable[ServiceSpec]) -> None:
        wanted = {s.name: s for s in specs if s.source.kind in ("git", "pip")}
        for name in list(self.tasks):
            spec, task = self.tasks[name]
            new = wanted.get(name)
            if new is None or new.source != spec.source:
                task.cancel()
                del self.tasks[name]
                self.known.pop(name, None)
        for name, spec in wanted.items():
            if name not in self.tasks:
                self.tasks[name] = (spec, asyncio.get_running_loop().create_task(self._poll(spec)))

    async def _poll(self, spec: ServiceSpec) -> None:
        if spec.source.kind == "pip":  # the newest version on the index that satisfies it
            remote_revision = PipSource(spec.source, self.root_for(spec.name)).latest
        else:
            remote_revision = GitSource(spec.source, self.root_for(spec.name)).remote_revision
        last_error = ""
        retry = 1.0
        while True:
            period = self.interval(spec)
            await asyncio.sleep(period if not last_error else min(retry, period))
            try:
                commit = await asyncio.to_thread(remote_revision)
            except SourceError as exc:
                if str(exc) != last_error:
                    self.on_error(spec.name, str(exc))
                last_error = str(exc)
                retry = min(retry * 2, period)
                continue
            except asyncio.CancelledError:
                raise
            if last_error:
                log.info("%s: %s reachable again", spec.name, spec.source.describe())
                self.on_recovered(spec.name)
            last_error, retry = "", 1.0
            known = self.known.get(spec.name)
            if known is None or not same_revision(commit, known):
                self.known[spec.name] = commit
                self.update(spec.name, commit, revision=commit, trigger="poll")

    def stop(self) -> None:
        """Stop polling and end the event stream."""
        for _spec, task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        self.close()
