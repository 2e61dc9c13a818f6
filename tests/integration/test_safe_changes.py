"""Issue 12 ("every change lands safely"): each kind of fault, from the issue's own input.

Real processes, real files; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import psutil

from supervisor.execute import health

from harness import PY, Stack, run


def _zombie_children() -> list[int]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def _running(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in (process.info["cmdline"] or []) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


# -- item 6: exec checks leak ------------------------------------------------------------------

def test_exec_check_timeout_kills_and_reaps_its_whole_group(tmp_path: Path):
    """``live = { exec = ["sh","-c","sleep 3; true"], interval = "500ms", timeout = "300ms" }``:
    each timed-out check ends with its shell and its ``sleep``; no zombie stays with the
    supervisor, and after the stop nothing of any check runs (under init or anywhere)."""
    marker = "3.0612"  # a sleep length no other process on the machine uses
    tally = tmp_path / "tally"
    earlier = set(_zombie_children())  # (another test's unwaited child is not this test's)

    def new_zombies() -> set[int]:
        return set(_zombie_children()) - earlier

    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(f'''
[services.app]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
live = {{ exec = ["sh", "-c", "echo x >> {tally}; sleep {marker}; true"], interval = "500ms", timeout = "300ms", retries = 1000 }}
''')
            await stack.until(lambda: tally.exists() and len(tally.read_text().split()) >= 5, timeout=15,
                              message="five liveness checks")
            # at most the check in flight now is alive; the timed-out ones are gone and reaped
            await stack.until(lambda: len(_running(marker)) <= 1, timeout=2, message="old checks' sleeps gone")
            assert len(_running(marker)) <= 1
            await stack.until(lambda: not new_zombies(), timeout=2, message="no zombie children")
        await Stack.until(lambda: not _running(marker), timeout=3, message="no check left after the stop")
        await Stack.until(lambda: not new_zombies(), timeout=3, message="no zombie after the stop")

    run(scenario())


def test_exec_check_cancelled_mid_run_leaves_nothing(tmp_path: Path):
    """A check cancelled while it runs (the replica stops) kills its group, also a child that
    left it with setsid, and reaps them."""
    marker = "7.0613"

    async def scenario() -> None:
        check = {"kind": "exec", "exec": ["sh", "-c", f"setsid sleep {marker} & sleep {marker}"], "timeout": 30}
        task = asyncio.ensure_future(health.probe(check, dict(os.environ)))
        await Stack.until(lambda: len(_running(marker)) == 2, timeout=5, message="the check's sleeps")
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await Stack.until(lambda: not _running(marker), timeout=3, message="the check's processes gone")

    run(scenario())


def test_exec_check_results_and_background_leftovers(tmp_path: Path):
    """Exit 0 passes, non-zero fails; a background child the check leaves is ended with it."""
    marker = "9.0614"

    async def scenario() -> None:
        env = dict(os.environ)
        assert await health.probe({"kind": "exec", "exec": ["true"], "timeout": 5}, env)
        assert not await health.probe({"kind": "exec", "exec": ["false"], "timeout": 5}, env)
        assert await health.probe({"kind": "exec", "exec": ["sh", "-c", f"sleep {marker} & true"],
                                   "timeout": 5}, env)
        await Stack.until(lambda: not _running(marker), timeout=3, message="the leftover sleep gone")

    run(scenario())


# -- item 5: lines of different processes run together ----------------------------------------

def _origin_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "] >> " in line]


def test_a_runs_last_words_come_before_its_exit_and_runs_never_share_a_line(tmp_path: Path):
    """``crash.sh``: ``echo "run $n starting"; printf "fatal error in run $n"; exit 1`` with a
    300 ms backoff: each run's unfinished last line is in the log, on a line of its own, before
    the note of its exit; two runs never end up on one line."""
    script = tmp_path / "crash.sh"
    script.write_text('n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count\n'
                      'echo "run $n starting"; printf "fatal error in run $n"; exit 1\n')

    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(f'''
[services.crash]
command = ["sh", "{script}"]
cwd = "{tmp_path}"
backoff = {{ initial = "300ms", max = "300ms" }}
start_limit = {{ burst = 100, interval = "10s" }}
''')
            # (" exited: " is the exit note; a restart's start note says "exited (status 1): ...")
            await stack.until(lambda: stack.log("crash").count(" exited: ") >= 4, timeout=20, message="four runs")
            lines = stack.log("crash").splitlines()
            for n in (1, 2, 3):
                words = lines.index(f"fatal error in run {n}")
                exited = next(i for i, line in enumerate(lines) if " exited: " in line and i > words)
                started = lines.index(f"run {n + 1} starting")
                assert lines.index(f"run {n} starting") < words < exited < started, lines
            assert not [line for line in lines if line.count("fatal error") > 1]
            assert _origin_lines(stack.log("crash"))[0].endswith(">> crash[0] stdout")

    run(scenario())


def test_two_replicas_half_lines_are_kept_apart_and_traced(tmp_path: Path):
    """Two replicas each write half a line, finish it a second later, and write to stderr:
    in ``NAME.log`` no line mixes the two, and every line is traced to its replica and stream
    (origin lines, read back by ``supervise logs --replica N --stream S [--json]``)."""
    import json
    import subprocess
    import sys

    writer = ("import os, sys, time\n"
              "i = os.environ['REPLICA']\n"
              "sys.stdout.write(f'first half of {i} '); sys.stdout.flush()\n"
              "time.sleep(1)\n"
              "sys.stdout.write(f'second half of {i}\\n'); sys.stdout.flush()\n"
              "sys.stderr.write(f'complaint of {i}\\n'); sys.stderr.flush()\n"
              "time.sleep(600)\n")
    (tmp_path / "w.py").write_text(writer)
    config = f'''
[services.pair]
command = ["{PY}", "{tmp_path / 'w.py'}"]
replicas = 2
'''

    async def scenario() -> str:
        async with Stack(tmp_path) as stack:
            await stack.apply(config)
            await stack.until(lambda: stack.log("pair").count("complaint of") == 2, timeout=15,
                              message="both replicas' output")
            return stack.log("pair")

    text = run(scenario())
    body = [line for line in text.splitlines() if not line.startswith("[supervise ")]
    for line in body:
        assert not ("of 0" in line and "of 1" in line), text
    # every line of output follows an origin line that names its own replica and stream
    origin = None
    for line in text.splitlines():
        if "] >> " in line:
            origin = line.rsplit(">> ", 1)[1]
        elif not line.startswith("[supervise "):
            index = re.search(r"of (\d)", line).group(1)
            stream = "stderr" if line.startswith("complaint") else "stdout"
            assert origin == f"pair[{index}] {stream}", (line, text)
    cli = [sys.executable, "-m", "supervisor", "--config", str(tmp_path / "services.toml"), "logs", "pair"]
    out = subprocess.run([*cli, "--replica", "1", "--stream", "stderr"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert [line.split("| ", 1)[1] for line in out.stdout.splitlines()] == ["complaint of 1"]
    out = subprocess.run([*cli, "--replica", "0", "--json", "-n", "100"], capture_output=True, text=True, timeout=30)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    output = [r for r in records if r["stream"] != "supervise"]
    assert {(r["replica"], r["stream"]) for r in output} == {(0, "stdout"), (0, "stderr")}
    assert all("of 0" in r["line"] for r in output)
    assert not [r for r in records if "] >> " in r["line"]]


# -- item 10: small things a user hit ------------------------------------------------------------

def test_toml_error_at_end_of_file_says_end_of_file_at_the_last_line(tmp_path: Path):
    """An unclosed array at the end of the file: "unexpected end of file", placed at the end of
    the last line with content (not tomlkit's NUL sentinel, not a line past the end)."""
    import pytest

    from supervisor.desired import config

    path = tmp_path / "services.toml"
    path.write_text('[services.a]\ncommand = ["true"]\nx = [1, 2\n\n\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert "\\x00" not in message and "end of file" in message
    assert message.startswith(f"{path}:3:10:"), message


def test_a_failed_build_says_so_once_and_a_failed_fetch_is_not_a_build_failure(tmp_path: Path):
    """``build = "false"``: the status message says "build failed (exit 1)", not "build
    failed: build failed"; a git source that cannot be fetched is ``fetch-failed``."""
    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(f'''
[services.b]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
build = "false"
[services.g]
source = {{ git = "file://{tmp_path}/no-such-repo" }}
command = ["true"]
''')
            await stack.until(lambda: stack.r.controllers["b"].build_failed and stack.r.controllers["g"].build_failed,
                              timeout=20, message="both to fail")
            b, g = stack.r.controllers["b"], stack.r.controllers["g"]
            assert b.deploy_message.count("build failed") == 1, b.deploy_message
            assert b.phase.value == "build-failed"
            assert g.phase.value == "fetch-failed", (g.phase, g.deploy_message)

    run(scenario())


def test_status_exits_0_for_a_finished_one_shot_job_and_for_zero_replicas(tmp_path: Path):
    """``restart = "never"`` job that exited 0 and a ``replicas = 0`` service are as asked:
    ``supervise status`` exits 0; a job that failed still makes it exit 3."""
    import subprocess

    from conftest import terminate, wait_until

    path = tmp_path / "services.toml"
    path.write_text('''
[services.job]
command = ["true"]
restart = "never"
[services.idle]
command = ["sleep", "600"]
replicas = 0
''')
    daemon = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        def status() -> subprocess.CompletedProcess:
            return subprocess.run([PY, "-m", "supervisor", "--config", str(path), "status", "--json"],
                                  capture_output=True, text=True, timeout=30)

        wait_until(lambda: '"exited"' in status().stdout, timeout=20, message="the job to finish")
        assert status().returncode == 0, status().stdout
        path.write_text(path.read_text().replace('command = ["true"]', 'command = ["false"]'))
        subprocess.run([PY, "-m", "supervisor", "--config", str(path), "reload"], capture_output=True, timeout=30)
        wait_until(lambda: "exit 1" in status().stdout, timeout=20, message="the failed job")
        assert status().returncode == 3
    finally:
        terminate(daemon)


def test_status_json_without_a_supervisor_prints_json(tmp_path: Path):
    """(Already fixed on main; kept here as this issue's regression test.)"""
    import json
    import subprocess

    path = tmp_path / "services.toml"
    path.write_text('[services.a]\ncommand = ["true"]\n')
    out = subprocess.run([PY, "-m", "supervisor", "--config", str(path), "status", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert json.loads(out.stdout)["ok"] is False and out.returncode != 0


def test_no_new_commit_for_the_commit_an_adopted_replica_runs(tmp_path: Path, caplog):
    """After an adoption the engine knows what runs only from the record: the poller's first
    sight of that same commit is not a "new commit" (nothing logged, nothing deployed)."""
    import logging
    import subprocess

    from harness import DaemonRun

    remote = tmp_path / "remote"
    remote.mkdir()
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "-c", "user.name=t", "-c", "user.email=t@e.invalid",
                                                         "commit", "-q", "--allow-empty", "-m", "first"]):
        subprocess.run(argv, cwd=remote, check=True, timeout=30)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=remote, check=True, capture_output=True, text=True,
                            timeout=30).stdout.strip()
    path = tmp_path / "services.toml"
    path.write_text(f'[services.app]\nsource = {{ git = "remote", ref = "main" }}\n'
                    f'command = ["{PY}", "-c", "import time; time.sleep(600)"]\n')

    async def scenario() -> None:
        async with DaemonRun(path) as daemon:
            await daemon.until(lambda: daemon.pid("app"), timeout=20, message="app running")
            engine = daemon.daemon.engine
            engine.reconciler.revisions.pop("app", None)  # as after an adoption: only the record knows
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="supervise"):
                assert engine.new_revision("app", commit) is False
            assert "new commit" not in caplog.text

    run(scenario())


def test_last_words_written_in_one_go_with_a_whole_line_come_before_the_exit_note(tmp_path: Path):
    """One write of ``"line one\\nlast words"`` then exit: both, each on its own line, before
    the exited note (the unfinished piece is not left behind in the FIFO at the exit)."""
    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(f'''
[services.once]
command = ["{PY}", "-c", "import os; os.write(1, b'line one\\\\nlast words'); raise SystemExit(3)"]
restart = "never"
''')
            await stack.until(lambda: "exited" in stack.log("once"), timeout=15, message="the exit")
            lines = stack.log("once").splitlines()
            exited = next(i for i, line in enumerate(lines) if "exited" in line)
            assert lines.index("line one") < lines.index("last words") < exited, lines

    run(scenario())


# -- item 4: one slow build holds everything at start ----------------------------------------------

def test_a_slow_build_does_not_hold_the_start_of_a_service_without_one(tmp_path: Path):
    """``fast`` (no build) and ``slow`` (a 4 s build): fast runs while slow still builds, and
    status shows slow building with its elapsed time and the build's last output line; slow
    starts once its build is done."""
    from supervisor.observe import views
    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            applying = asyncio.ensure_future(stack.apply(f'''
[services.fast]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
[services.slow]
build = ["sh", "-c", "echo compiling part 1; sleep 4"]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
'''))
            await stack.until(lambda: stack.reconciler is not None and stack.pid("fast"), timeout=10,
                              message="fast running")
            assert stack.pid("slow") is None and not applying.done()  # slow is still being built
            row = await stack.until(lambda: (r := [row for row in views.status_rows(stack.r.observe(), ["slow"], time.time())])
                                    and "compiling part 1" in (r[0]["message"] or "") and r[0],
                                    timeout=10, message="slow's build progress in status")
            assert row["phase"] == "building" and row["message"].startswith("building for "), row
            await asyncio.wait_for(applying, 30)
            await stack.until(lambda: stack.pid("slow"), timeout=10, message="slow running after its build")

    run(scenario())
