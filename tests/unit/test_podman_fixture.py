"""The podman fixture (tests/podman_engine.py) cannot orphan its ``podman system service``
when a test session is killed: the service dies with its parent (PR_SET_PDEATHSIG), and a
later session sweeps the temp dirs of sessions that are gone, by recorded pid. Real processes
stand in for pytest and podman here (podman itself is not needed to test the mechanism)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from conftest import wait_until
from podman_engine import sweep_orphans

TESTS = Path(__file__).resolve().parent.parent
SLEEPER = [sys.executable, "-c", "import sys, time; time.sleep(300)"]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_service_dies_with_the_session_that_started_it_even_on_sigkill():
    session = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from podman_engine import die_with_parent
        child = subprocess.Popen({SLEEPER!r}, start_new_session=True, preexec_fn=die_with_parent())
        print(child.pid, flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        service = int(session.stdout.readline())
        assert not gone(service)
        session.kill()  # no teardown runs: the kernel alone must end the service
        session.wait()
        wait_until(lambda: gone(service), timeout=10, message="the service ending with its session")
    finally:
        session.kill()
        session.wait()
        session.stdout.close()


def _dead_owner() -> str:
    proc = subprocess.Popen(SLEEPER)
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return f"{proc.pid} {started}\n"


def test_a_gone_sessions_service_is_ended_by_pid_and_its_dir_removed(tmp_path):
    orphan, live, foreign = (tmp_path / f"supervise-podman-{n}" for n in ("orphan", "live", "foreign"))
    for root in (orphan, live, foreign):
        root.mkdir()
    services = [subprocess.Popen([*SLEEPER, str(root)]) for root in (orphan, live)]
    unrelated = subprocess.Popen(SLEEPER)  # a process whose argv does not name the dir
    try:
        (orphan / "owner").write_text(_dead_owner())
        (orphan / "service.pid").write_text(f"{services[0].pid}\n")
        (live / "owner").write_text(f"{os.getpid()} {psutil.Process().create_time()}\n")
        (live / "service.pid").write_text(f"{services[1].pid}\n")
        (foreign / "owner").write_text(_dead_owner())
        (foreign / "service.pid").write_text(f"{unrelated.pid}\n")
        (tmp_path / "supervise-podman-old").mkdir()  # no owner record: not ours to judge
        assert sweep_orphans(tmp_path) == [foreign, orphan]
        services[0].wait(timeout=10)
        assert services[1].poll() is None and unrelated.poll() is None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["supervise-podman-live", "supervise-podman-old"]
    finally:
        for proc in (*services, unrelated):
            proc.kill()
            proc.wait()
