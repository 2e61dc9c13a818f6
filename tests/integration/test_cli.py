"""The `supervise` command as a user runs it: a real process, real signals, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import wait_until, write

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supervise(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_reports_every_mistake_located(tmp_path):
    path = write(tmp_path / "services.toml", """
[services.api]
comand = ["x"]
replicas = "two"
stop_signal = "SIGTREM"
stop_timeout = "10 parsecs"
depends_on = ["db"]
""")
    result = supervise("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 6, lines  # five mistakes, and the command is missing
    assert lines[0] == f'{path}:2:1: services.api: missing required key "command"'
    assert f'{path}:3:1: services.api: unknown key "comand" (did you mean "command"?)' in lines
    assert any(":5:1:" in l and 'did you mean "SIGTERM"' in l for l in lines)


def test_check_ok_and_plan_from_nothing(tmp_path):
    path = write(tmp_path / "services.toml", f'[services.a]\ncommand = ["{PY}", "-V"]\nreplicas = 2\n')
    result = supervise("check", "--config", str(path))
    assert result.returncode == 0 and "ok (1 service)" in result.stdout
    result = supervise("plan", "--config", str(path))
    assert result.stdout.splitlines() == ["start a[0]: new service", "start a[1]: new service"]


def test_config_defaults_to_env_then_cwd(tmp_path):
    write(tmp_path / "services.toml", f'[services.a]\ncommand = ["{PY}", "-V"]\n')
    assert supervise("check", cwd=tmp_path).returncode == 0
    other = write(tmp_path / "other" / "x.toml", "[services.b]\n")
    env = {**os.environ, "SUPERVISE_CONFIG": str(other)}
    result = subprocess.run([PY, "-m", "supervisor", "check"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 2 and "x.toml" in result.stderr


def test_run_serves_http_and_ctrl_c_leaves_nothing(tmp_path):
    port = free_port()
    write(tmp_path / "web" / "index.html", "hello from the test\n")
    path = write(tmp_path / "services.toml", f"""
[services.web]
source = "./web"
command = ["{PY}", "-m", "http.server", "--bind", "127.0.0.1", "${{PORT}}"]
env = {{ PORT = "{port}" }}
ready = {{ tcp = "127.0.0.1:${{PORT}}", interval = "100ms" }}

[services.helper]
command = ["sh", "-c", "sleep 300 & sleep 300"]
replicas = 2
depends_on = {{ web = "ready" }}
""")
    out = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "started helper[1]" in (tmp_path / "out.txt").read_text(), timeout=20,
                   message="helper[1] to start")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5).read()
        assert body == b"hello from the test\n"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5  # web, 2 x (sh + 2 sleeps)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
        text = (tmp_path / "out.txt").read_text()
        assert "web      | " in text  # the service's output, prefixed
        assert "\x1b[" not in text  # not a terminal: no colour
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_run_with_a_bad_file_exits_2_and_starts_nothing(tmp_path):
    path = write(tmp_path / "services.toml", "[services.a\ncommand = 1\n")
    result = supervise("--config", str(path))
    assert result.returncode == 2
    assert "services.toml:1:" in result.stderr and "TOML syntax error" in result.stderr


def test_second_ctrl_c_kills_at_once(tmp_path):
    path = write(tmp_path / "services.toml", """
[services.stubborn]
command = "trap '' TERM INT; echo armed; while true; do sleep 0.1; done"
shell = true
stop_timeout = "60s"
""")
    out = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "armed" in (tmp_path / "out.txt").read_text(), timeout=20)
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "stopping stubborn[0]" in (tmp_path / "out.txt").read_text())
        import time
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
        assert "second stop signal" in (tmp_path / "out.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_quiet_run_keeps_output_in_the_log_only(tmp_path):
    path = write(tmp_path / "services.toml", '[services.talker]\ncommand = ["sh", "-c", "echo said-it; sleep 300"]\n')
    out = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        log = tmp_path / ".supervise" / "logs" / "talker.log"
        wait_until(lambda: log.exists() and "said-it" in log.read_text(), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        text = (tmp_path / "out.txt").read_text()
        assert "started talker[0]" in text and "said-it" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_a_stopped_run_has_said_and_recorded_everything_when_it_exits(tmp_path):
    """The command ends its process once stopped (cli.exit_now, no interpreter teardown):
    every line already on its way (service output on stdout, its own on stderr), every
    event in the history and the state records are out by then, and the status is 0."""
    names = [f"s{i}" for i in range(5)]
    path = write(tmp_path / "services.toml", "".join(
        f'[services.{name}]\ncommand = ["sh", "-c", "echo hello-{name}; exec sleep 300"]\n\n' for name in names))
    out, err = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=err)
    try:
        wait_until(lambda: all(f"started {n}[0]" in (tmp_path / "err.txt").read_text() for n in names), timeout=20)
        wait_until(lambda: all(f"hello-{n}" in (tmp_path / "out.txt").read_text() for n in names), timeout=20)
        records = tmp_path / ".supervise" / "state"
        wait_until(lambda: {p.stem for p in records.glob("*.json")} == set(names))  # each running replica's
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        said = (tmp_path / "err.txt").read_text().splitlines()
        assert said[-1] == "supervise | stopped"
        assert all(any(line.startswith(f"supervise | stopped {n}[0]") for line in said) for n in names)
        history = (tmp_path / ".supervise" / "events" / "events.jsonl").read_text().splitlines()
        stopped = {json.loads(line)["service"] for line in history if json.loads(line)["type"] == "stopped"}
        assert stopped == set(names)
        assert list(records.glob("*.json")) == []  # stopped, nothing held: no record left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()


@pytest.mark.parametrize("verb", [["status"], ["status", "--json"], ["plan"], ["logs"], ["events"], ["stop", "a"],
                                  ["reload"], ["upgrade"], ["top"], ["exec", "a", "--", "true"],
                                  ["completion", "--names"]])
def test_a_config_that_is_a_fifo_is_refused_by_every_verb_not_waited_on(tmp_path, verb):
    """Every verb reads the file without blocking: a FIFO (or device) saved under the config's
    name is one line and exit 2 (completion: no names), never a verb stuck in open()."""
    path = tmp_path / "services.toml"
    os.mkfifo(path)
    result = subprocess.run([PY, "-m", "supervisor", "--config", str(path), *verb], capture_output=True,
                            text=True, timeout=20, stdin=subprocess.DEVNULL)
    if verb[0] == "completion":
        assert (result.returncode, result.stdout) == (0, "")
        return
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [f"{path}: cannot read config: {path} is not a regular file"]


def test_a_fifo_or_socket_in_a_watched_source_neither_blocks_the_build_nor_ctrl_c(tmp_path):
    """A service's folder may hold a FIFO or a unix socket it made: hashing the watched source
    counts them by name, so the service is built and started, and Ctrl-C exits."""
    import socket as socket_module

    app = tmp_path / "app"
    write(app / "main.py", "print('up', flush=True)\nimport time; time.sleep(300)\n")
    os.mkfifo(app / "control.fifo")
    listener = socket_module.socket(socket_module.AF_UNIX)
    listener.bind(str(app / "app.sock"))
    path = write(tmp_path / "services.toml", f"""
[services.a]
source = "./app"
build = "true"
watch = ["**/*"]
command = ["{PY}", "main.py"]
""")
    out = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "a        | up" in (tmp_path / "out.txt").read_text(), timeout=20, message="a to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
