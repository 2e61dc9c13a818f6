"""``supervise top`` (and ``status --watch``): a full-screen live view of the running supervisor.

It is a client like every other verb. It follows the supervisor's ``events`` stream and asks
``status`` (on a fresh connection) only after an event, at most once a second, plus once every
:data:`FULL_REFRESH` seconds as a safety net; between those, uptimes advance on the client's
clock and CPU and memory are re-read from /proc. So an idle supervisor with ``top`` attached
does next to nothing. When the stream ends (a restart or in-place upgrade of supervise) ``top``
shows "no supervisor" and connects again every second until one answers. CPU and memory come from
psutil by pid (the replica's process and its descendants); the log tail is read from
``STATE_DIR/logs/NAME.log`` as ``supervise logs`` reads it; the dependency order comes from the
config file (re-read when it changes). Nothing here runs inside the supervisor, so attaching
``top`` costs it one small ``status`` request a second.

Keys: up/down select, ``s`` start, ``x`` stop, ``r`` restart the selected service, ``f``
follow (or pause) its log, ``q`` quit.

The Textual app is built in :func:`make_app` so that ``import supervisor.top`` (and every other
verb) stays free of Textual; :func:`fetch` and the formatting helpers are plain functions.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .control.client import Client, ControlError, NotRunning
from .desired.durations import format_duration

#: Seconds between two status requests: the supervisor serves at most one a second per ``top``.
INTERVAL = 1.0
#: Seconds between two status requests when no event came (uptime and usage need none).
FULL_REFRESH = 15.0
#: Lines of the selected service's log shown.
LOG_LINES = 200
#: Key bindings (key, action, description): the man page lists them (tests/unit/test_man.py).
KEYS = (("s", "start", "start"), ("x", "stop", "stop"), ("r", "restart", "restart"),
        ("f", "follow", "follow log"), ("q", "quit", "quit"))
COLUMNS = ("SERVICE", "REPLICA", "PHASE", "PID", "VERSION", "UPTIME", "RESTARTS", "LAST EXIT", "READY",
           "CPU", "MEM", "MESSAGE")


@dataclass
class Snapshot:
    """One look at the supervisor: ``rows`` as ``status --json`` gives them (plus ``cpu``, percent
    of one core, and ``rss``, bytes, when the pid could be read), ``supervisor`` its own facts,
    ``error`` the one-line reason when there is no answer, ``order`` the dependency levels."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    supervisor: dict[str, Any] | None = None
    error: str = ""
    order: list[list[str]] = field(default_factory=list)
    taken: float = 0.0


class Meter:
    """CPU and memory of pids, with psutil. ``cpu_percent`` needs two looks at a process, so the
    Process objects are kept between samples (keyed by pid and create time: pids are reused)."""

    def __init__(self) -> None:
        self.known: dict[tuple[int, float], Any] = {}

    def sample(self, pid: int) -> tuple[float, int] | None:
        """(CPU percent of one core since the last sample, RSS in bytes) of ``pid`` and its
        descendants; None when the process is gone or not ours to read."""
        import psutil

        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu, rss = 0.0, 0
        for process in processes:
            try:
                key = (process.pid, process.create_time())
                process = self.known.setdefault(key, process)
                cpu += process.cpu_percent(None)
                rss += process.memory_info().rss
            except psutil.Error:
                continue
        return cpu, rss

    def forget_except(self, pids: set[int]) -> None:
        """Drop processes that are no longer sampled (bounded memory over a long session)."""
        for key in [k for k, p in self.known.items() if not _alive_under(p, pids)]:
            del self.known[key]


def _alive_under(process: Any, pids: set[int]) -> bool:
    import psutil

    try:
        if process.pid in pids:
            return True
        return any(parent.pid in pids for parent in process.parents())
    except psutil.Error:
        return False


class Order:
    """The dependency levels of the config file at ``path``, re-read when its mtime changes."""

    def __init__(self, path: Path):
        self.path = path
        self.mtime: float | None = None
        self.levels: list[list[str]] = []

    def get(self) -> list[list[str]]:
        """Levels (level 0 depends on nothing); the last good answer when the file is broken."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self.levels
        if mtime != self.mtime:
            from .desired import config
            from .reconciler import dependency_levels

            self.mtime = mtime
            try:
                self.levels = dependency_levels(config.load(self.path).services)
            except config.ConfigError:
                pass
        return self.levels


_BUILD_NOTE = re.compile(rb"^\[supervise (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\] build ")


def build_progress(state_dir: Path, service: str, now: float) -> str:
    """``building 12s: <the build's last output line>``, read from the service's log file
    (status says only that it builds): the time since the last ``[supervise TIME] build``
    note, and the last line after it. Empty when no build note is in the last lines."""
    from .execute import logs

    lines = logs.last_lines(logs.log_path(state_dir, service), 200)
    for index in range(len(lines) - 1, -1, -1):
        match = _BUILD_NOTE.match(lines[index])
        if match is None:
            continue
        try:
            started = time.mktime(time.strptime(match.group(1).decode(), "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return ""
        output = [line for line in lines[index + 1:] if line.strip() and not line.startswith(b"[supervise ")]
        last = output[-1].decode("utf-8", "replace").strip() if output else "(no output yet)"
        return f"building {format_duration(max(0.0, now - started))}: {last}"
    return ""


def fetch(state_dir: Path, services: list[str], meter: Meter | None = None, order: Order | None = None,
          timeout: float = 5.0) -> Snapshot:
    """One status request on a fresh connection (so a restarted supervisor is found again)."""
    snapshot = Snapshot(taken=time.time(), order=order.get() if order else [])
    try:
        with Client(state_dir, timeout=timeout) as client:
            reply = client.call("status", services=services)
    except NotRunning:
        snapshot.error = f"no supervisor is running for {state_dir} (waiting for one)"
        return snapshot
    except ControlError as exc:  # it answered, with an error (e.g. an unknown service name)
        snapshot.error = f"the supervisor says: {exc}"
        return snapshot
    except (OSError, ValueError) as exc:
        snapshot.error = f"no answer from the supervisor: {exc}"
        return snapshot
    snapshot.rows = reply.get("services", [])
    snapshot.supervisor = reply.get("supervisor")
    for row in snapshot.rows:
        if row.get("phase") == "building" and not row.get("message"):
            row["message"] = build_progress(state_dir, row["service"], snapshot.taken)
    if meter is not None:
        pids = {row["pid"] for row in snapshot.rows if row.get("pid")}
        for row in snapshot.rows:
            usage = meter.sample(row["pid"]) if row.get("pid") else None
            row["cpu"], row["rss"] = usage if usage else (None, None)
        meter.forget_except(pids)
    return snapshot


def advance(snapshot: Snapshot, meter: Meter | None = None, state_dir: Path | None = None) -> Snapshot:
    """``snapshot`` as it is now without asking the supervisor: uptimes advanced by the time
    passed, CPU and memory re-read by pid, build progress re-read from the log (``state_dir``)."""
    now = time.time()
    passed = now - snapshot.taken
    rows = []
    for row in snapshot.rows:
        row = dict(row)
        if row.get("uptime") is not None:
            row["uptime"] += passed
        if row.get("phase") == "building" and (row.get("message") or "").startswith("building "):
            row["message"] = build_progress(state_dir, row["service"], now) if state_dir else row["message"]
        if meter is not None and row.get("pid"):
            usage = meter.sample(row["pid"])
            row["cpu"], row["rss"] = usage if usage else (None, None)
        rows.append(row)
    facts = dict(snapshot.supervisor) if snapshot.supervisor else None
    if facts and facts.get("uptime") is not None:
        facts["uptime"] += passed
    return Snapshot(rows=rows, supervisor=facts, error=snapshot.error, order=snapshot.order, taken=now)


def format_bytes(count: int | None) -> str:
    """``12.3M`` style (IEC units, one decimal); ``-`` for unknown."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"  # pragma: no cover


def cells(row: dict[str, Any]) -> tuple[str, ...]:
    """The table cells of one status row, in :data:`COLUMNS` order."""
    cpu = row.get("cpu")
    return (
        row["service"], "-" if row["replica"] is None else str(row["replica"]),
        row["phase"] + (" (held)" if row.get("held") else ""), str(row.get("pid") or "-"),
        row.get("version") or "-", format_duration(row["uptime"]) if row.get("uptime") is not None else "-",
        str(row.get("restarts", 0)), row.get("last_exit") or "-", "yes" if row.get("ready") else "no",
        "-" if cpu is None else f"{cpu:.1f}%", format_bytes(row.get("rss")), row.get("message") or "",
    )


def banner(snapshot: Snapshot, follow: bool = True) -> str:
    """The top line: who answers, or why nobody does."""
    if snapshot.error:
        return f"supervise top: {snapshot.error}"
    facts = snapshot.supervisor or {}
    counts: dict[str, int] = {}
    for row in snapshot.rows:
        counts[row["phase"]] = counts.get(row["phase"], 0) + 1
    summary = ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items())) or "no services"
    text = (f"supervise pid {facts.get('pid', '?')}, up {format_duration(facts.get('uptime') or 0)}: "
            f"{summary}")
    if facts.get("config_error"):
        text += "  [config not applied: see supervise check]"
    return text


def order_line(levels: list[list[str]]) -> str:
    """``order: db -> api, web -> worker`` (each level after the one before it)."""
    if not levels:
        return "order: -"
    return "order: " + " -> ".join(", ".join(sorted(level)) for level in levels)


def make_app(path: Path, services: list[str] | None = None, interval: float = INTERVAL):
    """The Textual app for the config file at ``path`` (Textual is imported here, not above)."""
    from textual import work
    from textual.app import App, ComposeResult
    from textual.binding import Binding
    from textual.widgets import DataTable, Footer, Log, Static
    from textual.widgets.data_table import CellDoesNotExist

    from .desired import config
    from .execute import logs

    state_dir = config.state_dir_of(path)

    class TopApp(App):
        """supervise top."""

        TITLE = "supervise top"
        ENABLE_COMMAND_PALETTE = False  # every key is ours, listed in the footer and the man page
        CSS = """
        #banner { height: 1; background: $boost; }
        #services { height: 1fr; min-height: 5; }
        #order { height: 1; }
        #loghead { height: 1; background: $boost; }
        #log { height: 1fr; }
        """
        BINDINGS = [Binding(key, action, text) for key, action, text in KEYS]

        def __init__(self) -> None:
            super().__init__()
            self.state_dir = state_dir
            self.names = list(services or [])
            self.interval = interval
            self.meter = Meter()
            self.stale = threading.Event()  # an event came: ask for status at the next tick
            self.closing = threading.Event()
            self.fetched = 0.0  # monotonic seconds of the last status request
            self.stream_client: Client | None = None
            self.listener = threading.Thread(target=self.listen, name="top-events", daemon=True)
            self.order = Order(path)
            self.snapshot = Snapshot()
            self.following = True
            self.selected: str | None = None  # the service of the highlighted row
            self.selected_key: str | None = None  # "service/replica" of the highlighted row
            self.log_key: tuple[str | None, int, int] | None = None  # (service, size, mtime_ns)
            self.last_message = ""
            self.message_until = 0.0  # monotonic seconds: the last key's result is shown until then

        def compose(self) -> ComposeResult:
            yield Static("supervise top: connecting", id="banner")
            table: DataTable[Any] = DataTable(id="services", cursor_type="row", zebra_stripes=False)
            table.add_columns(*COLUMNS)
            yield table
            yield Static("order: -", id="order")
            yield Static("log", id="loghead")
            yield Log(id="log", max_lines=LOG_LINES * 5, auto_scroll=True)
            yield Footer()

        def on_mount(self) -> None:
            self.query_one("#services", DataTable).focus()
            self.listener.start()
            self.poll()
            self.set_interval(self.interval, self.poll)

        def on_unmount(self) -> None:
            self.closing.set()
            client = self.stream_client
            if client is not None:
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)  # wakes the listener's blocking read
                except OSError:
                    pass
            self.listener.join(timeout=5)

        def listen(self) -> None:
            """The events stream, in a thread: any event marks the view stale. Reconnects."""
            while not self.closing.is_set():
                try:
                    with Client(self.state_dir, timeout=None) as client:
                        self.stream_client = client
                        if self.closing.is_set():
                            return
                        for _event in client.stream("events", services=self.names):
                            self.stale.set()
                except (NotRunning, ControlError, OSError, ValueError):
                    pass
                finally:
                    self.stream_client = None
                self.stale.set()
                self.closing.wait(self.interval)

        @work(thread=True, exclusive=True, group="poll")
        def poll(self) -> None:
            now = time.monotonic()
            if self.stale.is_set() or self.snapshot.error or now - self.fetched >= FULL_REFRESH or not self.fetched:
                self.stale.clear()
                self.fetched = now
                snapshot = fetch(self.state_dir, self.names, self.meter, self.order)
            else:
                snapshot = advance(self.snapshot, self.meter, self.state_dir)
            self.call_from_thread(self.show, snapshot)

        def show(self, snapshot: Snapshot) -> None:
            self.snapshot = snapshot
            note = self.last_message if time.monotonic() < self.message_until else ""
            self.query_one("#banner", Static).update(banner(snapshot) + (f"  | {note}" if note else ""))
            self.query_one("#order", Static).update(order_line(snapshot.order))
            table = self.query_one("#services", DataTable)
            keep, keep_service = self.selected_key, self.selected
            table.clear()
            keys = [f"{row['service']}/{row['replica']}" for row in snapshot.rows]
            for key, row in zip(keys, snapshot.rows):
                table.add_row(*cells(row), key=key)
            if keys:
                names = [row["service"] for row in snapshot.rows]
                index = keys.index(keep) if keep in keys else names.index(keep_service) if keep_service in names else 0
                table.move_cursor(row=index)
                self.selected_key, self.selected = keys[index], names[index]
            self.show_log()

        def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
            self.read_cursor()
            self.show_log()

        def read_cursor(self) -> None:
            """Selection from the table's cursor itself: a key pressed right after an arrow
            key must act on the row the cursor is on now, not on a message still queued."""
            table = self.query_one("#services", DataTable)
            if not table.row_count:
                return
            try:
                key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            except CellDoesNotExist:  # the table is being refilled
                return
            if key:
                self.selected_key, self.selected = key, key.rsplit("/", 1)[0]

        def show_log(self) -> None:
            name = self.selected
            head = self.query_one("#loghead", Static)
            if name is None:
                head.update("log: no service selected")
                return
            file = logs.log_path(self.state_dir, name)
            try:
                st = file.stat()
                key = (name, st.st_size, st.st_mtime_ns)
            except OSError:
                key = (name, -1, -1)
            head.update(f"log: {file}" + ("  (following)" if self.following else "  (paused: f follows)"))
            if key == self.log_key or (not self.following and self.log_key and self.log_key[0] == name):
                return
            self.log_key = key
            widget = self.query_one("#log", Log)
            widget.clear()
            widget.write_lines(line.decode("utf-8", "replace") for line in logs.last_lines(file, LOG_LINES))

        def action_follow(self) -> None:
            self.following = not self.following
            self.log_key = None if self.following else self.log_key
            self.show_log()

        def action_start(self) -> None:
            self.control("start")

        def action_stop(self) -> None:
            self.control("stop")

        def action_restart(self) -> None:
            self.control("restart")

        def control(self, verb: str) -> None:
            self.read_cursor()
            if self.selected is None or self.snapshot.error:
                self.bell()
                return
            self.last_message, self.message_until = f"{verb} {self.selected}...", time.monotonic() + 60
            self.send(verb, self.selected)

        @work(thread=True, group="control")
        def send(self, verb: str, name: str) -> None:
            try:
                with Client(self.state_dir, timeout=None) as client:
                    client.call(verb, services=[name])
                message = f"{verb} {name}: done"
            except (NotRunning, ControlError, OSError) as exc:
                message = f"{verb} {name} failed: {exc}"
            self.call_from_thread(self.after_control, message)

        def after_control(self, message: str) -> None:
            self.last_message, self.message_until = message, time.monotonic() + 5
            self.stale.set()
            self.poll()

    return TopApp()


def run(path: Path, services: list[str] | None = None) -> int:
    """Run the full-screen view until ``q``; the exit code is 0.

    Raises CliError (exit 2) when stdin or stdout is not a terminal (``status --watch | head``):
    a full-screen view in a pipe writes escape codes nobody reads and never ends."""
    import sys

    from .desired.peek import state_dir_of

    state_dir_of(path)  # a missing or unreadable file is said first, as by every verb
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        from .control.verbs.base import CliError
        from .decide.errors import EXIT_USAGE

        raise CliError("top and status --watch need a terminal; in a pipe use `supervise status` "
                       "(--json) or `supervise events` to follow", EXIT_USAGE)
    make_app(path, services).run()
    return 0
