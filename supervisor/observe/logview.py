"""``supervise logs``: reading the log files back, several services merged in time order,
``--since``, ``--grep`` and ``--json`` (one object a line).

Where a line's time comes from: the log files carry no time of their own on each line unless
the service has ``log = { timestamps = true }`` (then every line starts with
``YYYY-MM-DDTHH:MM:SS.mmm``, local time). Otherwise a line only lies between the supervisor
notes around it (``[supervise YYYY-MM-DDTHH:MM:SS] started ...``, written at each start, stop
and exit) or the file's mtime: the merge places it at the note above it, and ``--since``
keeps it unless the note below it is older. So without ``timestamps`` both are only as fine
as the service's starts and stops; lines above the first note read sort first. In JSON,
``time`` is the line's own time (a stamp or a note), else the note's above it, else null;
lines read while following are dated when they are read.

Whose a line is: each run of output in a file is headed by an origin line
``[supervise TIME] >> NAME[INDEX] stdout|stderr`` (see :meth:`logs.LogSink.write`); every line
up to the next origin line is that replica's and stream's. Origin lines themselves are not shown;
they give each Line its ``replica`` and ``stream`` (``"supervise"`` for our own notes, None when
unknown: above the first origin line read).
"""

from __future__ import annotations

import heapq
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

from ..execute import logs

_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,6})? ")
_NOTE = re.compile(rb"^\[supervise (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\] ")
_ORIGIN = re.compile(rb"^\[supervise [^\]]*\] >> \S+\[(\d+)\] (stdout|stderr)$")
_NOTE_REPLICA = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Filter:
    """``logs --replica N --stream stdout|stderr``: None is no filter on that field."""

    replica: int | None = None
    stream: str | None = None

    def __bool__(self) -> bool:
        return self.replica is not None or self.stream is not None

    def keeps(self, line: "Line") -> bool:
        """True when ``line`` passes. Our notes pass a replica filter when they name
        ``[N]``, and never pass a stream filter."""
        if self.stream is not None and line.stream != self.stream:
            return False
        if self.replica is None:
            return True
        if line.stream == "supervise":
            return any(int(m) == self.replica for m in _NOTE_REPLICA.findall(line.text))
        return line.replica == self.replica


def origin_of(line: bytes) -> tuple[int, str] | None:
    """``(replica, stream)`` when ``line`` is an origin line, else None."""
    match = _ORIGIN.match(line)
    return (int(match.group(1)), match.group(2).decode()) if match else None


@dataclass(frozen=True)
class Line:
    """One log line: ``time`` in seconds since the epoch (None when unknown), ``text`` decoded
    (bytes that are not UTF-8 become U+FFFD)."""

    service: str
    time: float | None
    text: str
    replica: int | None = None
    stream: str | None = None  # "stdout", "stderr", "supervise" (our notes) or None (unknown)

    def json(self) -> str:
        """``{"service": ..., "time": ..., "replica": ..., "stream": ..., "line": ...}`` on one line."""
        return json.dumps({"service": self.service, "time": self.time, "replica": self.replica,
                           "stream": self.stream, "line": self.text}, ensure_ascii=False)


def line_time(line: bytes) -> float | None:
    """The time a line carries itself (a ``timestamps`` prefix or a supervisor note), or None."""
    match = _STAMP.match(line) or _NOTE.match(line)
    if match is None:
        return None
    try:
        seconds = time.mktime(time.strptime(match.group(1).decode(), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None
    fraction = match.group(2) if match.re is _STAMP else None
    return seconds + (float(fraction) if fraction else 0.0)


def files_of(path: Path, since: float | None) -> list[Path]:
    """``NAME.log`` and, when reading back to ``since``, the rotated ``NAME.log.N`` written
    after it (oldest first)."""
    if since is None:
        return [path]
    older = []
    index = 1
    while True:
        backup = path.with_name(f"{path.name}.{index}")
        try:
            if backup.stat().st_mtime < since:
                break
        except OSError:
            break
        older.append(backup)
        index += 1
    return [*reversed(older), path]


def read(service: str, path: Path, count: int | None, since: float | None = None,
         pattern: re.Pattern[str] | None = None, only: Filter = Filter()) -> list[Line]:
    """The lines of one service's log, filtered by ``since`` (seconds since the epoch) and
    ``pattern`` (re.search), the last ``count`` of them (all when None).

    A line without a time of its own lies between the dated line above it and the one below it
    (or the file's mtime): it is left out by ``since`` only when it is surely older, that is
    when the dated line below it is. Each Line's ``time`` is the one it carries, else the one
    above it (the merge order), else None."""
    chunks: list[tuple[list[bytes], float]] = []
    if since is None and pattern is None and not only and count is not None:
        chunks.append((_last_with_context(path, count), 0.0))
    else:
        for file in files_of(path, since):
            try:
                data = file.read_bytes()
                mtime = file.stat().st_mtime
            except OSError:
                continue
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            chunks.append((lines, mtime))
    raw: list[tuple[bytes, float | None, float]] = []  # (line, own time, no later than)
    for lines, mtime in reversed(chunks):
        upper = mtime
        for line in reversed(lines):
            own = line_time(line)
            if own is not None:
                upper = own
            raw.append((line, own, upper))
    raw.reverse()
    out: list[Line] = []
    current: float | None = None
    origin: tuple[int | None, str | None] = (None, None)
    for line, own, upper in raw:
        if own is not None:
            current = own
        found = origin_of(line)
        if found is not None:
            origin = found
            continue
        if since is not None and upper < since:
            continue
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if pattern is not None and not pattern.search(text):
            continue
        item = Line(service, current, text, *((None, "supervise") if _NOTE.match(line) else origin))
        if only and not only.keeps(item):
            continue
        out.append(item)
    if count is None:
        return out
    return out[-count:] if count > 0 else []


#: The most lines :func:`read` looks back for the origin line and note above its last lines.
CONTEXT_LINES = 100_000


def _last_with_context(path: Path, count: int) -> list[bytes]:
    """The last lines of ``path``: ``2 * count + 1`` (origin lines are not shown), and further
    back, up to :data:`CONTEXT_LINES`, until an origin line and a supervisor note lie above
    them, so the last lines of a busy replica still say whose they are and when it started
    (``-n 2`` of a replica that wrote for hours has both far above)."""
    shown = 2 * count + 1
    window = shown
    while True:
        lines = logs.last_lines(path, window)
        above = lines[:-shown]
        if (len(lines) < window or window >= CONTEXT_LINES
                or (any(_ORIGIN.match(line) for line in above) and any(_NOTE.match(line) for line in above))):
            return lines
        window = min(CONTEXT_LINES, window * 8)


def merge(per_service: Iterable[list[Line]]) -> list[Line]:
    """Lines of several services in time order (stable: a service's own order is kept; lines
    with no time first)."""
    return list(heapq.merge(*per_service, key=lambda line: -1.0 if line.time is None else line.time))


class FilteredTail(logs.ConsoleTail):
    """``logs -f`` with ``--grep`` and ``--json``: new lines filtered, then printed as
    ``NAME | line`` or as JSON objects dated when read (or by their own timestamp)."""

    def __init__(self, directory: Path, stream: IO[str], pattern: re.Pattern[str] | None, as_json: bool,
                 only: Filter = Filter()):
        super().__init__(directory, stream=stream)
        self.pattern = pattern
        self.as_json = as_json
        self.only = only
        self.origins: dict[str, tuple[int | None, str | None]] = {}  # service -> last origin read

    def show(self, line: Line) -> None:
        """Print one line already read (and filtered) by :func:`read`, of an added service."""
        if self.as_json:
            self._write(line.json() + "\n")
            return
        followed = next(f for f in self.files.values() if f.name == line.service)
        super()._print(followed, [line.text.encode("utf-8", "replace")])

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _print(self, followed, lines: list[bytes]) -> None:  # type: ignore[override]
        now = time.time()
        kept: list[Line] = []
        for raw in lines:
            found = origin_of(raw)
            if found is not None:
                self.origins[followed.name] = found
                continue
            text = raw.decode("utf-8", "replace")
            if self.pattern is not None and not self.pattern.search(text):
                continue
            origin = (None, "supervise") if _NOTE.match(raw) else self.origins.get(followed.name, (None, None))
            line = Line(followed.name, line_time(raw) or now, text, *origin)
            if not self.only or self.only.keeps(line):
                kept.append(line)
        if not kept:
            return
        if not self.as_json:
            super()._print(followed, [line.text.encode("utf-8", "replace") for line in kept])
            return
        self._write("".join(line.json() + "\n" for line in kept))
