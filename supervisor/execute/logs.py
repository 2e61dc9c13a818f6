"""Per-service log files, fed through FIFOs that outlive the supervisor, and the console.

Design (issue 5, "nothing lost"): a replica's stdout and stderr are a FIFO in
``STATE_DIR/run/``, which the child holds open for reading *and* writing (``O_RDWR``). The
supervisor reads the other end with a :class:`Pump` on its event loop and appends whole lines
to ``STATE_DIR/logs/NAME.log`` through the service's :class:`LogSink`. Because the child itself
holds a read end, a supervisor that dies never makes the child's writes fail (no SIGPIPE); the
kernel keeps up to 1 MiB of output in the FIFO until the next supervisor adopts the replica and
drains it, so no line is lost across a restart. A child that writes more than that while no
supervisor runs waits, rather than losing lines. (Output still buffered when a child *exits*
while no supervisor runs is lost with the pipe: the kernel frees it.)

Owning the file is what makes rotation safe: lines are written whole, rotation happens only
between lines, and a log file deleted or moved by hand is noticed (inode check) and recreated.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import fcntl
import io
import os
import logging
import queue
import stat
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from ..observe import safefs
from ..desired.model import LogPolicy
from ..redaction import redact
from ..term import use_colour

COLOURS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)
#: Longest piece of a line shown at once on the console; the file keeps the whole line.
MAX_CONSOLE_LINE = 64 * 1024
#: A line longer than this (bytes) is written out in pieces rather than held in memory.
MAX_PARTIAL = 16 * 1024 * 1024
#: Bytes read from a pipe per read(2).
READ_SIZE = 1 << 20
#: Pipe capacity asked for (Linux caps it at /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
log = logging.getLogger("supervise")
SPLICE_F_NONBLOCK = 2
#: Seconds an unfinished line may stay in a FIFO before it is taken out and held in memory.
PARTIAL_WAIT = 0.2
#: Seconds between looks at a FIFO whose last line is unfinished.
PARTIAL_POLL = 0.005
#: After a wake-up that moved less than BATCH_BYTES out of a FIFO, the pump waits BATCH_WAIT
#: seconds before it looks again (see :meth:`Pump._readable`). A writer streaming 200 MB/s
#: fills 1 MiB in 5 ms: it never waits for room, and a line is in the file 1 ms after it.
BATCH_WAIT = 0.001
BATCH_BYTES = 256 * 1024


def log_dir(state_dir: Path) -> Path:
    """``STATE_DIR/logs``."""
    return state_dir / "logs"


def run_dir(state_dir: Path) -> Path:
    """``STATE_DIR/run``, where the replicas' output FIFOs live."""
    return state_dir / "run"


def log_path(state_dir: Path, service: str) -> Path:
    """``STATE_DIR/logs/NAME.log``; ``service`` must be a validated name (config.NAME_RE)."""
    return log_dir(state_dir) / f"{service}.log"


class Console:
    """Prints service lines as ``NAME | line`` on ``stream`` from a thread of its own, so a
    slow or stuck terminal never stalls the supervisor: past ``limit`` queued batches, console
    output is dropped (the log files keep everything) and the count is reported."""

    def __init__(self, stream: IO[str] | None = None, colour: bool | None = None, limit: int = 10000):
        self.stream = stream or sys.stdout
        self.colour = use_colour(self.stream) if colour is None else colour
        self.width = 8
        self.queue: queue.Queue[str | None] = queue.Queue(limit)
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name="console", daemon=True)
        self.thread.start()

    def prefix(self, name: str) -> str:
        self.width = max(self.width, len(name))
        label = name.ljust(self.width)
        if self.colour:
            colour = COLOURS[zlib.crc32(name.encode()) % len(COLOURS)]
            return f"\x1b[{colour}m{label} |\x1b[0m "
        return f"{label} | "

    def lines(self, name: str, data: bytes) -> None:
        """Queue the lines of ``data`` for printing (a last piece without newline too)."""
        prefix = self.prefix(name)
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the usual case: data ends with a newline
        text = "".join(prefix + line[:MAX_CONSOLE_LINE].decode("utf-8", "replace").rstrip("\r") + "\n"
                       for line in lines)
        if not text:
            return
        try:
            self.queue.put_nowait(text)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Print what is queued and stop the thread; say how many batches were dropped."""
        if self.dropped:
            self.queue.put(f"supervise | console: {self.dropped} batches of output not shown "
                           "(the terminal was too slow); the log files have them\n")
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            text = self.queue.get()
            if text is None:
                return
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass


class Sink(Protocol):
    """Where a :class:`Pump` writes: a :class:`LogSink`, or a wrapper of one (a build's tail)."""

    policy: LogPolicy

    def write(self, data: bytes, source: int | None = None, label: str | None = None) -> None: ...


#: Bytes a line may carry a log file past its ``max_bytes`` before it is split (a newline put
#: in) and the file rotated: output that never writes a newline still rotates. journald splits
#: lines longer than ``LineMax=`` (48K) the same way.
LONG_LINE = 64 * 1024


class LogSink:
    """Appends whole lines to one service's log file; rotates; survives the file being moved.

    Not thread-safe: used from the event loop only.
    """

    def __init__(self, name: str, path: Path, policy: LogPolicy = LogPolicy(), console: Console | None = None):
        self.name = name
        self.path = path
        self.policy = policy
        self.console = console
        self.fd: int | None = None
        self.inode: tuple[int, int] | None = None
        self.size = 0
        self.tees: list[IO[Any]] = []  # more streams for the lines (the Runtime API's output=)
        self.mid_line = False  # the file ends inside a line (output that had no newline yet)
        self.origin: str | None = None  # whose output the file's last lines are ("api[1] stderr")
        self.last_build_line = ""  # the last non-empty line of the build under way, for status
        self.error = ""  # why the file cannot be written now (disk full, ...)
        self.dropped_bytes = 0  # output dropped since the last successful write
        self.dropped_lines = 0
        self.total_dropped_lines = 0
        self._written_now = 0

    def _open(self) -> int:
        folder = safefs.ensure_dir(self.path.parent)
        # Not O_APPEND: splice(2) refuses append-mode files. We are the file's only writer and
        # write at self.size explicitly (pwrite / splice with an offset). O_NOFOLLOW through
        # a checked folder fd: a symlink planted as NAME.log is refused, never written through.
        dfd = safefs.open_dir(folder)
        try:
            fd = os.open(self.path.name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o640, dir_fd=dfd)
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink > 1:
            os.close(fd)
            raise OSError(errno.EPERM, f"{self.path} is not a plain file of ours (a link?); not writing to it")
        os.set_blocking(fd, True)
        self.fd, self.inode, self.size = fd, (st.st_dev, st.st_ino), st.st_size
        self.origin = None  # a file we did not write last: the next output says whose it is
        return fd

    def _file(self) -> int:
        """The open fd, reopened when the file was deleted or moved away by hand (so the space
        of a deleted log comes back: we never keep a deleted file open)."""
        if self.fd is not None:
            try:
                st = os.stat(self.path, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == self.inode:
                    return self.fd
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return self._open()

    def write(self, data: bytes, source: int | None = None, label: str | None = None,
              origin: str | None = None) -> None:
        """Append ``data`` (whole lines, or a piece of an over-long line).

        ``origin`` names the writer (``NAME[INDEX] stdout|stderr``). When it is not the writer of
        the file's last output, an origin line ``[supervise TIME] >> ORIGIN`` comes first (and
        ends the other writer's unfinished line): every line below it, up to the next origin
        line, is that replica's and stream's (``supervise logs`` reads them so). A file starts
        with one too (after rotation, or when another supervisor wrote it last).

        With ``source`` (a pipe fd whose next bytes are exactly ``data``, seen with tee(2)),
        the bytes are *moved* from the pipe into the file with splice(2): each piece leaves the
        pipe and lands in the file in one system call, so a supervisor killed at any instant
        neither loses nor repeats a line. Not with ``timestamps`` (the caller then consumes).
        """
        if not data:
            return
        if source is not None and self.policy.timestamps:
            raise ValueError("splice cannot add timestamps")
        if origin is not None and origin != self.origin:
            self._switch(origin)
        if self.policy.timestamps:
            stamp = _timestamp().encode()
            lines = data.split(b"\n")
            tail = lines.pop()
            data = b"".join(stamp + line + b"\n" for line in lines) + (stamp + tail if tail else b"")
            if self.mid_line:  # the first piece continues a line that already has its stamp
                data = data[len(stamp):]
        limit = self.policy.max_bytes
        rest = memoryview(data)
        overshoot = min(LONG_LINE, limit)
        fresh = self.size == 0  # nothing in the file yet but (maybe) our origin line
        while rest:
            if self.mid_line:
                # never rotate inside a line, unless the line is past max_bytes + LONG_LINE
                # (output with no newline): it is split there, as journald splits lines over
                # LineMax, and the file stays bounded
                allowed = limit + overshoot - self.size
                if len(rest) <= allowed:
                    piece, rest = rest, rest[len(rest):]
                elif allowed > 0:
                    piece, rest = rest[:allowed], rest[allowed:]
                else:
                    if not self._rotate_for(rest, source, origin, end_line=True):
                        break
                    fresh = True
                    continue
            elif self.size + len(rest) <= limit:
                piece, rest = rest, rest[len(rest):]
            else:
                # the part that fits, up to its last whole line; none fits: rotate first
                room = limit - self.size
                cut = bytes(rest[:room]).rfind(b"\n") + 1 if room > 0 else 0
                if cut == 0 and not fresh:
                    if not self._rotate_for(rest, source, origin):
                        break
                    fresh = True
                    continue
                if cut == 0:  # a fresh file, and its first line alone is over max_bytes
                    newline = bytes(rest[:limit + overshoot]).find(b"\n")
                    cut = newline + 1 if newline >= 0 else max(1, limit + overshoot - self.size)
                piece, rest = rest[:cut], rest[cut:]
            fresh = False
            if not self._append_or_drop(piece, source):
                self._drop(rest, source)
                break
            self.mid_line = not bytes(piece[-1:]) == b"\n"
        if self.console is not None:
            self.console.lines(label or self.name, data)
        for tee in self.tees:
            try:
                tee.write(data.decode("utf-8", "replace") if isinstance(tee, io.TextIOBase) else data)
                tee.flush()
            except (OSError, ValueError, TypeError):
                pass

    def _rotate_for(self, rest: memoryview, source: int | None, origin: str | None, end_line: bool = False) -> bool:
        """Rotate before writing ``rest`` (first ending the file's unfinished line with
        ``end_line``), then name ``origin`` at the top of the new file. When the file cannot be
        rotated, ``rest`` is dropped and counted; returns False then."""
        try:
            if end_line:
                self._append(memoryview(b"\n"))
                self.mid_line = False
            self._rotate()
        except OSError as exc:
            self._failed(exc)
            self._drop(rest, source)
            return False
        if origin is not None:
            self._switch(origin)
        return True

    def _switch(self, origin: str) -> None:
        """Write the origin line of ``origin`` (after ending an unfinished line of another)."""
        line = f"[supervise {time.strftime('%Y-%m-%dT%H:%M:%S')}] >> {origin}\n".encode()
        if self.mid_line:
            line = b"\n" + line
        try:
            self._append(memoryview(line))
        except OSError:
            return  # the output that follows is dropped (and counted) the same way
        self.origin = origin
        self.mid_line = False

    def end_line(self, origin: str | None) -> None:
        """End the file's unfinished line if ``origin`` wrote it (its writer is gone)."""
        if self.mid_line and origin is not None and self.origin == origin:
            try:
                self._append(memoryview(b"\n"))
                self.mid_line = False
            except OSError:
                pass

    def _append_or_drop(self, data: memoryview, source: int | None) -> bool:
        """Append ``data``; when the file cannot be written (disk full, quota, I/O error, a
        planted link) the bytes are dropped (taken out of ``source`` too, so the child never
        blocks on a full pipe), counted, and reported by a note once writing works again.
        Returns False when it dropped."""
        if self.dropped_bytes:
            self._report_dropped()
        try:
            self._append(data, source)
            if self.error and not self.dropped_bytes:
                self.error = ""
            return True
        except OSError as exc:
            self._failed(exc)
            self._drop(data[self._written_now:], source)
            return False

    def _failed(self, exc: OSError) -> None:
        if not self.error:
            log.error("%s: cannot write %s: %s; output is dropped (and counted) until it can be written",
                      self.name, self.path, exc.strerror or exc)
        self.error = exc.strerror or str(exc)
        if self.fd is not None:  # reopen next time: a deleted file's space must come back
            os.close(self.fd)
            self.fd = None

    def _drop(self, data: memoryview | bytes, source: int | None) -> None:
        if source is not None and len(data):
            try:
                _consume(source, len(data))
            except OSError:
                pass
        self.dropped_bytes += len(data)
        self.dropped_lines += bytes(data).count(b"\n")
        self.mid_line = False

    def _report_dropped(self) -> None:
        text = (f"[supervise {time.strftime('%Y-%m-%dT%H:%M:%S')}] {self.dropped_lines} lines "
                f"({self.dropped_bytes} bytes) of output dropped: the log could not be written ({self.error})\n")
        line = (b"\n" if self.mid_line else b"") + text.encode()
        try:
            self._append(memoryview(line))
        except OSError:
            return
        log.warning("%s: log writable again; %d lines (%d bytes) were dropped", self.name,
                    self.dropped_lines, self.dropped_bytes)
        self.total_dropped_lines += self.dropped_lines
        self.dropped_bytes = self.dropped_lines = 0
        self.error = ""
        self.mid_line = False

    @property
    def trouble(self) -> str:
        """What is wrong with this log now, for status ("" when it is fine)."""
        if not self.error and not self.dropped_bytes:
            return ""
        return (f"log not writable ({self.error}): {self.dropped_lines} lines "
                f"({self.dropped_bytes} bytes) of output dropped so far")

    def _append(self, data: memoryview, source: int | None = None) -> None:
        self._written_now = 0
        fd = self._file()
        while data:
            if source is None:
                written = os.pwrite(fd, data, self.size)
            else:
                written = os.splice(source, fd, len(data), offset_dst=self.size)
                if written == 0:  # cannot happen: the bytes were seen in the pipe
                    raise OSError(errno.EIO, "splice moved nothing")
            data = data[written:]
            self.size += written
            self._written_now += written

    def note(self, text: str) -> None:
        """A supervisor note in the log file: ``[supervise TIME] text`` (on a line of its own;
        not echoed to the console, where our own log line says the same)."""
        line = f"[supervise {time.strftime('%Y-%m-%dT%H:%M:%S')}] {redact(text)}\n".encode("utf-8", "replace")
        if self.mid_line:
            line = b"\n" + line
        console, tees, self.console, self.tees = self.console, self.tees, None, []
        try:
            self.write(line)
        finally:
            self.console, self.tees = console, tees

    def _rotate(self) -> None:
        """NAME.log -> NAME.log.1 -> ... -> NAME.log.BACKUPS (the oldest dropped), between
        two lines; with 0 backups the file is truncated instead."""
        backups = self.policy.backups
        if backups <= 0:
            os.ftruncate(self._file(), 0)  # our own fd: never a path that could be a symlink
            self.size = 0
            self.origin = None
            return
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.size = 0
        self.origin = None
        dfd = safefs.open_dir(self.path.parent)
        base = self.path.name
        try:  # renames inside the folder's fd: a rename never follows a symlink
            for index in range(backups - 1, 0, -1):
                try:
                    os.replace(f"{base}.{index}", f"{base}.{index + 1}", src_dir_fd=dfd, dst_dir_fd=dfd)
                except FileNotFoundError:
                    pass
            try:
                os.replace(base, f"{base}.1", src_dir_fd=dfd, dst_dir_fd=dfd)
            except FileNotFoundError:
                pass
        finally:
            os.close(dfd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class LogRegistry:
    """The sinks of one state dir, by service name, created on first use."""

    def __init__(self, state_dir: Path, console: Console | None = None):
        self.state_dir = state_dir
        self.console = console
        self.sinks: dict[str, LogSink] = {}

    def sink(self, name: str, policy: LogPolicy | None = None) -> LogSink:
        """The sink of service ``name`` (made on first use); ``policy`` replaces its rotation policy."""
        sink = self.sinks.get(name)
        if sink is None:
            sink = self.sinks[name] = LogSink(name, log_path(self.state_dir, name), policy or LogPolicy(), self.console)
        elif policy is not None:
            sink.policy = policy
        return sink

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()


_libc = None


def _tee(fd_in: int, fd_out: int, length: int) -> int:
    """tee(2): copy up to ``length`` bytes from pipe ``fd_in`` to pipe ``fd_out`` without
    consuming them. Raises OSError (EAGAIN when there is nothing to copy yet)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.tee.restype = ctypes.c_ssize_t
        _libc.tee.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
    copied = _libc.tee(fd_in, fd_out, length, SPLICE_F_NONBLOCK)
    if copied < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return copied


class CopyPipe:
    """The pipe a :class:`Pump` tee(2)s a FIFO's bytes into to look at them, shared by the
    pumps of one event loop: each pump empties it before it returns to the loop, so one pipe
    serves them all. Two fds in all instead of two per pump matter: every fork copies the
    supervisor's fd table and every exec closes it, and at 2 copy fds per pump (4 per replica)
    starting the 2,000th service cost a millisecond and more than starting the first (issue 17).
    Made on first use; :meth:`get` gives None when no pipe can be made (the pump then reads
    plainly) or after :meth:`close`."""

    def __init__(self) -> None:
        self.fds: tuple[int, int] | None = None
        self.closed = False

    def get(self) -> tuple[int, int] | None:
        """``(read fd, write fd)``, or None (see the class doc)."""
        if self.fds is None and not self.closed:
            try:
                fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                fcntl.fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            self.fds = fds
        return self.fds

    def drain(self) -> None:
        """Throw away whatever a failed copy left in the pipe (the next pump must find it empty)."""
        if self.fds is not None:
            try:
                while os.read(self.fds[0], READ_SIZE):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        """Close the pipe for good."""
        self.closed = True
        if self.fds is not None:
            for fd in self.fds:
                os.close(fd)
            self.fds = None


class Pump:
    """Moves a pipe's output into a sink, whole lines at a time, from the event loop.

    With ``keep_until_written`` (replica FIFOs) the bytes are looked at with tee(2) (a copy,
    nothing consumed), and whole lines are then *moved* from the FIFO into the log file with
    splice(2): a supervisor killed at any instant leaves every line either in the log or still
    in the FIFO for the next one, never both, never neither. (With ``timestamps`` the lines
    are written first and consumed after: a kill in between repeats a line, never loses it.)
    Without it (build pipes) it reads plainly. ``copy_pipe``: the :class:`CopyPipe` to use (one
    of its own otherwise, closed with it).

    ``done`` resolves at end of file: every writer (the child and anything it left running with
    the same stdout) has closed it. A last line without a newline is written with one.
    """

    # two per replica: slots, not an instance dict each
    __slots__ = ("loop", "fd", "sink", "label", "origin", "force", "on_eof", "partial", "unfinished_since",
                 "paused", "done", "copy", "_own_copy")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, sink: Sink,
                 on_eof: Callable[[], None] | None = None, keep_until_written: bool = False,
                 label: str | None = None, origin: str | None = None, copy_pipe: CopyPipe | None = None):
        self.loop = loop
        self.fd = fd
        self.sink = sink
        self.label = label  # the console prefix of this writer (e.g. "api.1")
        self.origin = origin  # who writes into this pipe, for the log file ("api[1] stderr")
        self.force = False  # write an unfinished last line now (see flush)
        self.on_eof = on_eof
        self.partial = b""  # the start of a line, consumed from the pipe, waiting for its end
        self.unfinished_since: float | None = None
        self.paused = False
        self.done: asyncio.Future[None] = loop.create_future()
        self.copy: CopyPipe | None = None
        self._own_copy = False
        if keep_until_written:
            self.copy = copy_pipe if copy_pipe is not None else CopyPipe()
            self._own_copy = copy_pipe is None
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        fds = self.copy.get() if self.copy is not None else None
        if fds is not None:
            moved = 0
            try:
                moved = self._pump_copying(fds)
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    assert self.copy is not None
                    self.copy.drain()
                    self.close()
            if 0 < moved < BATCH_BYTES and not self.done.done() and not self.force:
                # Let the FIFO fill a little before the next look. Woken at every write of a
                # block-buffered writer (8 KiB), the pump cost the writer a wake-up of ours
                # per write (the kernel wakes a reader when a write finds the pipe empty, and
                # ours emptied it each time) and the machine our 30 us per wake-up: 3,000 to
                # 9,000 wake-ups for the bench's 500,000 lines, now one a millisecond or so.
                self._pause(BATCH_WAIT)
            return
        chunks = []
        eof = False
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                eof = True
                break
            chunks.append(data)
            if len(data) < READ_SIZE:
                break
        if chunks:
            self._lines(b"".join(chunks))
        if eof:
            self.close()

    def _pump_copying(self, fds: tuple[int, int]) -> int:
        """Move the FIFO's whole lines into the sink; returns how many bytes it took out."""
        read_copy, write_copy = fds
        moved = 0
        for _ in range(16):  # at most 16 MiB per wake-up, then let others run
            try:
                copied = _tee(self.fd, write_copy, READ_SIZE)
            except BlockingIOError:
                if moved:
                    return moved
                raise
            if copied == 0:  # no data and no writer left: end of file
                self.close()
                return moved
            data = os.read(read_copy, copied)
            while len(data) < copied:  # the copy pipe is shared: leave nothing of ours in it
                data += os.read(read_copy, copied - len(data))
            buffer = self.partial + data
            cut = buffer.rfind(b"\n") + 1
            if cut == 0 and len(buffer) <= MAX_PARTIAL and not self.force:
                # No whole line yet (a writer may send "37" and "\n" in two writes). Leave it in
                # the FIFO and look again shortly; only a line still unfinished after
                # PARTIAL_WAIT s (a prompt, say) is written out as it is.
                now = time.monotonic()
                if self.unfinished_since is None:
                    self.unfinished_since = now
                if now - self.unfinished_since < PARTIAL_WAIT:
                    self._pause(PARTIAL_POLL)
                    return 0  # (nothing taken: no batching pause on top)
                # still unfinished (a progress bar, a prompt): write what there is; the file
                # then ends mid-line and the rest of the line follows it
                cut = len(buffer)
            self.unfinished_since = None
            cut = cut or len(buffer)
            if self.partial or self.sink.policy.timestamps:
                self._write(buffer[:cut], label=self.label)  # first into the log ...
                _consume(self.fd, cut - len(self.partial))  # ... then out of the FIFO
            else:
                self._write(buffer[:cut], source=self.fd, label=self.label)  # spliced
            self.partial = b""
            moved += cut
            if cut < len(buffer) and not self.force:  # the start of the next line stays in the FIFO for now
                break
            if copied < READ_SIZE:
                break
        return moved

    def _write(self, data: bytes, **how: Any) -> None:
        """``sink.write``, naming this pump's origin when it has one (build sinks take none)."""
        if self.origin is not None:
            how["origin"] = self.origin
        self.sink.write(data, **how)

    def _pause(self, delay: float) -> None:
        """Stop reading for ``delay`` s (the pipe stays readable while a line is unfinished)."""
        if self.paused:
            return
        self.paused = True
        self.loop.remove_reader(self.fd)

        def resume() -> None:
            self.paused = False
            if not self.done.done():
                self.loop.add_reader(self.fd, self._readable)
                self._readable()

        self.loop.call_later(delay, resume)

    def _lines(self, data: bytes) -> None:
        buffer = self.partial + data if self.partial else data
        cut = buffer.rfind(b"\n") + 1
        self._write(buffer[:cut])
        self.partial = buffer[cut:]
        if len(self.partial) > MAX_PARTIAL or (self.force and self.partial):
            self._write(self.partial)
            self.partial = b""

    def flush(self) -> None:
        """Write everything the pipe holds now, an unfinished last line too (the writer has
        exited: its last words go in before the note of its exit, and the next writer's
        output starts on a line of its own)."""
        if self.done.done():
            return
        self.force = True
        try:
            self._readable()
        finally:
            self.force = False
        if not self.done.done() and self.origin is not None and isinstance(self.sink, LogSink):
            self.sink.end_line(self.origin)

    def close(self, end_line: bool = True) -> None:
        """Stop reading (at end of file, or when the supervisor stops; the FIFO keeps what
        was not read for the next supervisor)."""
        if self.done.done():
            return
        if not self.paused:
            self.loop.remove_reader(self.fd)
        if self.partial:
            self._write(self.partial + b"\n")
            self.partial = b""
        if end_line and self.origin is not None and isinstance(self.sink, LogSink):
            self.sink.end_line(self.origin)
        os.close(self.fd)
        if self.copy is not None and self._own_copy:
            self.copy.close()
        self.done.set_result(None)
        if self.on_eof is not None:
            self.on_eof()


    def detach(self) -> None:
        """Stop reading without ending: what is in the FIFO stays for the next supervisor (an
        unfinished line we already took out is written now, without a newline added)."""
        if self.done.done():
            return
        self.on_eof = None
        if self.partial:
            self._write(self.partial)
            self.partial = b""
        self.close(end_line=False)  # the line may go on in the next supervisor


def _consume(fd: int, count: int) -> None:
    """Drop ``count`` bytes from the front of pipe ``fd`` (they are known to be there)."""
    while count > 0:
        count -= len(os.read(fd, min(count, READ_SIZE)))


def make_fifo(state_dir: Path, name: str, index: int) -> tuple[Path, int, int]:
    """A new FIFO for a replica's output: (path, our non-blocking read fd, the child's fd).

    The child's fd is opened ``O_RDWR``, so the child holds a reader itself (see the module
    doc). Pass it as stdout and stderr, then close it here.
    """
    folder = safefs.ensure_dir(run_dir(state_dir))
    dfd = safefs.open_dir(folder)
    try:
        return _make_fifo_at(folder, dfd, f"{name}.{index}.{os.urandom(4).hex()}.fifo")
    finally:
        os.close(dfd)


def _make_fifo_at(folder: Path, dfd: int, entry: str, made: bool = False) -> tuple[Path, int, int]:
    """:func:`make_fifo` of ``folder/entry``, ``dfd`` an fd on the (checked) folder; ``made``:
    the FIFO is there already (a spare renamed into place: see :class:`Prefab`)."""
    if not made:
        os.mkfifo(entry, 0o600, dir_fd=dfd)  # fails on any existing entry: never reused
    read_fd = os.open(entry, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        child_fd = os.open(entry, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        os.close(read_fd)
        raise
    try:
        fcntl.fcntl(read_fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # smaller pipes still work; only the buffer during a supervisor restart shrinks
    return folder / entry, read_fd, child_fd


def make_fifos(state_dir: Path, name: str, index: int,
               spares: Prefab | None = None) -> tuple[Path, int, int, int, int]:
    """A replica's two output FIFOs: ``(stdout path, stdout read fd, stdout child fd, stderr
    read fd, stderr child fd)``; the stderr FIFO is at :func:`err_fifo` of the stdout path.
    Both are made through one checked fd on ``STATE_DIR/run`` (a replica start is mostly
    such file-system calls); with ``spares``, a pair made ahead (:class:`Prefab`) is renamed
    into place instead when there is one."""
    folder = safefs.ensure_dir(run_dir(state_dir))
    dfd = safefs.open_dir(folder)
    try:
        entry = f"{name}.{index}.{os.urandom(4).hex()}.fifo"
        spare = spares.take_fifos(dfd, entry) if spares is not None else False
        path, out_read, out_child = _make_fifo_at(folder, dfd, entry, made=spare)
        err = err_fifo(path)
        try:
            err_path, err_read, err_child = _make_fifo_at(folder, dfd, err.name, made=spare)
        except OSError:
            for fd in (out_read, out_child):
                os.close(fd)
            for stale in (path, err):
                try:
                    os.unlink(stale)
                except OSError:
                    pass
            raise
    finally:
        os.close(dfd)
    return path, out_read, out_child, err_read, err_child


class Prefab:
    """What a burst of replica starts will need from the file system, made ahead in a thread
    beside the event loop: output FIFO pairs (spares, renamed into place at the start) and the
    services' log files (created empty; a sink opens them at its first line).

    Each is a new inode, and on ext4 a new inode cost ~0.4 ms of kernel time where the rename
    that puts a spare in place costs a twentieth of it: three per replica start were most of
    the supervisor's own time in a cold start of 500 (issue 17). :meth:`expect` is the hint
    (the reconciler gives it the plan's starts); a start that finds no spare makes its FIFOs
    itself, as before. Spares are ``STATE_DIR/run/.spare-RANDOM.fifo`` and
    ``.spare-RANDOM.err.fifo`` (0600, like every FIFO there); :meth:`close` removes those left,
    and :meth:`remove_stale` those a supervisor killed meanwhile left. Thread-safe."""

    PREFIX = ".spare-"

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self._spares: collections.deque[str] = collections.deque()  # stems whose two FIFOs exist
        self._todo: collections.deque[str | None] = collections.deque()  # log files to create; None: a FIFO pair
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def expect(self, fifo_pairs: int, services: Iterable[str] = ()) -> None:
        """``fifo_pairs`` replica starts are coming, for ``services`` (their log files)."""
        with self._lock:
            if self._closed:
                return
            # validated names (config.NAME_RE); never a path however they came
            self._todo.extend(name for name in services if name and "/" not in name and not name.startswith("."))
            self._todo.extend([None] * max(0, fifo_pairs - len(self._spares)))
            if self._thread is None and self._todo:
                self._thread = threading.Thread(target=self._make, name="supervise-prefab", daemon=True)
                self._thread.start()

    def take_fifos(self, dfd: int, entry: str) -> bool:
        """Rename a spare pair to ``entry`` and its :func:`err_fifo` name in the folder ``dfd``;
        False when there is none (or the rename failed: the caller makes its own)."""
        try:
            stem = self._spares.popleft()
        except IndexError:
            return False
        err = entry[: -len(".fifo")] + ".err.fifo"
        try:
            os.rename(stem + ".fifo", entry, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            _unlink_quietly(dfd, stem + ".err.fifo")
            return False
        try:
            os.rename(stem + ".err.fifo", err, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            _unlink_quietly(dfd, entry)
            return False
        return True

    def _make(self) -> None:
        run_fd = log_fd = None
        try:
            run_fd = safefs.open_dir(safefs.ensure_dir(run_dir(self.state_dir)))
            log_fd = safefs.open_dir(safefs.ensure_dir(log_dir(self.state_dir)))
            while True:
                with self._lock:
                    if self._closed or not self._todo:
                        self._thread = None
                        return
                    item = self._todo.popleft()
                if item is None:
                    stem = f"{self.PREFIX}{os.urandom(6).hex()}"
                    os.mkfifo(stem + ".fifo", 0o600, dir_fd=run_fd)
                    try:
                        os.mkfifo(stem + ".err.fifo", 0o600, dir_fd=run_fd)
                    except OSError:
                        _unlink_quietly(run_fd, stem + ".fifo")
                        raise
                    self._spares.append(stem)
                else:  # the log file, as LogSink._open makes it (never through a symlink)
                    os.close(os.open(f"{item}.log", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                                     | os.O_CLOEXEC, 0o640, dir_fd=log_fd))
        except OSError:  # a full disk, a removed state dir: the starts make their own, and say why
            with self._lock:
                self._todo.clear()
                self._thread = None
        finally:
            for fd in (run_fd, log_fd):
                if fd is not None:
                    os.close(fd)

    def close(self) -> None:
        """Make nothing more and remove the spares left (waits for a file being made)."""
        with self._lock:
            self._closed = True
            self._todo.clear()
            thread = self._thread
        if thread is not None:
            thread.join(5.0)
        self.remove_stale()

    def remove_stale(self) -> None:
        """Remove every spare FIFO in ``STATE_DIR/run`` (ours, or left by a supervisor killed
        meanwhile): only FIFOs of ours named ``.spare-*``."""
        self._spares.clear()
        try:
            folder = run_dir(self.state_dir)
            names = [n for n in os.listdir(folder) if n.startswith(self.PREFIX) and n.endswith(".fifo")]
            if not names:
                return
            dfd = safefs.open_dir(folder)
        except OSError:
            return
        try:
            for name in names:
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISFIFO(st.st_mode) and st.st_uid == os.geteuid():
                    _unlink_quietly(dfd, name)
        finally:
            os.close(dfd)


def _unlink_quietly(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def err_fifo(path: Path) -> Path:
    """The stderr FIFO that goes with the stdout FIFO ``path`` (``X.fifo`` -> ``X.err.fifo``)."""
    return path.with_name(path.name[: -len(".fifo")] + ".err.fifo")


def reopen_fifo(path: Path) -> int | None:
    """Our read end of an existing FIFO (a replica being adopted), or None if it is gone or is
    not a FIFO of ours (not followed through a symlink; see :func:`fifo_is_ours`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        return None
    return fd


def fifo_is_ours(state_dir: Path, path: Path) -> bool:
    """True when ``path`` (from a state record) names a FIFO directly in ``STATE_DIR/run``
    (symlinks resolved), owned by us: the only paths a record may make us open or unlink."""
    folder = run_dir(state_dir)
    if not path.name.endswith(".fifo") or not safefs.is_inside(path, folder):
        return False
    try:
        st = os.lstat(folder / path.name)
    except OSError:
        return False
    return stat.S_ISFIFO(st.st_mode) and st.st_uid == os.geteuid()


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d} "


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
        self.observer: BaseObserver | None = None

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
            self.files[path].close()

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
        """Read and print whatever was appended to ``path`` since the last call. The file is
        kept open: when it is rotated (renamed to ``NAME.log.1``, a new ``NAME.log`` made),
        the lines written to the old file since the last call are read from the open file
        first, then the new one from its start (``tail -F`` does the same); none is lost."""
        with self.lock:
            followed = self.files.get(path)
            if followed is None:
                return
            chunks = []
            try:
                if followed.file is None:
                    followed.open(path)
                chunks.append(followed.read_rest())
                try:
                    replaced = os.stat(path).st_ino != followed.inode
                except OSError:
                    replaced = False  # moved away, the new one not made yet: the next event
                if replaced:
                    followed.open(path, offset=0)
                    chunks.append(followed.read_rest())
            except OSError:
                pass
            lines = followed.feed(b"".join(chunks))
            if lines:
                self._print(followed, lines)

    def _print(self, followed: "_Followed", lines: list[bytes]) -> None:
        name = followed.name.ljust(self.width)
        prefix = f"\x1b[{followed.colour}m{name} |\x1b[0m " if self.colour else f"{name} | "
        out = "".join(prefix + line.decode("utf-8", "replace") + "\n" for line in lines)
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
        self.file: IO[bytes] | None = None
        self.inode: int | None = None

    def open(self, path: Path, offset: int | None = None) -> None:
        """Follow the file now at ``path`` (from ``offset``; None: where we were). Raises OSError."""
        new = open(path, "rb")
        if self.file is not None:
            self.file.close()
        self.file, self.inode = new, os.fstat(new.fileno()).st_ino
        if offset is not None:
            self.offset = offset

    def read_rest(self) -> bytes:
        """What the open file holds past our offset (from 0 when it was truncated in place)."""
        assert self.file is not None
        if os.fstat(self.file.fileno()).st_size < self.offset:
            self.offset = 0
        self.file.seek(self.offset)
        data = self.file.read()
        self.offset += len(data)
        return data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

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
        # poll() opens the file: its own "opened"/"closed_no_write" events must not call it
        # again, or the tail wakes itself in a loop (watchdog >= 4 reports them).
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        path = Path(os.fsdecode(event.src_path))
        if path in self.tail.files:
            self.tail.poll(path)
