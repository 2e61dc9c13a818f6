"""The event history: the last events of a state dir, kept in ``STATE_DIR/events/`` so that
``supervise events --since DURATION`` can replay them, across restarts of supervise, before
following the live stream.

Two files of JSON lines, as the live stream prints them (redacted by the bus before they get
here): ``events.jsonl`` is appended to, and when it holds ``keep // 2`` events (or
:data:`MAX_FILE_BYTES` bytes) it is renamed over ``events.jsonl.1`` (one atomic rename; the
older half goes) and a new one begun. So the history holds between ``keep // 2`` and ``keep``
events, at most ``2 * MAX_FILE_BYTES`` bytes: logrotate's scheme with one backup.

Files are opened relative to the folder's fd without following symlinks (:mod:`safefs`), 0600
in a 0700 folder. A write that fails (a full disk) drops that event from the history, never
from the live stream, and is reported once. A torn last line (a supervisor killed mid-write)
is skipped on reading.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import safefs
from .events import Event

log = logging.getLogger("supervise")

FOLDER = "events"
CURRENT = "events.jsonl"
OLDER = "events.jsonl.1"
#: Events kept by default (``[supervise] event_history``).
DEFAULT_KEEP = 10_000
#: The largest a history file grows (bytes) before it rotates, whatever its count.
MAX_FILE_BYTES = 4 << 20


def folder(state_dir: Path) -> Path:
    """``STATE_DIR/events``."""
    return state_dir / FOLDER


def _open_in(dfd: int, name: str, flags: int) -> int:
    """``name`` in the folder ``dfd``, never through a symlink; a regular file of ours with one
    link, or OSError."""
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600, dir_fd=dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        raise OSError(f"{name}: not a plain file of ours")
    return fd


def _lines(fd: int, limit: int) -> list[bytes]:
    """The whole lines of the open file ``fd`` (at most ``limit`` bytes read)."""
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    lines = data.split(b"\n")
    return lines[:-1]  # the last is "" after a final newline, or a torn line: skipped


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("seq"), int) else None


class History:
    """The writer, owned by the running supervisor (it holds the state dir's lock). Give
    :meth:`write` to the bus as a listener after :meth:`open`; :attr:`last_seq` is the
    ``seq`` of the newest event written, so the bus goes on numbering from there."""

    def __init__(self, state_dir: Path, keep: int = DEFAULT_KEEP):
        self.path = folder(state_dir)
        self.per_file = max(1, keep // 2)
        self.fd: int | None = None
        self.count = 0  # events in the current file
        self.size = 0  # its bytes
        self.last_seq = 0
        self.failed = False  # a write failed and was reported; reset by the next that works

    def open(self) -> None:
        """Open (or make) the current file and read where the history stands. A history that
        cannot be opened is reported and left off (the live stream does not need it)."""
        try:
            safefs.ensure_dir(self.path)
            dfd = safefs.open_dir(self.path)
            try:
                newest = 0
                for name in (OLDER, CURRENT):
                    try:
                        fd = _open_in(dfd, name, os.O_RDONLY)
                    except FileNotFoundError:
                        continue
                    with os.fdopen(fd, "rb") as f:
                        lines = _lines(f.fileno(), 4 * MAX_FILE_BYTES)
                    events = [e for e in map(_parse, lines) if e is not None]
                    if events:
                        newest = max(newest, max(e["seq"] for e in events))
                    if name == CURRENT:
                        self.count, self.size = len(lines), sum(len(line) + 1 for line in lines)
                self.last_seq = newest
                self.fd = _open_in(dfd, CURRENT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            finally:
                os.close(dfd)
        except OSError as exc:
            log.warning("event history in %s is off: %s", self.path, exc)
            self.fd = None

    def write(self, event: Event) -> None:
        """Append ``event`` (a bus listener); rotate first when the current file is full."""
        if event.seq is not None:
            self.last_seq = event.seq
        if self.fd is None:
            return
        line = (event.to_json() + "\n").encode()
        try:
            if self.count >= self.per_file or (self.count and self.size + len(line) > MAX_FILE_BYTES):
                self._rotate()
            os.write(self.fd, line)
        except OSError as exc:
            if not self.failed:
                log.warning("event history: cannot write %s (%s); events go on live, not into the history",
                            self.path / CURRENT, exc.strerror or exc)
            self.failed = True
            return
        self.failed = False
        self.count += 1
        self.size += len(line)

    def _rotate(self) -> None:
        """``events.jsonl`` -> ``events.jsonl.1`` (one rename, replacing the older half), then a
        new, empty ``events.jsonl``."""
        dfd = safefs.open_dir(self.path)
        try:
            os.replace(CURRENT, OLDER, src_dir_fd=dfd, dst_dir_fd=dfd)
            fd = _open_in(dfd, CURRENT, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
        finally:
            os.close(dfd)
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.count, self.size = fd, 0, 0

    def reopen(self) -> None:
        """The state dir was made again under us: begin a new history there."""
        self.close()
        self.count = self.size = 0
        self.open()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class Snapshot:
    """The history files as they were at one instant (open fds), to read later in a thread
    while the writer goes on: a rotation after the instant does not change what is read."""

    fds: list[int]
    upto: int  # the seq of the last event written before the instant
    #: After :meth:`read`: the time of the oldest event kept when older ones were let go (its
    #: seq is above 1), else None: a ``since`` before it asked for more than is kept.
    kept_from: float | None = None

    def read(self, since: float | None, names: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The events with ``seq <= upto`` and ``timestamp >= since`` (all with None), of the
        services ``names`` (all when empty), oldest first, each once. Closes the fds."""
        wanted = set(names)
        found: dict[int, dict[str, Any]] = {}
        oldest: dict[str, Any] | None = None
        try:
            for fd in self.fds:
                for line in _lines(fd, 4 * MAX_FILE_BYTES):
                    event = _parse(line)
                    if event is None or event["seq"] > self.upto:
                        continue
                    if oldest is None or event["seq"] < oldest["seq"]:
                        oldest = event
                    if since is not None and not (isinstance(event.get("timestamp"), (int, float))
                                                  and event["timestamp"] >= since):
                        continue
                    if wanted and event.get("service") not in wanted:
                        continue
                    found[event["seq"]] = event
        finally:
            self.close()
        stamp = oldest.get("timestamp") if oldest is not None else None
        self.kept_from = float(stamp) if oldest is not None and oldest["seq"] > 1 and isinstance(
            stamp, (int, float)) else None
        return [found[seq] for seq in sorted(found)]

    def note(self, since: float | None) -> str | None:
        """One line for the user when ``since`` reaches back past what is kept, else None."""
        if since is None or self.kept_from is None or since >= self.kept_from:
            return None
        import time

        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.kept_from))
        return f"events before {when} are no longer kept (raise [supervise] event_history to keep more)"

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def snapshot(state_dir: Path, upto: int) -> Snapshot:
    """Open the history files of ``state_dir`` now (older first); a missing one is skipped.
    Raises OSError (``safefs.UnsafeStateDir``) when the folder is not ours."""
    dfd = safefs.open_dir(folder(state_dir))
    fds = []
    try:
        for name in (OLDER, CURRENT):
            try:
                fds.append(_open_in(dfd, name, os.O_RDONLY))
            except FileNotFoundError:
                continue
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(dfd)
    return Snapshot(fds, upto)


def read(state_dir: Path, since: float | None, names: Iterable[str] = ()) -> tuple[list[dict[str, Any]], str | None]:
    """(every event of the history with ``timestamp >= since``, :meth:`Snapshot.note`), for
    ``events --since`` with no supervisor running. No events when there is no history."""
    try:
        shot = snapshot(state_dir, upto=1 << 62)
    except OSError:
        return [], None
    return shot.read(since, names), shot.note(since)
