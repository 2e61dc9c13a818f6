"""Stops leave nothing behind: forking wrappers, TERM-ignoring children, setsid escapees."""

from __future__ import annotations

import time

import psutil

from harness import PY, Stack, run
from supervisor.desired.model import Phase

SERVICE = """
[services.svc]
command = {command}
shell = {shell}
stop_timeout = "{timeout}"
"""


def config(command: str, shell: bool = False, timeout: str = "2s") -> str:
    return SERVICE.format(command=command, shell="true" if shell else "false", timeout=timeout)


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_forking_wrapper_that_never_execs_leaves_no_descendant(tmp_path):
    # A shell wrapper that starts background children and waits: the classic orphan maker.
    script = "sleep 300 & sleep 300 & (sleep 300 &) ; wait"

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(config(repr(script).replace("'", '"'), shell=True))
            pid = await stack.until(lambda: stack.pid("svc"))
            kids = await stack.until(lambda: [p.pid for p in psutil.Process(pid).children(recursive=True)]
                                     if len(psutil.Process(pid).children(recursive=True)) >= 2 else None)
            await stack.r.controllers["svc"].stop_all("test")
            assert alive([pid] + kids) == []

    run(body())


def test_child_ignoring_sigterm_is_killed_at_the_timeout(tmp_path):
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(config(f'["{PY}", "-c", "{code}"]', timeout="500ms"))
            await stack.until(lambda: "up" in stack.log("svc").splitlines())
            pid = stack.pid("svc")
            started = time.monotonic()
            exit = await stack.r.controllers["svc"].stop_replica(0, "test", remove=True)
            elapsed = time.monotonic() - started
            assert exit is not None and exit.signal == 9, exit
            assert 0.45 <= elapsed < 3.0, elapsed
            assert alive([pid]) == []

    run(body())


def test_setsid_escapee_is_stopped_too(tmp_path):
    # The child starts a grandchild in a new session (a new process group): killpg misses it.
    code = ("import os,subprocess,sys,time; "
            "p=subprocess.Popen(['sleep','300'], start_new_session=True); "
            "print('child', p.pid, flush=True); time.sleep(300)")

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(config(f'["{PY}", "-c", "{code}"]'))
            await stack.until(lambda: "child " in stack.log("svc"))
            grandchild = int(stack.log("svc").split("child ")[1].split()[0])
            assert psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
            await stack.r.controllers["svc"].stop_all("test")
            await stack.until(lambda: not alive([grandchild]), message="the escapee to go")

    run(body())


def test_graceful_exit_reports_code_and_leaves_group_empty(tmp_path):
    code = "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); print('up', flush=True); time.sleep(300)"

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(config(f'["{PY}", "-c", "{code}"]'))
            await stack.until(lambda: "up" in stack.log("svc").splitlines())
            exit = await stack.r.controllers["svc"].stop_replica(0, "test", remove=True)
            assert str(exit) == "exit 3"

    run(body())


def test_shutdown_stops_dependents_first(tmp_path):
    text = f"""
[services.db]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
[services.api]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
depends_on = ["db"]
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.pid("db") and stack.pid("api"))
            await stack.r.shutdown()
            stack.reconciler = None
            stopped = [e.service for e in stack.events if e.type.value == "stopped"]
            assert stopped == ["api", "db"]

    run(body())


def test_many_services_with_a_low_fd_limit_all_start(tmp_path):
    """400 services under a soft limit of 256 fds: the supervisor raises its own limit (each
    replica needs 2), and children still get the limit it was started with."""
    import resource
    import subprocess
    import sys

    n = 400
    path = tmp_path / "services.toml"
    path.write_text("".join(f'[services.s{i}]\ncommand = ["sleep", "300"]\n' for i in range(n)))
    out = open(tmp_path / "out.txt", "w")

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "--config", str(path)], stdout=out,
                            stderr=subprocess.STDOUT, preexec_fn=low_limit)
    try:
        from conftest import wait_until
        children = wait_until(lambda: (lambda c: c if len(c) >= n else None)(psutil.Process(proc.pid).children()),
                              timeout=60, message=f"{n} services")
        assert all(c.rlimit(psutil.RLIMIT_NOFILE)[0] == 256 for c in children[:5])
        assert "too many open files" not in (tmp_path / "out.txt").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        out.close()


def test_daemonised_grandchild_of_a_finished_service_is_stopped_too(tmp_path):
    # The service starts a daemon in a new session and exits: its orphan comes back to us
    # (subreaper), outside the process group. Nothing of the service may be left.
    text = """
[services.svc]
command = "sleep 0.2; setsid sh -c 'sleep 301 & echo daemon $!; exit 0'; sleep 0.2; exit 0"
shell = true
restart = "never"
stop_timeout = "2s"
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            line = await stack.line("svc", "daemon ")
            daemon = int(line.split()[1])
            await stack.until(lambda: stack.phase("svc") == Phase.EXITED)
            await stack.until(lambda: not alive([daemon]), message="the daemonised orphan to be stopped")

    run(body())


def test_stop_reaches_a_setsid_orphan_of_a_running_service(tmp_path):
    code = "setsid sh -c 'sleep 302 & echo daemon $!; exit 0'; sleep 300"

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(config(f'"{code}"', shell=True, timeout="5s"))
            line = await stack.line("svc", "daemon ")
            daemon = int(line.split()[1])
            import time
            started = time.monotonic()
            await stack.r.controllers["svc"].stop_all("test")
            assert alive([daemon]) == []
            assert time.monotonic() - started < 3.0  # it got the stop signal, not a late SIGKILL

    run(body())


def test_a_group_of_zombies_counts_as_dead():
    """A process that is someone's zombie (here ours, left unreaped on purpose) still makes
    ``kill(-pgid, 0)`` succeed; the group must count as gone, or a stop waits its full timeout."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import wait_until
    from supervisor.execute import procs

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert procs.group_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, timeout=5,
                   message="the child to become a zombie")
        assert not procs.group_alive(child.pid)
    finally:
        child.kill()
        child.wait(timeout=5)
