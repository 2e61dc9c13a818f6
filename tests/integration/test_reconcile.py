"""Applying a changed file touches exactly what changed, with real processes."""

from __future__ import annotations

import asyncio

from harness import PY, Stack, run

SLEEP = f'["{PY}", "-c", "import time; time.sleep(300)"]'


def two_services(api_env: str = "1", replicas: int = 1, restart: str = "always", extra: str = "") -> str:
    return f"""
# a comment
[services.db]
command = {SLEEP}

[services.api]
command = {SLEEP}
env = {{ FLAG = "{api_env}" }}
replicas = {replicas}
restart = "{restart}"
{extra}
"""


def test_env_change_restarts_that_service_alone(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(two_services())
            db, api = await stack.until(lambda: (stack.pid("db"), stack.pid("api")) if stack.pid("db") and stack.pid("api") else None)
            plan = await stack.apply(two_services(api_env="2"))
            assert [str(a) for a in plan] == ["restart api[0]: env (FLAG) changed"]
            new_api = await stack.until(lambda: stack.pid("api") not in (None, api) and stack.pid("api"))
            assert stack.pid("db") == db and new_api != api
            # the restart says why, in the log and the event stream
            assert "env (FLAG) changed" in stack.log("api")
            assert any(e.data.get("reason", "").startswith("env (FLAG) changed") for e in stack.of_type("restarting", "api"))

    run(body())


def test_reformatting_and_comments_change_nothing(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(two_services())
            pids = await stack.until(lambda: (stack.pid("db"), stack.pid("api")) if stack.pid("db") and stack.pid("api") else None)
            reordered = f"""
[services.api]   # moved first, with comments
restart = "always"
replicas = 1
env = {{ FLAG = "1" }}
command = {SLEEP}

[services.db]
command   =   {SLEEP}
"""
            plan = await stack.apply(reordered)
            assert list(plan) == []
            assert (stack.pid("db"), stack.pid("api")) == pids

    run(body())


def test_policy_change_applies_without_restart(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(two_services())
            api = await stack.until(lambda: stack.pid("api"))
            plan = await stack.apply(two_services(restart="on-failure", extra='stop_timeout = "3s"'))
            assert [a.kind.value for a in plan] == ["update"]
            assert stack.pid("api") == api
            assert stack.r.controllers["api"].spec.stop_timeout == 3.0

    run(body())


def test_replicas_scale_without_touching_the_others(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(two_services(replicas=2))
            first = await stack.until(lambda: (stack.pid("api", 0), stack.pid("api", 1)) if stack.pid("api", 1) and stack.pid("api", 0) else None)
            await stack.apply(two_services(replicas=3))
            await stack.until(lambda: stack.pid("api", 2))
            assert (stack.pid("api", 0), stack.pid("api", 1)) == first
            await stack.apply(two_services(replicas=1))
            assert stack.pid("api", 0) == first[0]
            assert set(stack.r.controllers["api"].replicas) == {0}

    run(body())


def test_replica_gets_its_index_and_merged_env(tmp_path):
    (tmp_path / ".env").write_text('FROM_FILE="file value"\nOVERRIDDEN=file\n')
    code = "import os; print('env', os.environ['REPLICA'], os.environ['GLOBAL'], os.environ['FROM_FILE'], os.environ['OVERRIDDEN'], flush=True); import time; time.sleep(300)"
    text = f"""
[env]
GLOBAL = "g"
OVERRIDDEN = "global"
[services.e]
command = ["{PY}", "-c", "{code}"]
env_file = ".env"
env = {{ OVERRIDDEN = "service" }}
replicas = 2
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.log("e").count("env ") >= 2)
            lines = sorted(l for l in stack.log("e").splitlines() if l.startswith("env "))
            assert lines == ["env 0 g file value service", "env 1 g file value service"]

    run(body())


def test_added_service_starts_and_removed_one_stops(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(two_services())
            db = await stack.until(lambda: stack.pid("db"))
            api = stack.pid("api")
            only_db = f"[services.db]\ncommand = {SLEEP}\n[services.cache]\ncommand = {SLEEP}\n"
            plan = await stack.apply(only_db)
            assert sorted(str(a) for a in plan) == ["start cache[0]: new service", "stop api[0]: removed from config"]
            await stack.until(lambda: stack.pid("cache"))
            assert "api" not in stack.r.controllers and stack.pid("db") == db
            import psutil
            assert not psutil.pid_exists(api) or psutil.Process(api).status() == psutil.STATUS_ZOMBIE
            assert [e.type.value for e in stack.events if e.service == "api"][-1] == "delete"

    run(body())


def test_dependency_gates_start_until_ready(tmp_path):
    code = "import socket,time; time.sleep(0.3); s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); open('port','w').write(str(s.getsockname()[1])); time.sleep(300)"
    text = f"""
[services.db]
command = ["{PY}", "-c", "{code}"]
ready = {{ exec = ["{PY}", "-c", "import os,sys; sys.exit(0 if os.path.exists('port') else 1)"], interval = "50ms" }}
[services.api]
command = {SLEEP}
depends_on = {{ db = "ready" }}
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.pid("api"))
            ready = stack.of_type("ready", "db")[0]
            started = stack.of_type("started", "api")[0]
            assert ready.timestamp <= started.timestamp

    run(body())


def test_pending_replica_follows_its_dependencies_being_removed(tmp_path):
    with_dep = f"""
[services.db]
command = {SLEEP}
ready = {{ tcp = "127.0.0.1:1", interval = "100ms" }}
[services.app]
command = {SLEEP}
depends_on = {{ db = "ready" }}
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(with_dep)
            await stack.until(lambda: stack.phase("app") is not None and stack.phase("app").value == "pending")
            assert "waiting for db (ready)" in stack.replica("app").message
            await stack.apply(with_dep.replace('depends_on = { db = "ready" }', ""))
            await stack.until(lambda: stack.pid("app"), message="app started once nothing holds it")

    run(body())


def test_phase_is_building_while_the_first_version_is_built(tmp_path):
    text = f"""
[services.slow]
build = ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done"]
command = {SLEEP}
"""

    async def body():
        async with Stack(tmp_path) as stack:
            applying = asyncio.ensure_future(stack.apply(text))
            await stack.until(lambda: stack.reconciler and "slow" in stack.r.controllers
                              and stack.r.controllers["slow"].phase.value == "building")
            (tmp_path / "go").write_text("")
            await applying
            await stack.until(lambda: stack.pid("slow"))
            assert stack.r.controllers["slow"].phase.value == "running"

    run(body())


def test_a_dependency_restarted_by_a_change_stops_its_dependents_first_and_starts_them_after(tmp_path):
    """Issue 12.8: ``api`` (2 replicas) asks to restart with ``db``; a change to db's env
    stops both api replicas before db gets its stop signal, and starts them only once db is
    back: the order of a shutdown, then of a start. ``other`` did not ask: left alone."""
    def stack_text(version: str) -> str:
        return f"""
[services.db]
command = {SLEEP}
env = {{ V = "{version}" }}
[services.api]
command = {SLEEP}
replicas = 2
depends_on = {{ db = {{ condition = "started", restart = true }} }}
[services.other]
command = {SLEEP}
depends_on = ["db"]
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(stack_text("1"))
            before = await stack.until(lambda: all(stack.pid(*r) for r in (("db",), ("api", 0), ("api", 1)))
                                       and {r: stack.pid(*r) for r in (("db",), ("api", 0), ("api", 1), ("other",))})
            mark = len(stack.events)
            await stack.apply(stack_text("2"))
            after = await stack.until(lambda: all(stack.pid(*r) not in (None, before[r]) for r in
                                                  (("db",), ("api", 0), ("api", 1))) and True)
            assert after and stack.pid("other") == before[("other",)]
            order = [(e.type.value, f"{e.service}[{e.data.get('replica')}]") for e in stack.events[mark:]
                     if e.type.value in ("stopping", "stopped", "started")]
            where = {item: i for i, item in enumerate(order)}
            for api in ("api[0]", "api[1]"):
                assert where[("stopped", api)] < where[("stopping", "db[0]")], order
                assert where[("started", "db[0]")] < where[("started", api)], order
            assert all(e.data.get("reason") == "dependency db restarts" for e in stack.events[mark:]
                       if e.type.value == "stopping" and e.service == "api")
            assert not [e for e in stack.events[mark:] if e.service == "other" and e.type.value == "stopping"]

    run(body())


def test_good_after_is_judged_when_looked_at_not_on_a_timer_of_its_own(tmp_path):
    """A replica turning good after ``good_after`` changes no process, so it is a lazy timer
    (lifecycle.LAZY_TIMERS): no loop timer per replica and no state record written at its
    deadline (2,000 of them woke an idle supervisor 10 s after its start burst). Whatever
    reads the service after the deadline (status, versions, a plan, an event of the replica)
    sees it good; the record takes it at its next write (a detach writes it too)."""
    from supervisor.clock import FakeClock
    from supervisor.decide.lifecycle import Timer
    from supervisor.observe import state

    clock = FakeClock()

    async def body():
        async with Stack(tmp_path, clock=clock) as stack:
            await stack.apply(two_services(extra='good_after = "5s"'))
            await stack.until(lambda: stack.pid("api"))
            api = stack.r.controllers["api"]
            replica = api.replicas[0]
            assert Timer.GOOD not in replica.timers and replica.due is not None and Timer.GOOD in replica.due
            written = state.load_all(stack.r.state_dir)["api"]
            clock.advance(4.9)
            assert not api.observe().replicas[0].good and api.good_versions() == ()
            clock.advance(0.2)
            observed = api.observe()
            assert observed.replicas[0].good and api.good_versions() == (replica.launch.artifact.version,)
            assert replica.due is None and replica.state.good
            await asyncio.sleep(0.05)  # a persist would have run by now: none was asked for
            assert state.load_all(stack.r.state_dir)["api"] == written and written.good == ()
            api.persist()  # the record's next write (a restart, a stop, a deploy ...) takes it
            await stack.until(lambda: state.load_all(stack.r.state_dir)["api"].good, message="good written")
            assert [g[0] for g in state.load_all(stack.r.state_dir)["api"].good] == [replica.launch.artifact.version]

    run(body())
