"""plan: a pure diff of (desired, observed), table-tested over pairs of config files.

Each case is (old config text, new config text, expected action lines). The observed state is
built as if the old config were fully running: every replica RUNNING at version "rev-hash".
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisor.desired import config
from supervisor.desired.model import (
    Condition,
    Dependency,
    Desired,
    Observed,
    Phase,
    ReplicaObserved,
    ServiceObserved,
    ServiceSpec,
    SourceSpec,
)
from supervisor.decide.plan import Action, ActionKind, Plan, dependency_order, plan

CONFIG_PATH = "/srv/app/services.toml"  # never read: parse() only anchors relative paths on it


def desired(text: str) -> Desired:
    return config.parse(text, CONFIG_PATH)


def running(state: Desired, version: str = "rev-hash", **overrides: dict) -> Observed:
    """The observed state of ``state`` fully running: every replica RUNNING at ``version``.

    ``overrides`` maps a service name to ServiceObserved fields to replace (held, failed, ...).
    """
    services = {}
    for number, (name, spec) in enumerate(state.services.items()):
        replicas = {
            index: ReplicaObserved(index=index, phase=Phase.RUNNING, pid=1000 + 100 * number + index,
                                   version=version, started_at=1_700_000_000.0)
            for index in range(spec.replicas)
        }
        services[name] = ServiceObserved(name=name, spec=spec, replicas=replicas, version=version)
    for name, fields in overrides.items():
        services[name] = replace(services[name], **fields)
    return Observed(services)


def lines(old: str, new: str, revisions: dict[str, str] | None = None, version: str = "rev-hash",
          **overrides: dict) -> list[str]:
    return plan(desired(new), running(desired(old), version, **overrides), revisions).lines()


BASE = """
[env]
LOG_LEVEL = "info"

[services.db]
command = ["postgres", "-D", "data"]

[services.api]
command = ["python", "-m", "api"]
env = { PORT = "8000", SECRET = "hunter2" }
depends_on = ["db"]

[services.worker]
command = ["python", "-m", "worker"]
replicas = 2
depends_on = { api = "started" }
"""

# The same desired state, written differently: comments, key order, service order, and
# equivalent spellings of the same values.
BASE_REWRITTEN = """
# services of the app
[services.worker]   # the background jobs
depends_on = { api = { condition = "started" } }
replicas = 2
command = "python -m worker"
stop_signal = "TERM"

[services.api]
depends_on = { db = "started" }
env = { SECRET = "hunter2", PORT = 8000 }
command = "python -m api"
stop_timeout = "10s"

[env]
LOG_LEVEL = "info"

[services.db]
command = "postgres -D data"
stop_timeout = 10
restart = "always"
backoff = { initial = "1000ms", max = "1m" }
"""

WITH_CASCADE = BASE.replace('depends_on = { api = "started" }',
                            'depends_on = { api = { condition = "started", restart = true } }')

WEB = """
[services.web]
source = { git = "https://example.org/org/web.git", ref = "main" }
build = "npm ci"
command = ["node", "server.js"]
replicas = 2
"""

CASES = [
    ("nothing changed", BASE, BASE, []),
    ("comments, key order and spellings", BASE, BASE_REWRITTEN, []),
    ("same checks written differently",
     BASE.replace('depends_on = ["db"]', 'depends_on = ["db"]\nready = { tcp = "127.0.0.1:8000", interval = "1s" }'),
     BASE.replace('depends_on = ["db"]', 'ready = { interval = 1, tcp = "127.0.0.1:8000" }  # same\ndepends_on = ["db"]'),
     []),
    ("env value of one service", BASE, BASE.replace('"hunter2"', '"swordfish"'),
     ["restart api[0]: env (SECRET) changed"]),
    ("env key added", BASE, BASE.replace('PORT = "8000",', 'PORT = "8000", DEBUG = "1",'),
     ["restart api[0]: env (DEBUG) changed"]),
    ("env key removed", BASE, BASE.replace('PORT = "8000", ', ""),
     ["restart api[0]: env (PORT) changed"]),
    ("command of one service with replicas", BASE, BASE.replace('"-m", "worker"]', '"-m", "worker", "-v"]'),
     ["restart worker[0]: command changed", "restart worker[1]: command changed"]),
    ("cwd", BASE, BASE.replace('command = ["postgres", "-D", "data"]', 'command = ["postgres", "-D", "data"]\ncwd = "db"'),
     ["restart db[0]: cwd changed"]),
    ("command and env at once", BASE,
     BASE.replace('"-m", "api"]', '"-m", "api", "-v"]').replace('PORT = "8000"', 'PORT = "9000"'),
     ["restart api[0]: command, env (PORT) changed"]),
    ("global env restarts every service", BASE, BASE.replace('LOG_LEVEL = "info"', 'LOG_LEVEL = "debug"'),
     ["restart db[0]: env (LOG_LEVEL) changed", "restart api[0]: env (LOG_LEVEL) changed",
      "restart worker[0]: env (LOG_LEVEL) changed", "restart worker[1]: env (LOG_LEVEL) changed"]),
    ("shell", BASE, BASE.replace('command = ["python", "-m", "api"]', 'command = "python -m api"\nshell = true'),
     ["restart api[0]: command, shell changed"]),
    ("user", BASE, BASE.replace('command = ["postgres", "-D", "data"]', 'command = ["postgres", "-D", "data"]\nuser = "pg"'),
     ["restart db[0]: user changed"]),
    # supervision settings apply in place
    ("restart policy", BASE, BASE.replace('replicas = 2', 'replicas = 2\nrestart = "on-failure"'),
     ["update worker: restart applied in place"]),
    ("backoff", BASE, BASE.replace('depends_on = ["db"]', 'depends_on = ["db"]\nbackoff = { initial = "2s" }'),
     ["update api: backoff applied in place"]),
    ("stop_timeout", BASE, BASE.replace('depends_on = ["db"]', 'depends_on = ["db"]\nstop_timeout = "30s"'),
     ["update api: stop_timeout applied in place"]),
    ("several settings", BASE,
     BASE.replace('depends_on = ["db"]', 'depends_on = ["db"]\nstop_timeout = "30s"\nrestart = "never"\n'
                  'start_limit = { burst = 3 }\nstop_signal = "INT"'),
     ["update api: restart, start_limit, stop_signal, stop_timeout applied in place"]),
    ("checks and dependency condition", BASE,
     BASE.replace('depends_on = ["db"]', 'depends_on = { db = "ready" }\nready = { tcp = "127.0.0.1:8000" }'),
     ["update api: depends_on, ready applied in place"]),
    ("turning a cascade on is a setting", BASE, WITH_CASCADE, ["update worker: depends_on applied in place"]),
    # replicas scale: only the difference is touched
    ("replicas up", BASE, BASE.replace("replicas = 2", "replicas = 4"),
     ["start worker[2]: replicas 2 -> 4", "start worker[3]: replicas 2 -> 4"]),
    ("replicas down", BASE, BASE.replace("replicas = 2", "replicas = 1"),
     ["stop worker[1]: replicas 2 -> 1"]),
    ("replicas to zero", BASE, BASE.replace("replicas = 2", "replicas = 0"),
     ["stop worker[1]: replicas 2 -> 0", "stop worker[0]: replicas 2 -> 0"]),
    ("replicas down with a command change", BASE,
     BASE.replace("replicas = 2", "replicas = 1").replace('"worker"]', '"worker", "-v"]'),
     ["stop worker[1]: replicas 2 -> 1", "restart worker[0]: command changed"]),
    ("replicas up with a setting change", BASE,
     BASE.replace("replicas = 2", 'replicas = 3\nstop_timeout = "1m"'),
     ["update worker: stop_timeout applied in place", "start worker[2]: replicas 2 -> 3"]),
    # services added and removed
    ("service added", BASE, BASE + '\n[services.cache]\ncommand = "redis-server"\n',
     ["start cache[0]: new service"]),
    ("service added with git source and build", BASE, BASE + WEB,
     ["fetch web: new service", "build web: new service", "start web[0]: new service", "start web[1]: new service"]),
    ("service added with zero replicas", BASE, BASE + '\n[services.cron]\ncommand = "cron"\nreplicas = 0\n', []),
    ("service added before its dependency in the file", BASE,
     '[services.front]\ncommand = "nginx"\ndepends_on = ["web"]\n' + BASE + WEB,
     ["fetch web: new service", "build web: new service", "start web[0]: new service", "start web[1]: new service",
      "start front[0]: new service"]),
    ("service removed", BASE + '\n[services.cache]\ncommand = "redis-server"\n', BASE,
     ["stop cache[0]: removed from config"]),
    ("dependents removed before dependencies", BASE, '[env]\nLOG_LEVEL = "info"\n',
     ["stop worker[1]: removed from config", "stop worker[0]: removed from config",
      "stop api[0]: removed from config", "stop db[0]: removed from config"]),
    ("removal comes first", BASE + WEB, BASE.replace("replicas = 2", "replicas = 3"),
     ["stop web[1]: removed from config", "stop web[0]: removed from config", "start worker[2]: replicas 2 -> 3"]),
    # a dependency's restart reaches only dependents that ask for it
    ("no cascade without restart = true", BASE, BASE.replace('"hunter2"', '"x"').replace(
        'command = ["postgres", "-D", "data"]', 'command = ["postgres", "-D", "data2"]'),
     ["restart db[0]: command changed", "restart api[0]: env (SECRET) changed"]),
    ("cascade with restart = true", WITH_CASCADE, WITH_CASCADE.replace('"hunter2"', '"x"'),
     ["restart api[0]: env (SECRET) changed",
      "restart worker[0]: dependency api restarts", "restart worker[1]: dependency api restarts"]),
    ("cascade is transitive through restart = true", WITH_CASCADE.replace('depends_on = ["db"]', 'depends_on = { db = { restart = true } }'),
     WITH_CASCADE.replace('depends_on = ["db"]', 'depends_on = { db = { restart = true } }').replace('"data"]', '"data2"]'),
     ["restart db[0]: command changed", "restart api[0]: dependency db restarts",
      "restart worker[0]: dependency api restarts", "restart worker[1]: dependency api restarts"]),
    ("cascade stops where restart = true is missing", WITH_CASCADE, WITH_CASCADE.replace('"data"]', '"data2"]'),
     ["restart db[0]: command changed"]),
    ("no cascade from a setting change", WITH_CASCADE,
     WITH_CASCADE.replace('depends_on = ["db"]', 'depends_on = ["db"]\nstop_timeout = "1m"'),
     ["update api: stop_timeout applied in place"]),
    ("no cascade from scaling", WITH_CASCADE.replace('depends_on = ["db"]', 'depends_on = { db = { restart = true } }'),
     WITH_CASCADE.replace('depends_on = ["db"]', 'depends_on = { db = { restart = true } }\nreplicas = 2'),
     ["start api[1]: replicas 1 -> 2"]),
]


@pytest.mark.parametrize(("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_lines(old, new, expected):
    assert lines(old, new) == expected


def test_env_reason_names_keys_never_values():
    old = BASE.replace('"hunter2"', '"hunter2-old-secret"')
    new = BASE.replace('"hunter2"', '"swordfish-new-secret"').replace('"8000"', '"8001"')
    result = plan(desired(new), running(desired(old)))
    assert result.lines() == ["restart api[0]: env (PORT, SECRET) changed"]
    for action in result:
        for secret in ("hunter2", "swordfish", "8000", "8001"):
            assert secret not in str(action) and secret not in action.reason


def test_only_the_changed_service_is_touched():
    result = plan(desired(BASE.replace('"hunter2"', '"x"')), running(desired(BASE)))
    assert result.services() == ("api",)
    assert [a.kind for a in result] == [ActionKind.RESTART]
    assert result.for_service("db") == () and result.for_service("worker") == ()


def test_from_nothing_starts_everything_in_dependency_order():
    result = plan(desired(WITH_CASCADE + WEB), Observed.empty())
    assert result.lines() == [
        "start db[0]: new service", "start api[0]: new service",
        "start worker[0]: new service", "start worker[1]: new service",
        "fetch web: new service", "build web: new service", "start web[0]: new service", "start web[1]: new service",
    ]


def test_empty_plan_is_falsy():
    result = plan(desired(BASE), running(desired(BASE)))
    assert result == Plan() and not result and len(result) == 0


def test_plan_is_pure():
    state, observed = desired(BASE.replace("replicas = 2", "replicas = 3")), running(desired(BASE))
    before = repr(observed)
    first, second = plan(state, observed), plan(state, observed)
    assert first == second
    assert repr(observed) == before
    assert all(isinstance(action, Action) for action in first)


# -- held, failed and build-failed services ---------------------------------------------------

CHANGED_ENV = BASE.replace('"hunter2"', '"x"')
CHANGED_SETTING = BASE.replace('depends_on = ["db"]', 'depends_on = ["db"]\nbackoff = { max = "5m" }')
FAILED_REPLICA = {0: ReplicaObserved(index=0, phase=Phase.FAILED)}

STATES = [
    ("held, unchanged", BASE, {"held": True}, []),
    ("held, spec changed", CHANGED_ENV, {"held": True}, []),
    ("held, setting changed", CHANGED_SETTING, {"held": True}, []),
    ("failed, unchanged", BASE, {"failed": True}, []),
    ("failed, unchanged, replica entry failed", BASE, {"failed": True, "replicas": FAILED_REPLICA}, []),
    ("failed, spec changed", CHANGED_ENV, {"failed": True}, ["restart api[0]: env (SECRET) changed"]),
    ("failed, spec changed, replica entry failed", CHANGED_ENV, {"failed": True, "replicas": FAILED_REPLICA},
     ["restart api[0]: env (SECRET) changed"]),
    ("failed, setting changed", CHANGED_SETTING, {"failed": True}, ["restart api[0]: backoff changed after failure"]),
    ("failed, no replica entries, spec changed", CHANGED_ENV, {"failed": True, "replicas": {}},
     ["start api[0]: env (SECRET) changed"]),
    ("build failed, unchanged", BASE, {"build_failed": True}, []),
]


@pytest.mark.parametrize(("new", "fields", "expected"), [s[1:] for s in STATES], ids=[s[0] for s in STATES])
def test_held_and_failed(new, fields, expected):
    assert lines(BASE, new, api=fields) == expected


def test_failed_dependent_restarts_with_its_dependency_when_it_asks():
    new = WITH_CASCADE.replace('"hunter2"', '"x"')
    assert lines(WITH_CASCADE, new, worker={"failed": True}) == [
        "restart api[0]: env (SECRET) changed",
        "restart worker[0]: dependency api restarts", "restart worker[1]: dependency api restarts"]
    assert lines(WITH_CASCADE, new, worker={"held": True}) == ["restart api[0]: env (SECRET) changed"]


def test_build_failed_with_changed_build_rebuilds():
    old = BASE + WEB
    new = old.replace('build = "npm ci"', 'build = "npm ci --omit=dev"')
    assert lines(old, new, web={"build_failed": True}) == [
        "fetch web: build changed", "build web: build changed",
        "restart web[0]: build changed", "restart web[1]: build changed"]


# -- new source revisions --------------------------------------------------------------------

A, B = "a" * 40, "b" * 40

REVISIONS = [
    ("git and build: fetch, build, restart", BASE + WEB, f"{A[:12]}-hash", {"web": B},
     ["fetch web: new revision aaaaaaaa -> bbbbbbbb", "build web: new revision aaaaaaaa -> bbbbbbbb",
      "restart web[0]: new revision aaaaaaaa -> bbbbbbbb", "restart web[1]: new revision aaaaaaaa -> bbbbbbbb"]),
    ("local folder without build: restart only", BASE, "a-hash", {"db": "b"},
     ["restart db[0]: new revision a -> b"]),
    ("same revision: nothing", BASE + WEB, "a-hash", {"web": "a", "db": "a"}, []),
    ("same revision, abbreviated in the version: nothing", BASE + WEB, f"{A[:12]}-hash", {"web": A}, []),
    ("revision of an unknown service: nothing", BASE, "a-hash", {"ghost": "b"}, []),
    ("new revision cascades with restart = true", WITH_CASCADE, "a-hash", {"api": "b"},
     ["restart api[0]: new revision a -> b",
      "restart worker[0]: dependency api restarts", "restart worker[1]: dependency api restarts"]),
    ("new revision does not cascade without restart = true", BASE, "a-hash", {"api": "b"},
     ["restart api[0]: new revision a -> b"]),
]


@pytest.mark.parametrize(("old", "version", "revisions", "expected"), [r[1:] for r in REVISIONS],
                         ids=[r[0] for r in REVISIONS])
def test_new_revision(old, version, revisions, expected):
    assert lines(old, old, revisions, version=version) == expected


def test_new_revision_of_a_build_failed_service_rebuilds():
    old = BASE + WEB
    assert lines(old, old, {"web": "b"}, version="a-hash", web={"build_failed": True}) == [
        "fetch web: new revision a -> b", "build web: new revision a -> b",
        "restart web[0]: new revision a -> b", "restart web[1]: new revision a -> b"]


def test_new_revision_of_a_held_service_waits():
    assert lines(BASE, BASE, {"api": "b"}, version="a-hash", api={"held": True}) == []


def test_spec_change_wins_over_revision_in_the_reason():
    old = BASE + WEB
    new = old.replace('"server.js"', '"main.js"')
    assert lines(old, new, {"web": "b"}, version="a-hash") == [
        "fetch web: command changed", "build web: command changed",
        "restart web[0]: command changed", "restart web[1]: command changed"]


def test_unknown_running_version_is_not_a_new_revision():
    state = desired(BASE)
    observed = running(state)
    observed = Observed({name: replace(obs, version=None) for name, obs in observed.services.items()})
    assert plan(state, observed, {"api": "b"}).lines() == []


# -- removal edge cases ----------------------------------------------------------------------


def test_removed_service_never_started_has_nothing_to_stop():
    observed = Observed({"gone": ServiceObserved(name="gone", spec=None)})
    assert plan(desired(BASE), Observed({**running(desired(BASE)).services, **observed.services})).lines() == []


def test_removed_service_still_preparing_is_removed_whole():
    """Nothing runs yet (its first build or fetch is under way, or failed, or it is held): the
    service still goes, so the reconciler drops it and cancels what it was preparing."""
    spec = desired('[services.slow]\ncommand = ["/bin/true"]\nbuild = "sleep 100"\n').services["slow"]
    observed = Observed({"slow": ServiceObserved(name="slow", spec=spec, preparing="building")})
    assert plan(desired(BASE), Observed({**running(desired(BASE)).services, **observed.services})).lines() == [
        "stop slow: removed from config"]


def test_an_adopted_replica_whose_output_is_lost_restarts_with_that_reason():
    state = desired(BASE)
    observed = running(state)
    api = observed.services["api"]
    lost = "adopted, but its output FIFO api.0.ab.fifo is gone from /s/run"
    observed = Observed({**observed.services, "api": replace(
        api, replicas={0: replace(api.replicas[0], stale=lost)})})
    assert plan(state, observed).lines() == [f"restart api[0]: {lost}"]
    observed = Observed({**observed.services, "api": replace(
        api, replicas={0: replace(api.replicas[0], stale=True)})})
    assert plan(state, observed).lines() == ["restart api[0]: adopted, but started from another config"]


def test_removed_kinds_are_stops_only():
    result = plan(desired('[env]\nA = "1"\n'), running(desired(BASE + WEB)))
    assert {a.kind for a in result} == {ActionKind.STOP}
    assert [a.service for a in result][-1] == "db"


# -- dependency_order --------------------------------------------------------------------------


def spec(name: str, *deps: str) -> ServiceSpec:
    return ServiceSpec(name=name, command=("true",), source=SourceSpec(kind="path"),
                       depends_on=tuple(Dependency(d, Condition.STARTED) for d in deps))


ORDERS = [
    ("empty", [], []),
    ("file order when independent", [spec("c"), spec("a"), spec("b")], ["c", "a", "b"]),
    ("chain written backwards", [spec("c", "b"), spec("b", "a"), spec("a")], ["a", "b", "c"]),
    ("diamond", [spec("top", "left", "right"), spec("left", "base"), spec("right", "base"), spec("base")],
     ["base", "left", "right", "top"]),
    ("independent keep their place", [spec("x"), spec("web", "db"), spec("y"), spec("db")], ["x", "db", "web", "y"]),
    ("unknown dependencies are ignored", [spec("a", "ghost"), spec("b")], ["a", "b"]),
    ("cycles broken in file order", [spec("a", "b"), spec("b", "a"), spec("c")], ["b", "a", "c"]),
    ("self dependency", [spec("a", "a"), spec("b")], ["a", "b"]),
]


@pytest.mark.parametrize(("specs", "expected"), [o[1:] for o in ORDERS], ids=[o[0] for o in ORDERS])
def test_dependency_order(specs, expected):
    assert dependency_order({s.name: s for s in specs}) == expected


def test_dependency_order_of_a_parsed_file():
    state = desired('[services.front]\ncommand = "f"\ndepends_on = { web = "ready" }\n' + BASE + WEB.replace(
        "replicas = 2", 'replicas = 2\ndepends_on = ["api"]'))
    assert dependency_order(state.services) == ["db", "api", "web", "front", "worker"]


def test_a_version_is_written_and_read_back_in_one_place():
    from supervisor.desired.model import Version

    version = Version.of("0123456789abcdef0123", "89abcdef0123")
    assert str(version) == "0123456789ab-89abcdef"
    assert Version.parse(str(version)) == version
    assert Version.parse("abc") == Version("abc", "")
