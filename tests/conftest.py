"""Shared test helpers: bounded waits and the leak check every test passes through.

Each test runs with ``SUPERVISE_TEST_MARK`` set to a fresh value in the environment; every
process a test starts (a supervisor, its services, their children) inherits it. After the test,
any process still carrying the mark is a leak: the test fails, and the leak is killed by pid.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

import psutil
import pytest

T = TypeVar("T")
MARK = "SUPERVISE_TEST_MARK"


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def marked_processes(mark: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for process in psutil.process_iter(["pid"]):
        if process.pid == me:
            continue
        try:
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.fixture(autouse=True)
def leak_check(monkeypatch: pytest.MonkeyPatch):
    """Fail a test that leaves any process it started running."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    yield mark
    try:
        left = wait_until(lambda: not marked_processes(mark), timeout=5.0, interval=0.05,
                          message="the test's processes to end") and []
    except AssertionError:
        left = marked_processes(mark)
    if left:
        details = []
        for process in left:
            try:
                details.append(f"{process.pid} {' '.join(process.cmdline())}")
                process.kill()
            except psutil.Error:
                pass
        pytest.fail("processes leaked by this test (killed now):\n  " + "\n  ".join(details))


@pytest.fixture
def until():
    """The bounded-wait helper, as a fixture."""
    return wait_until


PYTHON = sys.executable


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def terminate(proc, timeout: float = 30.0) -> None:
    """SIGTERM a supervisor the test started and wait (bounded); SIGKILL it past ``timeout``."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: The podman Engine API service and base image fixtures of the container tests; a real image
#: registry on loopback (the Kubernetes image pushes).
pytest_plugins = ["podman_engine", "registry"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> str | None:
    """The body of ``url`` as text, or None when it is refused, times out, or is cut off (e.g.
    while a service is being replaced)."""
    import http.client
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (OSError, http.client.HTTPException):
        return None


@pytest.fixture
def package_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(folder, URL) of a package index served over loopback for this test: ``python -m
    http.server`` on a folder in tmp_path (its directory listings are what pip reads as a
    PEP 503 simple index; put wheels in ``folder/NAME/``). pip's machine-wide configuration is
    off (``PIP_CONFIG_FILE=/dev/null``), so that only this index is asked."""
    import subprocess

    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    folder = tmp_path / "index"
    folder.mkdir()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                               str(folder), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: http_get(url) is not None, timeout=10, message="the index server")
        yield folder, url
    finally:
        server.terminate()
        server.wait(timeout=10)
