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
"""

from __future__ import annotations

import heapq
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

from . import logs

_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,6})? ")
_NOTE = re.compile(rb"^\[supervise (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\] ")


@dataclass(frozen=True)
class Line:
    """One log line: ``time`` in seconds since the epoch (None when unknown), ``text`` decoded
    (bytes that are not UTF-8 become U+FFFD)."""

    service: str
    time: float | None
    text: str

    def json(self) -> str:
        """``{"service": ..., "time": ..., "line": ...}`` on one line."""
        return json.dumps({"service": self.service, "time": self.time, "line": self.text}, ensure_ascii=False)


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
         pattern: re.Pattern[str] | None = None) -> list[Line]:
    """The lines of one service's log, filtered by ``since`` (seconds since the epoch) and
    ``pattern`` (re.search), the last ``count`` of them (all when None).

    A line without a time of its own lies between the dated line above it and the one below it
    (or the file's mtime): it is left out by ``since`` only when it is surely older, that is
    when the dated line below it is. Each Line's ``time`` is the one it carries, else the one
    above it (the merge order), else None."""
    chunks: list[tuple[list[bytes], float]] = []
    if since is None and pattern is None and count is not None:
        chunks.append((logs.last_lines(path, count), 0.0))  # the common case reads backwards, cheaply
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
    for line, own, upper in raw:
        if own is not None:
            current = own
        if since is not None and upper < since:
            continue
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if pattern is not None and not pattern.search(text):
            continue
        out.append(Line(service, current, text))
    if count is None:
        return out
    return out[-count:] if count > 0 else []


def merge(per_service: Iterable[list[Line]]) -> list[Line]:
    """Lines of several services in time order (stable: a service's own order is kept; lines
    with no time first)."""
    return list(heapq.merge(*per_service, key=lambda line: -1.0 if line.time is None else line.time))


class FilteredTail(logs.ConsoleTail):
    """``logs -f`` with ``--grep`` and ``--json``: new lines filtered, then printed as
    ``NAME | line`` or as JSON objects dated when read (or by their own timestamp)."""

    def __init__(self, directory: Path, stream: IO[str], pattern: re.Pattern[str] | None, as_json: bool):
        super().__init__(directory, stream=stream)
        self.pattern = pattern
        self.as_json = as_json

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
        if self.pattern is not None:
            lines = [line for line in lines if self.pattern.search(line.decode("utf-8", "replace"))]
        if not lines:
            return
        if not self.as_json:
            super()._print(followed, lines)
            return
        self._write("".join(Line(followed.name, line_time(line) or now, line.decode("utf-8", "replace")).json() + "\n"
                            for line in lines))
