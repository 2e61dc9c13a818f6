"""Restart policies, backoff and the start limit, with real crashing processes."""

from __future__ import annotations

import os
import signal

from harness import PY, Stack, run
from supervisor.desired.model import Phase


def crashing(restart: str, code: str = "import sys; sys.exit(3)", burst: int = 4) -> str:
    return f"""
[services.crash]
command = ["{PY}", "-c", "{code}"]
restart = "{restart}"
backoff = {{ initial = "50ms", max = "200ms" }}
start_limit = {{ burst = {burst}, interval = "1m" }}
"""


def test_crash_loop_backs_off_then_fails_at_the_start_limit(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(crashing("always"))
            await stack.until(lambda: stack.phase("crash") is Phase.FAILED, message="phase failed")
            starts = stack.of_type("started", "crash")
            assert len(starts) == 4  # burst = 4
            gaps = [b.timestamp - a.timestamp for a, b in zip(starts, starts[1:])]
            delays = [e.data["delay"] for e in stack.of_type("backoff", "crash")]
            assert delays[0] == 0.0 and delays == sorted(delays) and max(delays) <= 0.2, delays
            assert all(g >= d * 0.9 for g, d in zip(gaps, delays)), (gaps, delays)
            assert [e.data["exit"] for e in stack.of_type("exited", "crash")] == ["exit 3"] * 4
            assert stack.of_type("failed", "crash")
            # failed stays failed on a reload with the same spec ...
            assert list(await stack.apply(crashing("always"))) == []
            # ... and a changed file starts it again
            plan = await stack.apply(crashing("always", burst=5))
            assert [a.kind.value for a in plan] == ["restart"]
            await stack.until(lambda: len(stack.of_type("started", "crash")) > 4)

    run(body())


def test_on_failure_leaves_a_clean_exit_alone(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(crashing("on-failure", code="print('done')"))
            await stack.until(lambda: stack.phase("crash") is Phase.EXITED)
            assert len(stack.of_type("started", "crash")) == 1
            assert str(stack.replica("crash").last_exit) == "exit 0"

    run(body())


def test_never_records_the_exit_code(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(crashing("never"))
            await stack.until(lambda: stack.phase("crash") is Phase.EXITED)
            assert len(stack.of_type("started", "crash")) == 1
            assert stack.replica("crash").last_exit.code == 3

    run(body())


def test_killed_by_signal_is_reported_as_a_signal_and_restarted_at_once(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(crashing("always", code="import time; time.sleep(300)"))
            pid = await stack.until(lambda: stack.pid("crash"))
            os.kill(pid, signal.SIGKILL)
            new = await stack.until(lambda: stack.pid("crash") not in (None, pid) and stack.pid("crash"))
            assert new != pid
            exited = stack.of_type("exited", "crash")[0]
            assert exited.data["exit"] == "signal 9 (SIGKILL)" and exited.data["signal"] == 9 and exited.data["code"] is None
            assert stack.of_type("backoff", "crash")[0].data["delay"] == 0.0

    run(body())


def test_missing_executable_is_a_start_failure_not_a_crash_of_the_supervisor(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(crashing("always").replace(f'"{PY}", "-c", "import sys; sys.exit(3)"', '"/nonexistent/binary"'))
            await stack.until(lambda: stack.phase("crash") is Phase.FAILED)
            failures = stack.of_type("start-failed", "crash")
            assert failures and "command not found: /nonexistent/binary" in failures[0].data["error"]

    run(body())


def test_unknown_user_fails_that_service_only_and_user_takes_its_groups(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    text = """
[services.ghost]
command = ["sleep", "300"]
user = "no-such-user-here"
start_limit = { burst = 2, interval = "1m" }
backoff = { initial = "20ms", max = "50ms" }

[services.who]
command = ["sh", "-c", "echo ids $(id -u) $(id -g); sleep 300"]
user = "nobody"
"""

    async def body():
        if os.geteuid() != 0:
            import pytest
            pytest.skip("switching users needs root")
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.phase("ghost") is Phase.FAILED)
            assert "unknown user 'no-such-user-here'" in stack.of_type("start-failed", "ghost")[0].data["error"]
            line = await stack.line("who", "ids ")
            assert line == f"ids {nobody.pw_uid} {nobody.pw_gid}"
            assert stack.pid("who")

    run(body())
