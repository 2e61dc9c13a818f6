"""``supervise run --exit-when-done`` and ``--exit-when NAME`` through the real CLI: the exit
status rule of supervise(1), the rest stopped, and no process left behind (the leak check)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from conftest import wait_until, write

PY = sys.executable
SERVER = f'["{PY}", "-u", "-c", "import time\\nprint(\\"serving\\", flush=True)\\nwhile True: time.sleep(0.2)"]'


def run_once(path: Path, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", "run", *flags, "--config", str(path)], capture_output=True,
                          text=True, timeout=timeout)


def log(path: Path, name: str) -> str:
    return (path.parent / ".supervise" / "logs" / f"{name}.log").read_text()


def ends(path: Path, *flags: str, code: int, says: str, stopped: tuple[str, ...] = ()) -> None:
    """``supervise run -q FLAGS`` on ``path`` exits with ``code``, its stderr says ``says``, and
    each service in ``stopped`` was stopped by it (its log says so: nothing left running)."""
    result = run_once(path, *flags, "-q")
    assert result.returncode == code, result.stderr
    assert says in result.stderr, result.stderr
    for name in stopped:
        assert f"stopped {name}[0]" in log(path, name)


def test_every_job_succeeds_exit_0_and_the_server_is_stopped(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.db]
command = {SERVER}

[services.migrate]
command = ["sh", "-c", "echo migrated"]
restart = "never"
depends_on = ["db"]

[services.test]
command = ["sh", "-c", "echo tested"]
restart = "on-failure"
replicas = 2
depends_on = {{ migrate = "completed" }}
""")
    ends(path, "--exit-when-done", code=0, says="run once: every job has finished (exit 0)", stopped=("db",))
    assert "tested" in log(path, "test") and "migrated" in log(path, "migrate")


def test_a_failing_job_gives_its_code_and_the_others_are_stopped(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.server]
command = {SERVER}

[services.slow]
command = ["sleep", "300"]
restart = "never"

[services.check]
command = ["sh", "-c", "echo checking; exit 3"]
restart = "never"
depends_on = {{ server = "started" }}
""")
    ends(path, "--exit-when-done", code=3, says="run once: check[0] exited: exit 3: stopping the rest, exit status 3",
         stopped=("slow", "server"))


def test_a_job_killed_by_a_signal_exits_128_plus_n(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.job]
command = ["{PY}", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
restart = "never"
""")
    assert run_once(path, "--exit-when-done", "-q").returncode == 128 + signal.SIGKILL


def test_a_job_that_cannot_start_exits_127_or_126_as_a_shell_does(tmp_path):
    """A command that is not there is 127, one that is not executable 126 (sh's ``$?``), not
    an "unknown" exit 1."""
    (tmp_path / "data.txt").write_text("not a program\n")
    for command, code in (("/nonexistent/cmd", 127), (str(tmp_path / "data.txt"), 126)):
        path = write(tmp_path / "services.toml", f'[services.job]\ncommand = ["{command}"]\nrestart = "never"\n')
        result = run_once(path, "--exit-when-done")
        assert result.returncode == code, result.stderr
        assert f"exit {code}" in result.stderr


def test_exit_when_a_named_service_finishes_while_a_server_runs(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.server]
command = {SERVER}

[services.smoke]
command = ["sh", "-c", "echo smoke ok"]
restart = "never"
depends_on = {{ server = "started" }}

[services.other]
command = ["sleep", "300"]
restart = "never"
""")
    ends(path, "--exit-when", "smoke", code=0, says="run once: smoke finished (exit 0)", stopped=("server", "other"))


def test_run_once_refuses_what_could_never_end(tmp_path):
    path = write(tmp_path / "services.toml", f"[services.server]\ncommand = {SERVER}\n")
    result = run_once(path, "--exit-when-done")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert 'no service can finish (each has restart = "always")' in result.stderr
    result = run_once(path, "--exit-when", "server")
    assert result.returncode == 2 and 'server has restart = "always" and never finishes' in result.stderr
    result = run_once(path, "--exit-when", "nope")
    assert result.returncode == 4 and "unknown service: nope" in result.stderr
    both = run_once(path, "--exit-when", "server", "--exit-when-done")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_sigterm_during_the_run_stops_cleanly_with_143(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.server]
command = {SERVER}

[services.job]
command = ["sleep", "300"]
restart = "never"
""")
    proc = subprocess.Popen([PY, "-m", "supervisor", "run", "--exit-when-done", "-q", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def pids() -> list[int]:
            result = subprocess.run([PY, "-m", "supervisor", "status", "--json", "--config", str(path)],
                                    capture_output=True, text=True, timeout=30)
            rows = json.loads(result.stdout).get("services", []) if result.stdout else []
            return [r["pid"] for r in rows if r["pid"]] if len(rows) == 2 and result.returncode == 0 else []
        running = wait_until(pids, timeout=30, message="both services running")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopping every service" in stderr
    assert not [p for p in running if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_exit_when_starts_nothing_once_the_run_is_ending(tmp_path):
    """`--exit-when migrate`: migrate's exit ends the run; its dependent (waiting on migrate
    "completed") must not start in the moment between the verdict and the stop."""
    path = write(tmp_path / "services.toml", """
[services.migrate]
command = ["sh", "-c", "echo migrated"]
restart = "never"

[services.tests]
command = ["sh", "-c", "echo tested; sleep 300"]
depends_on = { migrate = "completed" }
""")
    for _ in range(3):  # a race: give it a few chances
        result = run_once(path, "--exit-when", "migrate")
        assert result.returncode == 0, result.stderr
        assert "migrate finished (exit 0): stopping the rest" in result.stderr
        assert "started tests" not in result.stdout + result.stderr
