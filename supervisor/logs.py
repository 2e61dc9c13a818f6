"""Per-service log files and the prefixed console view of them.

Design: a replica's stdout and stderr are the log file itself, opened ``O_APPEND`` — the child
writes straight to a file the supervisor does not own. So a child that writes fast never waits
on us, nothing is lost if the supervisor dies or is slow, and adopted replicas keep logging
across a supervisor restart. The console view (``NAME | line``) follows the files with inotify
(watchdog), so it costs nothing while services are quiet.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import IO

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

COLOURS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)
#: Longest piece of a line shown at once on the console; the file keeps the whole line.
MAX_CONSOLE_LINE = 64 * 1024


def log_dir(state_dir: Path) -> Path:
    return state_dir / "logs"


def log_path(state_dir: Path, service: str) -> Path:
    """``STATE_DIR/logs/NAME.log``; ``service`` must be a validated name (config.NAME_RE)."""
    return log_dir(state_dir) / f"{service}.log"


def open_log(path: Path) -> int:
    """An ``O_APPEND`` write fd for ``path`` (created 0640, folders 0700). Caller closes it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


NOTE_PREFIX = b"[supervise "


def append_note(path: Path, text: str) -> None:
    """Append a supervisor note (``[supervise] text``) to a service log, one write(2)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    fd = open_log(path)
    try:
        os.write(fd, f"[supervise {stamp}] {text}\n".encode("utf-8", "replace"))
    finally:
        os.close(fd)


def last_lines(path: Path, count: int, chunk: int = 65536) -> list[bytes]:
    """The last ``count`` complete lines of ``path`` (read backwards, so large logs are cheap);
    our own ``[supervise ...]`` notes included. Empty when the file does not exist."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            data = b""
            position = end
            while position > 0 and data.count(b"\n") <= count:
                step = min(chunk, position)
                position -= step
                f.seek(position)
                data = f.read(step) + data
    except OSError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines[-count:]


def use_colour(stream: IO[str]) -> bool:
    """Colour only on a terminal and without ``NO_COLOR`` (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class ConsoleTail:
    """Prints new lines of service log files as ``NAME | line`` to ``stream``.

    ``add(name, path)`` starts following from the file's current end. Truncation (rotation,
    a user's ``> file``) restarts from offset 0; a replaced file is reopened by name. Bytes that
    are not UTF-8 are shown with U+FFFD, the file keeps them as written.
    """

    def __init__(self, directory: Path, stream: IO[str] | None = None, colour: bool | None = None):
        self.directory = directory
        self.stream = stream or sys.stdout
        self.colour = use_colour(self.stream) if colour is None else colour
        self.files: dict[Path, _Followed] = {}
        self.lock = threading.Lock()
        self.width = 8
        self.observer: Observer | None = None
        self.notes = False  # our own notes go to stderr in the foreground; `logs` shows them

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.observer = Observer()
        self.observer.schedule(_Handler(self), str(self.directory), recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None
        for path in list(self.files):
            self.poll(path)

    def add(self, name: str, path: Path) -> None:
        with self.lock:
            if path in self.files:
                return
            try:
                offset = path.stat().st_size
            except OSError:
                offset = 0
            self.width = max(self.width, len(name))
            colour = COLOURS[zlib.crc32(name.encode()) % len(COLOURS)]
            self.files[path] = _Followed(name, offset, colour)

    def poll(self, path: Path) -> None:
        """Read and print whatever was appended to ``path`` since the last call."""
        with self.lock:
            followed = self.files.get(path)
            if followed is None:
                return
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size < followed.offset:
                        followed.offset = 0
                    f.seek(followed.offset)
                    data = f.read()
            except OSError:
                return
            followed.offset += len(data)
            lines = followed.feed(data)
            if lines:
                self._print(followed, lines)

    def _print(self, followed: "_Followed", lines: list[bytes]) -> None:
        name = followed.name.ljust(self.width)
        prefix = f"\x1b[{followed.colour}m{name} |\x1b[0m " if self.colour else f"{name} | "
        out = "".join(prefix + line.decode("utf-8", "replace") + "\n" for line in lines
                      if self.notes or not line.startswith(NOTE_PREFIX))
        try:
            self.stream.write(out)
            self.stream.flush()
        except (OSError, ValueError):
            pass


class _Followed:
    def __init__(self, name: str, offset: int, colour: int):
        self.name = name
        self.offset = offset
        self.colour = colour
        self.partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        while len(self.partial) > MAX_CONSOLE_LINE:
            lines.append(self.partial[:MAX_CONSOLE_LINE])
            self.partial = self.partial[MAX_CONSOLE_LINE:]
        return [line.rstrip(b"\r") for line in lines]


class _Handler(FileSystemEventHandler):
    def __init__(self, tail: ConsoleTail):
        self.tail = tail

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        path = Path(os.fsdecode(event.src_path))
        if path in self.tail.files:
            self.tail.poll(path)
