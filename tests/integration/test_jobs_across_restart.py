"""What a supervisor restart (SIGKILL then a new one, SIGQUIT handover) must keep of a job:
a one-shot job that finished (exited, and its restart policy says not to start it again) stays
finished while its spec is unchanged, with its exit status, instead of running again; an
adopted ``restart = "on-failure"`` replica whose exit cannot be known is restarted. Real
supervisors as subprocesses, real processes, the real state dir and status verb."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from conftest import terminate, wait_until, write

PY = sys.executable


def start(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(out, "a"),
                            stderr=subprocess.STDOUT)


def rows(path: Path) -> dict[tuple[str, int], dict]:
    result = subprocess.run([PY, "-m", "supervisor", "status", "--json", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    if not result.stdout.startswith("{"):
        return {}
    return {(r["service"], r["replica"]): r for r in json.loads(result.stdout)["services"]}


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


JOBS = f"""
[services.migrate]
command = ["{PY}", "-c", "print('migrating')"]
restart = "never"

[services.broken]
command = ["no-such-command-for-supervise-tests"]
restart = "never"

[services.web]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
depends_on = {{ migrate = "completed" }}
"""


def test_a_finished_job_stays_finished_across_supervisor_restarts(tmp_path):
    path = write(tmp_path / "services.toml", JOBS)
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = third = None
    web = None
    try:
        now = wait_until(lambda: (r := rows(path)) and r.get(("web", 0), {}).get("pid")
                         and r[("migrate", 0)]["phase"] == "exited" and r[("broken", 0)]["phase"] == "exited"
                         and r, timeout=30, message="web up after migrate")
        web = now[("web", 0)]["pid"]
        first.kill()  # SIGKILL: no cleanup of any kind
        first.wait(timeout=10)
        second = start(path, out)
        now = wait_until(lambda: (r := rows(path)) and r.get(("web", 0), {}).get("pid") == web and r,
                         timeout=30, message="web adopted")
        assert now[("migrate", 0)]["phase"] == "exited" and now[("migrate", 0)]["last_exit"] == "exit 0"
        assert now[("broken", 0)]["phase"] == "exited" and now[("broken", 0)]["last_exit"] == "exit 127"
        second.send_signal(signal.SIGQUIT)  # the handover of an in-place upgrade
        assert second.wait(timeout=20) == 0
        third = start(path, out)
        now = wait_until(lambda: (r := rows(path)) and r.get(("web", 0), {}).get("pid") == web and r,
                         timeout=30, message="web adopted again")
        assert now[("migrate", 0)]["phase"] == "exited"
        log = (tmp_path / ".supervise" / "logs" / "migrate.log").read_text()
        assert log.count("migrating") == 1, log  # run once, not at every restart
        assert "start migrate[0]" not in out.read_text().split("adopted", 1)[1]
        # a changed spec runs the job again, as it would while the supervisor runs
        terminate(third)
        path.write_text(JOBS.replace("print('migrating')", "print('migrating', 2)"))
        third = start(path, out)
        wait_until(lambda: "migrating 2" in (tmp_path / ".supervise" / "logs" / "migrate.log").read_text(),
                   timeout=30, message="the changed job to run")
    finally:
        for proc in (first, second, third):
            if proc is not None:
                terminate(proc)
        kill_pids([web] if web else [])


def test_a_run_once_runs_a_finished_job_again(tmp_path):
    path = write(tmp_path / "services.toml", JOBS.replace('[services.broken]\ncommand = ["no-such-command-for-supervise-tests"]\nrestart = "never"\n', ""))
    out = tmp_path / "out.txt"
    first = start(path, out)
    web = None
    try:
        now = wait_until(lambda: (r := rows(path)) and r.get(("web", 0), {}).get("pid") and r,
                         timeout=30, message="web up after migrate")
        web = now[("web", 0)]["pid"]
        first.kill()
        first.wait(timeout=10)
        kill_pids([web])
        wait_until(lambda: not psutil.pid_exists(web) or psutil.Process(web).status() == psutil.STATUS_ZOMBIE,
                   message="web gone")
        once = subprocess.run([PY, "-m", "supervisor", "run", "--exit-when", "migrate", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert once.returncode == 0, once.stdout + once.stderr
        log = (tmp_path / ".supervise" / "logs" / "migrate.log").read_text()
        assert log.count("migrating") == 2, log  # a run once is a fresh run
    finally:
        terminate(first)
        kill_pids([web] if web else [])


def test_an_adopted_on_failure_replica_that_is_killed_is_restarted(tmp_path):
    """After a SIGKILL of the supervisor the replica is not our child: its exit status is
    unknown, which on-failure counts as a failure (systemd does the same)."""
    path = write(tmp_path / "services.toml", f"""
[services.worker]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
restart = "on-failure"
replicas = 2
""")
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    pids: list[int] = []
    try:
        now = wait_until(lambda: (r := rows(path)) and all(r.get(("worker", i), {}).get("pid") for i in (0, 1)) and r,
                         timeout=30, message="two workers")
        pids = [now[("worker", i)]["pid"] for i in (0, 1)]
        first.kill()
        first.wait(timeout=10)
        second = start(path, out)
        wait_until(lambda: "adopted 2 replicas" in out.read_text(), timeout=30, message="the adoption")
        os.kill(pids[0], signal.SIGKILL)
        now = wait_until(lambda: (r := rows(path)) and r[("worker", 0)].get("pid") not in (None, pids[0]) and r,
                         timeout=30, message="the killed worker restarted")
        pids.append(now[("worker", 0)]["pid"])
        assert now[("worker", 0)]["last_exit"] == "unknown" and now[("worker", 0)]["restarts"] == 1
        assert now[("worker", 1)]["pid"] == pids[1]  # its sibling untouched
    finally:
        for proc in (first, second):
            if proc is not None:
                terminate(proc)
        kill_pids(pids)


def test_a_crash_restart_says_so_and_only_restarts_after_exits_count(tmp_path):
    """The start note of a crash restart gives the exit and the rule; RESTARTS counts it, and
    not a restart for a change of the file or a user's restart (systemd's NRestarts)."""
    path = write(tmp_path / "services.toml", f"""
[services.worker]
command = ["{PY}", "-c", "import os, sys, time; time.sleep(300 if os.path.exists('up') else 0); sys.exit(1)"]
restart = "on-failure"
backoff = {{ initial = "10ms", max = "20ms" }}
""")
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(out, "a"),
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until(lambda: "started worker[0]" in out.read_text().split("exited (status 1)", 1)[-1]
                   and "exited (status 1): restart = on-failure, backoff" in out.read_text(), timeout=30,
                   message="a crash restart")
        (tmp_path / "up").write_text("")  # from now on it stays up
        row = wait_until(lambda: (r := rows(path).get(("worker", 0))) and r["phase"] == "running" and r,
                         timeout=30, message="up")
        crashes = row["restarts"]
        assert crashes >= 1
        path.write_text(path.read_text().replace('max = "20ms"', 'max = "20ms" }\nenv = { V = "2"'))
        subprocess.run([PY, "-m", "supervisor", "--config", str(path), "reload"], capture_output=True, timeout=30)
        subprocess.run([PY, "-m", "supervisor", "--config", str(path), "restart", "worker"], capture_output=True,
                       timeout=30)
        wait_until(lambda: "restarted by user" in out.read_text(), timeout=30, message="the user restart")
        row = wait_until(lambda: (r := rows(path).get(("worker", 0))) and r["phase"] == "running" and r,
                         timeout=30, message="up again")
        assert row["restarts"] == crashes
        starts = [line for line in out.read_text().splitlines() if "started worker[0]" in line]
        assert any("env (V) changed" in line for line in starts) and "restarted by user" in starts[-1]
        assert not any("exited (" in line and ("restarted by user" in line or "new service" in line)
                       for line in starts)
    finally:
        terminate(proc)
