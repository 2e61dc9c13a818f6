"""A supervisor killed with SIGKILL and started again adopts what runs: no duplicates, no
restarts, no lost log line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import terminate, wait_until, write

PY = sys.executable
COUNTER = "import itertools,time\\nfor i in itertools.count():\\n    print(i, flush=True)\\n    time.sleep(0.002)"


def start(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(out, "a"),
                            stderr=subprocess.STDOUT)


def status(path: Path) -> list[dict]:
    result = subprocess.run([PY, "-m", "supervisor", "status", "--json", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    return json.loads(result.stdout)["services"] if result.stdout.startswith("{") else []


def running_pids(path: Path, count: int) -> dict[str, int] | None:
    rows = status(path)
    pids = {r["service"]: r["pid"] for r in rows if r["phase"] in ("running", "ready") and r["pid"]}
    return pids if len(pids) == count else None


stop = terminate


def end_all(first, second, pids) -> None:
    """Stop both supervisors (the second may not have started) and SIGKILL any replica pid
    still there, so a failed assertion leaks nothing."""
    stop(first)
    if second is not None:
        stop(second)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sigkilled_supervisor_adopts_20_services_with_no_lost_line(tmp_path):
    n = 20
    path = write(tmp_path / "services.toml", "".join(
        f'[services.c{i}]\ncommand = ["{PY}", "-c", "{COUNTER}"]\n' for i in range(n)))
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    try:
        pids = wait_until(lambda: running_pids(path, n), timeout=30, message="20 services running")
        first.kill()  # SIGKILL: no cleanup of any kind
        first.wait(timeout=10)
        time.sleep(0.3)  # the services keep writing into their FIFOs meanwhile
        assert all(psutil.pid_exists(pid) for pid in pids.values())
        second = start(path, out)
        again = wait_until(lambda: running_pids(path, n), timeout=30, message="20 services adopted")
        assert again == pids  # 0 new pids
        # (the records are written before the summary line: wait for it, bounded)
        text = wait_until(lambda: (t := out.read_text()) and f"adopted {n} replicas" in t and t, timeout=10,
                          message="the adoption summary")
        second_half = text.split(f"adopted {n} replicas", 1)[1]
        assert "started c" not in second_half
        time.sleep(0.2)
        stop(second)
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in pids.values())
        for i in range(n):
            numbers = [int(l) for l in (tmp_path / ".supervise" / "logs" / f"c{i}.log").read_text().splitlines()
                       if l.isdigit()]
            assert numbers == list(range(len(numbers))), f"c{i}: lines lost or repeated"
            assert len(numbers) > 50
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_adoption_verifies_identity_and_replaces_what_changed(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.same]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
[services.changed]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
env = {{ V = "1" }}
[services.removed]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
""")
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    pids: dict[str, int] = {}
    try:
        pids = wait_until(lambda: running_pids(path, 3), timeout=30)
        first.kill()
        first.wait(timeout=10)
        text = path.read_text().replace('V = "1"', 'V = "2"')
        text = text[: text.index("[services.removed]")]
        path.write_text(text)
        # a record whose pid now belongs to another process must not be trusted
        record_path = tmp_path / ".supervise" / "state" / "same.json"
        record = json.loads(record_path.read_text())
        record["replicas"]["0"]["create_time"] -= 1000
        record_path.write_text(json.dumps(record))
        os.kill(pids["same"], signal.SIGKILL)  # it is not ours any more as far as the record goes
        second = start(path, out)
        # (until the first plan, "removed" runs too: wait for the two the file names)
        now = wait_until(lambda: (p := running_pids(path, 2)) and set(p) == {"same", "changed"} and p, timeout=30)
        assert now["same"] != pids["same"]  # started anew, not "adopted"
        assert now["changed"] != pids["changed"]  # adopted as stale, then replaced
        wait_until(lambda: not psutil.pid_exists(pids["removed"]) or
                   psutil.Process(pids["removed"]).status() == psutil.STATUS_ZOMBIE, message="removed stopped")
        wait_until(lambda: not psutil.pid_exists(pids["changed"]) or
                   psutil.Process(pids["changed"]).status() == psutil.STATUS_ZOMBIE, message="old changed stopped")
        log = out.read_text()
        assert "adopted, but started from another config" in log
    finally:
        end_all(first, second, pids.values())  # the first supervisor's children, should the test fail early


def test_sigquit_leaves_services_running_for_an_in_place_upgrade(tmp_path):
    n = 3
    path = write(tmp_path / "services.toml", "".join(
        f'[services.c{i}]\ncommand = ["{PY}", "-c", "{COUNTER}"]\n' for i in range(n)))
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    pids: dict[str, int] = {}
    try:
        pids = wait_until(lambda: running_pids(path, n), timeout=30)
        first.send_signal(signal.SIGQUIT)
        assert first.wait(timeout=20) == 0
        assert "leaving every service running" in out.read_text()
        assert all(psutil.pid_exists(pid) for pid in pids.values())
        second = start(path, out)
        assert wait_until(lambda: running_pids(path, n), timeout=30) == pids
        stop(second)
        for i in range(n):
            numbers = [int(l) for l in (tmp_path / ".supervise" / "logs" / f"c{i}.log").read_text().splitlines()
                       if l.isdigit()]
            assert numbers == list(range(len(numbers))), f"c{i}: lines lost or repeated"
    finally:
        end_all(first, second, pids.values())


def test_build_left_running_by_a_killed_supervisor_is_stopped_first(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.slow]
build = ["sleep", "303"]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
""")
    out = tmp_path / "out.txt"
    record = tmp_path / ".supervise" / "state" / "builds" / "slow.json"
    first = start(path, out)
    second = None
    build_pid = None
    try:
        wait_until(lambda: record.exists(), timeout=20, message="the build to start")
        build_pid = json.loads(record.read_text())["pid"]
        first.kill()
        first.wait(timeout=10)
        assert psutil.pid_exists(build_pid)  # an orphaned build, still running
        second = start(path, out)
        wait_until(lambda: not psutil.pid_exists(build_pid) or
                   psutil.Process(build_pid).status() == psutil.STATUS_ZOMBIE, timeout=20, message="old build stopped")
        wait_until(lambda: record.exists() and json.loads(record.read_text())["pid"] != build_pid, timeout=20,
                   message="a new build")
        assert "stopping a build" in out.read_text()
    finally:
        stop(first)
        if second is not None:
            stop(second)
        if build_pid is not None:
            try:
                os.killpg(build_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_orphan_of_an_adopted_replica_is_stopped_too(tmp_path):
    # After a supervisor restart the orphans of a replica belong to init, not to us.
    path = write(tmp_path / "services.toml", """
[services.d]
command = "setsid sh -c 'sleep 1020 & echo daemon $!; exit 0'; sleep 1021"
shell = true
""")
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    daemon = None
    try:
        log = tmp_path / ".supervise" / "logs" / "d.log"
        line = wait_until(lambda: log.exists() and next((l for l in log.read_text().splitlines()
                                                          if l.startswith("daemon ")), None), timeout=20)
        daemon = int(line.split()[1])
        first.send_signal(signal.SIGQUIT)
        assert first.wait(timeout=20) == 0
        second = start(path, out)
        wait_until(lambda: running_pids(path, 1), timeout=20)
        stop(second)
        assert not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE
    finally:
        stop(first)
        if second is not None:
            stop(second)
        if daemon is not None and psutil.pid_exists(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_an_unreadable_state_file_is_reported_and_never_becomes_a_duplicate_start(tmp_path):
    """A record that cannot be read may describe a replica still running: the service is held
    (with the reason in its status and a start-failed event), not started beside it, until a
    user start."""
    import asyncio

    from harness import Stack, run as run_async

    text = f'[services.a]\ncommand = ["{PY}", "-c", "import time; time.sleep(300)"]\n'

    async def body():
        async with Stack(tmp_path) as stack:
            desired = stack.load(text)
            folder = tmp_path / ".supervise" / "state"
            folder.mkdir(parents=True)
            (folder / "a.json").write_text('{"service": "a", "replicas": {"0": {"pid": 12')  # cut short
            from supervisor.reconciler import Reconciler

            stack.reconciler = Reconciler(desired, stack.notifier)
            await stack.r.start()
            await stack.r.adopt(desired)
            await stack.r.apply(desired)
            await asyncio.sleep(0)
            assert stack.pid("a") is None
            failed = stack.of_type("start-failed", "a")
            assert failed and "state file unreadable" in failed[0].data["error"]
            controller = stack.r.controllers["a"]
            assert controller.held and "a.json" in controller.deploy_message
            controller.release()  # supervise start a
            await stack.r.apply(desired)
            await stack.until(lambda: stack.pid("a"), message="a started after the user start")

    run_async(body())


def test_every_replica_is_reported_stopping_and_stopped_at_a_stop_after_an_adoption(tmp_path):
    """Issue 12.9: SIGQUIT, start again (adopts), SIGKILL one replica, add a service, stop and
    start it, then SIGINT: each replica that ran prints its stopping and its stopped line.
    (A replica that died from the shutdown's signal before its stop was begun used to end
    silently: the slow look at an adopted replica's processes gave it the time to.)"""
    import re

    base = "".join(f'[services.w{i}]\ncommand = ["{PY}", "-c", "import time; time.sleep(300)"]\nreplicas = 3\n'
                   for i in range(3))
    path = write(tmp_path / "services.toml", base)
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    pids: dict[str, int] = {}
    try:
        def replicas(count: int) -> dict[str, int] | None:
            rows = status(path)
            found = {f"{r['service']}[{r['replica']}]": r["pid"] for r in rows
                     if r["phase"] in ("running", "ready") and r["pid"]}
            return found if len(found) == count else None

        pids = wait_until(lambda: replicas(9), timeout=30, message="9 replicas running")
        first.send_signal(signal.SIGQUIT)
        assert first.wait(timeout=20) == 0
        second = start(path, out)
        assert wait_until(lambda: replicas(9), timeout=30, message="9 replicas adopted") == pids
        os.kill(pids["w1[1]"], signal.SIGKILL)
        wait_until(lambda: (r := replicas(9)) and r["w1[1]"] != pids["w1[1]"], timeout=20, message="w1[1] again")
        path.write_text(base + f'[services.extra]\ncommand = ["{PY}", "-c", "import time; time.sleep(300)"]\n')
        wait_until(lambda: replicas(10), timeout=20, message="the added service")
        for verb in ("stop", "start"):
            result = subprocess.run([PY, "-m", "supervisor", verb, "extra", "--config", str(path)],
                                    capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
        running = wait_until(lambda: replicas(10), timeout=20, message="extra started again")
        mark = out.stat().st_size
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=30) == 0
        with open(out, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        for word in ("stopping", "stopped"):
            said = set(re.findall(rf"\b{word} (\w+\[\d+\]): pid (\d+)", text))
            missing = {(who, str(pid)) for who, pid in running.items()} - said
            assert not missing, f"no {word} line for {sorted(missing)}:\n{text}"
    finally:
        end_all(first, second, pids.values())


def test_stopping_an_adopted_replica_says_who_stopped_it(tmp_path):
    """An adopted replica is not our child: its wait status never reaches us (no waitid, no
    SIGCHLD). Its last exit after a stop is then what we know: stopped by supervise, with the
    signal we sent (the stop signal, or SIGKILL past stop_timeout), not "unknown"."""
    stubborn = "import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(300)"
    path = write(tmp_path / "services.toml", f"""
[services.calm]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
[services.stubborn]
command = ["{PY}", "-c", "{stubborn}"]
stop_timeout = "300ms"
""")
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    pids: dict[str, int] = {}
    try:
        pids = wait_until(lambda: running_pids(path, 2), timeout=30)
        first.kill()
        first.wait(timeout=10)
        second = start(path, out)
        assert wait_until(lambda: running_pids(path, 2), timeout=30) == pids  # adopted
        stopped = subprocess.run([PY, "-m", "supervisor", "stop", "calm", "stubborn", "--config", str(path)],
                                 capture_output=True, text=True, timeout=30)
        assert stopped.returncode == 0, stopped.stderr
        rows = {r["service"]: r for r in status(path)}
        assert rows["calm"]["last_exit"] == "stopped by supervise (SIGTERM)", rows["calm"]
        assert rows["stubborn"]["last_exit"] == "stopped by supervise (SIGKILL)", rows["stubborn"]
    finally:
        end_all(first, second, pids.values())


def test_a_replica_whose_fifo_went_with_a_moved_state_dir_is_restarted_not_adopted_deaf(tmp_path):
    """The state dir moved away under a running supervisor (which makes it again), then that
    supervisor is SIGKILLed: the records point at FIFOs in the new run/ that never existed. The
    replica's output could never be read again (its writes block once the kernel buffer is
    full), so the next supervisor restarts it, saying why, and its lines reach the log again."""
    path = write(tmp_path / "services.toml", f'[services.chatty]\ncommand = ["{PY}", "-c", "{COUNTER}"]\n')
    out = tmp_path / "out.txt"
    first = start(path, out)
    second = None
    pids: dict[str, int] = {}
    try:
        pids = wait_until(lambda: running_pids(path, 1), timeout=30, message="chatty running")
        os.rename(tmp_path / ".supervise", tmp_path / "moved")
        wait_until(lambda: "recreated" in out.read_text() and running_pids(path, 1), timeout=30,
                   message="the state dir made again")
        records = tmp_path / ".supervise" / "state"
        wait_until(lambda: records.is_dir() and any(records.iterdir()), timeout=10, message="records written again")
        first.kill()
        first.wait(timeout=10)
        second = start(path, out)
        again = wait_until(lambda: (p := running_pids(path, 1)) and p != pids and p, timeout=30,
                           message="chatty restarted")
        text = out.read_text()
        assert "is gone from" in text and "is not in" not in text, text
        log = tmp_path / ".supervise" / "logs" / "chatty.log"
        wait_until(lambda: log.exists() and sum(1 for line in log.read_text().splitlines() if line.isdigit()) > 50,
                   timeout=15, message="the restarted replica's lines in the log")
        assert not psutil.pid_exists(pids["chatty"]) or psutil.Process(pids["chatty"]).status() == psutil.STATUS_ZOMBIE
        pids.update({"again": again["chatty"]})
    finally:
        end_all(first, second, pids.values())
