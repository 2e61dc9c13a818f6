"""``supervise run`` under a (stand-in) systemd: a real supervisor process sends to a real
``AF_UNIX`` datagram socket named by ``$NOTIFY_SOCKET``, as systemd's manager would receive it.
(tests/integration/test_systemd.py runs it under the real systemd, where one can boot.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import terminate, wait_until, write

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifyListener:
    """What systemd's side of ``$NOTIFY_SOCKET`` would see: a list of messages, each a dict."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.address = f"@supervise-test-{uuid.uuid4().hex}"
        self.sock.bind("\0" + self.address[1:])
        self.messages: list[tuple[float, dict[str, str]]] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return False
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append((time.monotonic(), message))
        return True

    def until(self, key: str, value: str | None = None, timeout: float = 15.0, after: int = 0) -> dict[str, str]:
        """The first message from index ``after`` on that has ``key`` (equal to ``value``)."""
        deadline = time.monotonic() + timeout
        index = after
        while True:
            while index < len(self.messages):
                message = self.messages[index][1]
                index += 1
                if key in message and (value is None or message[key] == value):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value or '*'} within {timeout}s; got {[m for _, m in self.messages]}")
            self._receive(remaining)

    def drain(self, seconds: float) -> None:
        """Collect what is queued, then whatever arrives during ``seconds`` (a measurement
        window, not a wait)."""
        while self._receive(0.0):
            pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._receive(end - time.monotonic())


@pytest.fixture
def listener():
    listener = NotifyListener()
    yield listener
    listener.close()


def start(path: Path, listener: NotifyListener, tmp_path: Path, **env: str) -> subprocess.Popen:
    out = open(tmp_path / "out.txt", "w")
    environment = {**os.environ, "NOTIFY_SOCKET": listener.address, **env}
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT,
                            env=environment)
    out.close()
    return proc


def test_ready_after_convergence_status_reload_watchdog_and_stopping(tmp_path, listener):
    port = free_port()
    slow_server = ("import socket, time; time.sleep(0.5); s = socket.socket(); "
                   f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(300)")
    config = f"""
[services.web]
command = ["{PY}", "-c", "{slow_server}"]
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}

[services.worker]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
depends_on = {{ web = "ready" }}
"""
    path = write(tmp_path / "services.toml", config)
    proc = start(path, listener, tmp_path, WATCHDOG_USEC="200000", WATCHDOG_PID="")
    try:
        ready = listener.until("READY", "1")
        # READY=1 came only once web answered its check and worker (waiting on it) ran.
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        assert ready["STATUS"] == "1 running, 1 ready"
        workers = [p for p in psutil.Process(proc.pid).children() if "sleep(300)" in " ".join(p.cmdline())
                   and "socket" not in " ".join(p.cmdline())]
        assert len(workers) == 1
        assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC"} & set(workers[0].environ())  # not inherited

        # SIGHUP: RELOADING=1 (with the clock), the new file applied, then READY=1 again.
        write(path, config.replace('depends_on = ', 'replicas = 2\ndepends_on = '))
        mark = len(listener.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = listener.until("RELOADING", "1", after=mark)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again = listener.until("READY", "1", after=mark)
        assert again["STATUS"] == "2 running, 1 ready"

        # WatchdogSec=0.2s: pinged at least every 0.1 s from the loop.
        pings = [t for t, m in listener.messages if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 2

        proc.send_signal(signal.SIGTERM)
        listener.until("STOPPING", "1")
        assert proc.wait(timeout=20) == 0
    finally:
        terminate(proc, 20)


def test_ready_is_sent_at_the_timeout_naming_what_is_not_up(tmp_path, listener):
    port = free_port()  # nobody will listen here
    path = write(tmp_path / "services.toml", f"""
[services.never]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}
""")
    proc = start(path, listener, tmp_path, SUPERVISE_READY_TIMEOUT="0.5")
    try:
        began = time.monotonic()
        ready = listener.until("READY", "1")
        assert time.monotonic() - began >= 0.4
        assert ready["STATUS"] == "1 running; not up after 0.5s: never (running)"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        terminate(proc, 20)


def test_status_updates_are_rate_limited_while_a_service_crash_loops(tmp_path, listener):
    path = write(tmp_path / "services.toml", """
[services.crashy]
command = ["sh", "-c", "exit 3"]
backoff = { initial = "10ms", max = "10ms" }
start_limit = { burst = 100000, interval = "1m" }
""")
    log = tmp_path / ".supervise" / "logs" / "crashy.log"
    proc = start(path, listener, tmp_path, SUPERVISE_READY_TIMEOUT="0.2")
    try:
        listener.until("READY", "1")
        wait_until(lambda: log.exists() and log.read_text().count("exit 3") >= 3, timeout=15, message="crashes")
        listener.drain(0.0)  # what was sent before the window, still queued in the socket
        mark, crashes_before = len(listener.messages), log.read_text().count("exit 3")
        listener.drain(1.5)
        statuses = [m for _, m in listener.messages[mark:] if "STATUS" in m]
        crashes = log.read_text().count("exit 3") - crashes_before
        # every crash is 3 phase changes (starting, running, backoff)...
        assert crashes >= 10, crashes
        # ...but at most one STATUS every 0.25 s reached systemd (1.5 s / 0.25 s + edges)
        assert 1 <= len(statuses) <= 8, statuses
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        terminate(proc, 20)


def test_ready_at_once_when_a_service_cannot_get_up_now(tmp_path, listener):
    """A build that fails will not fix itself: READY=1 does not wait for the timeout."""
    path = write(tmp_path / "services.toml", f"""
[services.ok]
command = ["{PY}", "-c", "import time; time.sleep(300)"]

[services.broken]
build = ["{PY}", "-c", "raise SystemExit('no compiler here')"]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
""")
    proc = start(path, listener, tmp_path, SUPERVISE_READY_TIMEOUT="60")
    try:
        began = time.monotonic()
        ready = listener.until("READY", "1", timeout=15)
        assert time.monotonic() - began < 10
        assert ready["STATUS"] == "1 build-failed, 1 running; not up: broken (build-failed)"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        terminate(proc, 20)
