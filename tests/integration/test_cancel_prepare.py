"""A fetch or build under way belongs to its service: removing or changing the service cancels
it without holding the reload, and ``supervise stop`` kills it (its process group, its git).
Real supervisors, real builds, a real git talking to a loopback server that never answers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import marked_processes, terminate, wait_until, write

PY = sys.executable


def cli(path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True, text=True,
                          timeout=timeout)


def rows(path: Path) -> dict[str, dict]:
    result = cli(path, "status", "--json")
    if not result.stdout.startswith("{"):
        return {}
    return {row["service"]: row for row in json.loads(result.stdout).get("services", [])}


def with_arg(mark: str, needle: str) -> list[psutil.Process]:
    found = []
    for process in marked_processes(mark):
        try:
            if any(needle in arg for arg in process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def git_of(mark: str) -> list[psutil.Process]:
    found = []
    for process in marked_processes(mark):
        try:
            if process.name().startswith("git"):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def silent_remote():
    """A TCP listener on loopback that accepts and never says a word (an http remote that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


SLOW = """
[services.slow]
build = "sh -c 'sleep 100010'"
command = ["/bin/sleep", "300"]
"""
OTHER = """
[services.other]
command = ["/bin/sleep", "300"]
"""
NEW = """
[services.new]
command = ["/bin/sleep", "301"]
"""


def start(tmp_path: Path, text: str) -> tuple[Path, subprocess.Popen]:
    path = write(tmp_path / "services.toml", text)
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(tmp_path / "out.txt", "w"),
                            stderr=subprocess.STDOUT)
    return path, proc


def test_removing_a_service_mid_build_applies_the_reload_and_kills_the_build(tmp_path, leak_check):
    path, proc = start(tmp_path, SLOW + OTHER)
    try:
        wait_until(lambda: with_arg(leak_check, "sleep 100010"), timeout=30, message="the slow build")
        wait_until(lambda: rows(path).get("other", {}).get("phase") == "running", timeout=30,
                   message="other running beside the build")
        path.write_text(OTHER + NEW)  # a save without slow, with a new service
        wait_until(lambda: rows(path).get("new", {}).get("phase") == "running", timeout=30, message="new started")
        assert "slow" not in rows(path)
        wait_until(lambda: not with_arg(leak_check, "sleep 100010"), timeout=15, message="the build killed")
        out = (tmp_path / "out.txt").read_text()
        assert "save: reloaded" in out or "reloaded" in out, out
        began = time.monotonic()
        result = cli(path, "reload", timeout=30)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - began < 20
    finally:
        terminate(proc)


def test_changing_a_services_build_mid_build_restarts_only_that_build(tmp_path, leak_check):
    path, proc = start(tmp_path, SLOW + OTHER)
    try:
        wait_until(lambda: with_arg(leak_check, "sleep 100010"), timeout=30, message="the slow build")
        path.write_text(SLOW.replace("100010", "100011") + OTHER + NEW)
        wait_until(lambda: rows(path).get("new", {}).get("phase") == "running", timeout=30, message="new started")
        wait_until(lambda: with_arg(leak_check, "sleep 100011"), timeout=30, message="the new build")
        wait_until(lambda: not with_arg(leak_check, "sleep 100010"), timeout=15, message="the old build killed")
    finally:
        terminate(proc)


def test_stop_kills_a_build_under_way(tmp_path, leak_check):
    path, proc = start(tmp_path, SLOW + OTHER)
    try:
        wait_until(lambda: with_arg(leak_check, "sleep 100010"), timeout=30, message="the slow build")
        result = cli(path, "stop", "slow")
        assert result.returncode == 0, result.stderr
        assert not with_arg(leak_check, "sleep 100010"), "the build outlived its stop"
        row = rows(path)["slow"]
        assert row["phase"] not in ("building", "fetching"), row
        assert rows(path)["other"]["phase"] == "running"
    finally:
        terminate(proc)


def test_stop_kills_a_fetch_under_way(tmp_path, silent_remote, leak_check):
    path, proc = start(tmp_path, f"""
[services.gitcreds]
source = {{ git = "http://{silent_remote}/repo.git", ref = "main" }}
command = ["/bin/sleep", "300"]
""" + OTHER)
    try:
        wait_until(lambda: git_of(leak_check), timeout=30, message="git talking to the silent remote")
        result = cli(path, "stop", "gitcreds")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: not git_of(leak_check), timeout=5, message="git killed by the stop")
        row = rows(path)["gitcreds"]
        assert row["phase"] not in ("building", "fetching"), row
        # removing it now (held, nothing runs) drops it from status
        path.write_text(OTHER)
        wait_until(lambda: "gitcreds" not in rows(path), timeout=30, message="gitcreds removed")
    finally:
        terminate(proc)


def test_removing_a_service_mid_fetch_kills_its_git(tmp_path, silent_remote, leak_check):
    path, proc = start(tmp_path, f"""
[services.hung]
source = {{ git = "http://{silent_remote}/repo.git", ref = "main" }}
command = ["/bin/sleep", "300"]
""" + OTHER)
    try:
        wait_until(lambda: git_of(leak_check), timeout=30, message="git talking to the silent remote")
        path.write_text(OTHER + NEW)
        wait_until(lambda: rows(path).get("new", {}).get("phase") == "running", timeout=30, message="new started")
        wait_until(lambda: "hung" not in rows(path), timeout=30, message="hung gone from status")
        wait_until(lambda: not git_of(leak_check), timeout=5, message="git killed by the removal")
    finally:
        terminate(proc)
