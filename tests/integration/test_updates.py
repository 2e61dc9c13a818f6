"""Safe updates: start-first replacement, and automatic rollback of a bad new version."""

from __future__ import annotations

import asyncio

import psutil

from harness import PY, Stack, run

SLEEP = f'"{PY}", "-c", "import time; time.sleep(300)"'
CRASH = f'"{PY}", "-c", "import sys; sys.exit(1)"'


def service(command: str, extra: str = "") -> str:
    return f"""
[services.app]
command = [{command}]
backoff = {{ initial = "20ms", max = "100ms" }}
{extra}
"""


READY = 'ready = { exec = ["true"], interval = "50ms" }'


def test_crash_looping_new_version_is_rolled_back_to_the_last_good(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, READY))
            # proven good: ready (without a check: up for PROBATION seconds)
            old = await stack.until(lambda: stack.replica("app") and stack.replica("app").ready and stack.pid("app"))
            await stack.apply(service(CRASH, READY))
            rolled = await stack.until(lambda: stack.of_type("rolled-back", "app"), message="a rollback")
            assert "crashed 3 times" in rolled[0].data["reason"]
            back = await stack.until(lambda: stack.pid("app") not in (None, old) and stack.pid("app"))
            replica = stack.replica("app")
            assert "time.sleep(300)" in " ".join(replica.launch.spec.command)
            assert psutil.Process(back).is_running()
            assert "rolled back to the previous config" in stack.r.controllers["app"].deploy_message
            # the bad config is not retried on every wake-up; the next change is
            assert list(await stack.apply(service(CRASH, READY))) == []
            plan = await stack.apply(service(SLEEP, READY + '\nenv = { V = "2" }'))
            assert [a.kind.value for a in plan] == ["restart"]

    run(body())


def test_new_version_that_never_becomes_ready_is_rolled_back(tmp_path):
    ready = 'ready = { exec = ["test", "-e", "ready-flag"], interval = "50ms", timeout = "50ms", retries = 1 }'

    async def body():
        (tmp_path / "ready-flag").write_text("")
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, ready))
            await stack.until(lambda: stack.replica("app") and stack.replica("app").ready)
            (tmp_path / "ready-flag").unlink()
            await stack.apply(service(SLEEP, ready + '\nenv = { V = "new" }'))
            rolled = await stack.until(lambda: stack.of_type("rolled-back", "app"), timeout=15)
            assert "never became ready" in rolled[0].data["reason"]
            await stack.until(lambda: stack.pid("app") and stack.replica("app").launch.spec.environment.get("V") is None)

    run(body())


def test_start_first_starts_the_new_one_before_stopping_the_old(tmp_path):
    extra = 'update = "start-first"\nready = { exec = ["true"], interval = "50ms" }'

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, extra))
            old = await stack.until(lambda: stack.replica("app") and stack.replica("app").ready and stack.pid("app"))
            await stack.apply(service(SLEEP, extra + '\nenv = { V = "2" }'))
            new = await stack.until(lambda: stack.pid("app") not in (None, old) and stack.pid("app"))
            ready_new = next(e for e in stack.of_type("ready", "app") if e.data["pid"] == new)
            stopping_old = next(e for e in stack.of_type("stopping", "app") if e.data["pid"] == old)
            assert ready_new.timestamp <= stopping_old.timestamp
            assert stack.replica("app").launch.spec.environment["V"] == "2"

    run(body())


def test_start_first_keeps_the_old_one_when_the_new_one_dies(tmp_path):
    extra = 'update = "start-first"'

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, extra))
            old = await stack.until(lambda: stack.pid("app"))
            await stack.apply(service(CRASH, extra))
            rolled = await stack.until(lambda: stack.of_type("rolled-back", "app"))
            assert "exited during start-up" in rolled[0].data["reason"]
            assert stack.pid("app") == old
            assert len(stack.of_type("stopping", "app")) == 0 or all(
                e.data["pid"] != old for e in stack.of_type("stopping", "app"))

    run(body())


def test_live_check_restarts_a_replica_that_stops_answering(tmp_path):
    live = 'live = { exec = ["test", "-e", "alive"], interval = "50ms", timeout = "200ms", retries = 2 }'

    async def body():
        (tmp_path / "alive").write_text("")
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, live))
            first = await stack.until(lambda: stack.pid("app"))
            await asyncio.sleep(0.3)  # answering: left alone
            assert stack.pid("app") == first
            (tmp_path / "alive").unlink()
            await stack.until(lambda: stack.of_type("restarting", "app"), message="the liveness restart")
            assert "liveness check failed 2 times" in stack.of_type("restarting", "app")[0].data["reason"]
            (tmp_path / "alive").write_text("")
            await stack.until(lambda: stack.pid("app") not in (None, first))

    run(body())


def test_no_rollback_to_a_version_that_never_proved_itself(tmp_path):
    flaky = f'"{PY}", "-c", "import sys,time; time.sleep(0.3); sys.exit(1)"'

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(flaky))
            await stack.until(lambda: stack.pid("app"))
            await stack.apply(service(CRASH))  # crashing too, and the old one was never proven
            await stack.until(lambda: len(stack.of_type("exited", "app")) >= 4, message="crashes of the new one")
            assert not stack.of_type("rolled-back", "app")
            assert "sys.exit(1)" in " ".join(stack.replica("app").launch.spec.command)

    run(body())
