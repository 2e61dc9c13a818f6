"""What a supervisor restart must not forget: a service that hit its start limit stays failed
while its spec is unchanged (systemd keeps a unit failed until reset-failed or a changed unit;
a user start or a changed spec starts it again), and a version or config an automatic rollback
took back is not deployed again until the file or the source changes. Real supervisors
(in-process, one after the other on one state dir), real crashing processes, the real control
socket."""

from __future__ import annotations

import asyncio

from harness import PY, DaemonRun, run

from supervisor.control.client import Client
from supervisor.daemon import Daemon
from supervisor.decide.runonce import Until
from supervisor.desired import config
from supervisor.desired.model import Phase
from supervisor.observe import state


def crashing(code: int = 3) -> str:
    return f"""
[services.crash]
command = ["{PY}", "-c", "import sys; sys.exit({code})"]
backoff = {{ initial = "10ms", max = "50ms" }}
start_limit = {{ burst = 2, interval = "1m" }}
"""


def phase(d: DaemonRun) -> Phase | None:
    controller = d.controllers.get("crash")
    replica = controller.replicas.get(0) if controller else None
    return replica.phase if replica else None


def user_start(state_dir) -> dict:
    with Client(state_dir, timeout=10) as client:
        return client.call("start", services=["crash"])


def test_a_start_limit_failure_outlives_a_supervisor_restart(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text(crashing())
    state_dir = tmp_path / ".supervise"

    async def body():
        async with DaemonRun(path) as d:
            await d.until(lambda: phase(d) is Phase.FAILED, message="the start limit hit")
        assert state.load_all(state_dir)["crash"].failed  # kept in the record after a full stop
        async with DaemonRun(path) as d:  # same file: still failed, nothing started
            await d.until(lambda: d.daemon.reconciler.applied > 0, message="the first pass")
            assert phase(d) is Phase.FAILED and not d.of_type("started")
            assert "start limit hit" in d.daemon.status_rows([])[0]["message"]
            reply = await asyncio.to_thread(user_start, state_dir)  # a user start clears it
            assert reply["ok"], reply
            await d.until(lambda: len(d.of_type("started")) == 2 and phase(d) is Phase.FAILED,
                          message="started again, up to its limit")
        async with DaemonRun(path) as d:
            await d.until(lambda: d.daemon.reconciler.applied > 0, message="the first pass")
            assert phase(d) is Phase.FAILED and not d.of_type("started")
        path.write_text(crashing(code=4))  # a changed spec starts it again
        async with DaemonRun(path) as d:
            await d.until(lambda: d.of_type("started"), message="a changed spec starts it")
            await d.until(lambda: phase(d) is Phase.FAILED, message="the start limit again")
        path.write_text(crashing(code=4).replace("burst = 2", "burst = 3"))  # so does a new limit
        async with DaemonRun(path) as d:
            await d.until(lambda: len(d.of_type("started")) == 3 and phase(d) is Phase.FAILED,
                          message="a new start limit starts it, up to that limit")
        assert state.load_all(state_dir)["crash"].failed
        # a run once (`run --exit-when crash`) is a fresh run: it starts it again, and fails on it
        once = Daemon(path, config.load(path), console=False, until=Until(("crash",)))
        started: list = []
        once.notifier.add_listener(lambda e: started.append(e) if e.type.value == "started" else None)
        assert await asyncio.wait_for(once.run(), 30) == 4  # the failure's own exit code
        assert len(started) == 3

    run(body())


SLEEP = f'"{PY}", "-c", "import time; time.sleep(300)"'
CRASH = f'"{PY}", "-c", "import sys; sys.exit(1)"'


def app(command: str) -> str:
    return f"""
[services.app]
command = [{command}]
backoff = {{ initial = "20ms", max = "100ms" }}
ready = {{ exec = ["true"], interval = "50ms" }}
"""


def test_a_rolled_back_config_is_not_retried_after_a_supervisor_restart(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text(app(SLEEP))

    async def body():
        async with DaemonRun(path) as d:
            await d.until(lambda: d.controllers["app"].good, message="the first config proven good")
            path.write_text(app(CRASH))  # a real save of a bad config: crashes, rolled back
            await d.until(lambda: d.of_type("rolled-back", "app"), message="the rollback")
            pid = await d.until(lambda: d.pid("app") and d.controllers["app"].replicas[0].ready and d.pid("app"),
                                message="the good config back")
            d.daemon.detaching = True  # SIGQUIT: leave the services running for the next supervise
        async with DaemonRun(path) as d:  # the same (bad) file: the good replica is adopted and kept
            await d.until(lambda: d.daemon.reconciler.applied > 0, message="the first pass")
            assert d.pid("app") == pid and not d.of_type("started") and not d.of_type("restarting")
            assert "rolled back to the previous config" in d.controllers["app"].deploy_message
            path.write_text(app(SLEEP) + 'env = { V = "2" }\n')  # the next change deploys as usual
            await d.until(lambda: d.of_type("started", "app"), message="a changed file deploys")

    run(body())
