"""config: services.toml text -> Desired, and every mistake as a located diagnostic.

Table-driven: each valid case is (service body, field, expected value); each invalid case is a
file whose mistake sits on a known line, with the message it must produce. No processes.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from supervisor.desired import config
from supervisor.desired.config import ConfigError, Diagnostic
from supervisor.desired.environ import replica_env
from supervisor.desired.model import (
    Check,
    Backoff,
    Condition,
    Dependency,
    RestartPolicy,
    ServiceSpec,
    Settings,
    SourceSpec,
    StartLimit,
)


def write(folder: Path, text: str, name: str = "services.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_service(folder: Path, body: str, name: str = "api") -> ServiceSpec:
    """Load a file holding one ``[services.NAME]`` table whose body is ``body``."""
    desired = config.load(write(folder, f"[services.{name}]\n" + textwrap.dedent(body).lstrip("\n")))
    return desired.services[name]


def errors(path: Path) -> list[Diagnostic]:
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    return caught.value.diagnostics


# -- valid files ---------------------------------------------------------------------------


def test_defaults(tmp_path):
    spec = load_service(tmp_path, 'command = ["app"]')
    assert spec == ServiceSpec(
        name="api",
        command=("app",),
        source=SourceSpec(kind="path", path=tmp_path.resolve(), mode="in-place"),
    )
    # spelled out, so a changed default is a visible decision
    assert spec.build is None
    assert spec.cwd == "."
    assert dict(spec.environment) == {}
    assert spec.env_file is None
    assert spec.replicas == 1
    assert spec.restart is RestartPolicy.ALWAYS
    assert spec.backoff == Backoff(initial=1.0, max=60.0, reset=None)
    assert spec.start_limit == StartLimit(burst=10, interval=60.0)
    assert spec.stop_signal == signal.SIGTERM
    assert spec.stop_timeout == 10.0
    assert spec.depends_on == ()
    assert spec.shell is False
    assert spec.ready is None and spec.live is None
    assert spec.update == "recreate"
    assert spec.watch == ()
    assert spec.user is None


def test_settings_defaults_and_values(tmp_path):
    desired = config.load(write(tmp_path, '[services.api]\ncommand = "app"\n'))
    assert desired.settings == Settings(state_dir=tmp_path.resolve() / ".supervise")
    assert desired.path == (tmp_path / "services.toml").resolve()

    desired = config.load(write(tmp_path, """
        [supervise]
        state_dir = "var/state"
        runtime = "local"
        poll = "2m"
        keep_versions = 5
    """))
    assert desired.settings == Settings(state_dir=(tmp_path / "var/state").resolve(),
                                        runtime="local", poll=120.0, keep_versions=5)
    assert dict(desired.services) == {}


def test_kubernetes_runtime_is_refused_not_run_locally(tmp_path):
    path = write(tmp_path, '[supervise]\nruntime = "kubernetes"\n[services]\n')
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert [d.message for d in error.value.diagnostics] == [
        'runtime "kubernetes" is not run by a local supervisor (it runs: local, container); start `supervise run` anew '
        'to converge the cluster, or `supervise render` to print the manifests']
    # check and render accept it
    assert config.load(path, runtimes=config.RUNTIMES).settings.runtime == "kubernetes"


def test_services_keep_file_order(tmp_path):
    desired = config.load(write(tmp_path, """
        [services.zeta]
        command = "z"
        [services.alpha]
        command = "a"
        [services.mid]
        command = "m"
    """))
    assert list(desired.services) == ["zeta", "alpha", "mid"]


VALID = [
    # durations: strings with units, and numbers of seconds
    ('stop_timeout = "500ms"', "stop_timeout", 0.5),
    ('stop_timeout = "1m30s"', "stop_timeout", 90.0),
    ('stop_timeout = "2h"', "stop_timeout", 7200.0),
    ("stop_timeout = 7", "stop_timeout", 7.0),
    ("stop_timeout = 2.5", "stop_timeout", 2.5),
    ("stop_timeout = 0", "stop_timeout", 0.0),
    ('backoff = { initial = "500ms", max = "1m30s" }', "backoff", Backoff(initial=0.5, max=90.0)),
    ('backoff = { initial = 2, max = 30, reset = "5m" }', "backoff", Backoff(initial=2.0, max=30.0, reset=300.0)),
    ('backoff = { max = "2m" }', "backoff", Backoff(initial=1.0, max=120.0)),
    ('start_limit = { burst = 3, interval = "2m" }', "start_limit", StartLimit(burst=3, interval=120.0)),
    ("start_limit = { burst = 3 }", "start_limit", StartLimit(burst=3, interval=60.0)),
    # signals: full name, short name, lower case, number
    ('stop_signal = "SIGTERM"', "stop_signal", signal.SIGTERM),
    ('stop_signal = "TERM"', "stop_signal", signal.SIGTERM),
    ("stop_signal = 15", "stop_signal", signal.SIGTERM),
    ('stop_signal = "SIGINT"', "stop_signal", signal.SIGINT),
    ('stop_signal = "quit"', "stop_signal", signal.SIGQUIT),
    ('stop_signal = "KILL"', "stop_signal", signal.SIGKILL),
    ("stop_signal = 1", "stop_signal", signal.SIGHUP),
    # command: a string is split like a shell (no shell runs), a list is kept as is
    ('command = "python -m api --port ${PORT}"', "command", ("python", "-m", "api", "--port", "${PORT}")),
    ("""command = "echo 'a b' \\"c d\\" e\\\\ f" """, "command", ("echo", "a b", "c d", "e f")),
    ('command = ["python", "-c", "print(1); print(2)"]', "command", ("python", "-c", "print(1); print(2)")),
    ('command = "a && b | c"', "command", ("a", "&&", "b", "|", "c")),
    # shell = true keeps the string whole
    ('shell = true\ncommand = "echo $HOME && sleep 1 | cat"', "command", ("echo $HOME && sleep 1 | cat",)),
    ('shell = true\ncommand = "echo hi"', "shell", True),
    ("shell = false\ncommand = \"echo hi\"", "command", ("echo", "hi")),
    # build is split like command
    ('build = "pip install -r requirements.txt"', "build", ("pip", "install", "-r", "requirements.txt")),
    ('build = ["make", "-j4"]', "build", ("make", "-j4")),
    # the rest of the service keys
    ('cwd = "sub/dir"', "cwd", "sub/dir"),
    ("replicas = 3", "replicas", 3),
    ("replicas = 0", "replicas", 0),
    ('restart = "on-failure"', "restart", RestartPolicy.ON_FAILURE),
    ('restart = "never"', "restart", RestartPolicy.NEVER),
    ('restart = "always"', "restart", RestartPolicy.ALWAYS),
    ('update = "start-first"', "update", "start-first"),
    ('watch = ["**/*.py", "*.toml"]', "watch", ("**/*.py", "*.toml")),
    ('user = "app"', "user", "app"),
    ('env = { PORT = 8000, RATIO = 0.5, DEBUG = true, OFF = false, NAME = "x" }', "environment",
     {"PORT": "8000", "RATIO": "0.5", "DEBUG": "true", "OFF": "false", "NAME": "x"}),
    ('ready = { tcp = "127.0.0.1:8000" }', "ready",
     {"kind": "tcp", "tcp": "127.0.0.1:8000", "interval": 1.0, "timeout": 1.0, "start_period": 0.0, "retries": 3}),
    ('ready = { tcp = "127.0.0.1:${PORT}" }', "ready",
     {"kind": "tcp", "tcp": "127.0.0.1:${PORT}", "interval": 1.0, "timeout": 1.0, "start_period": 0.0, "retries": 3}),
    ('ready = { tcp = "[::1]:80" }', "ready",
     {"kind": "tcp", "tcp": "[::1]:80", "interval": 1.0, "timeout": 1.0, "start_period": 0.0, "retries": 3}),
    ('live = { http = "http://127.0.0.1:8000/health", interval = "10s", timeout = "500ms", retries = 5 }', "live",
     {"kind": "http", "http": "http://127.0.0.1:8000/health", "interval": 10.0, "timeout": 0.5,
      "start_period": 0.0, "retries": 5}),
    ('ready = { exec = "pg_isready -q", start_period = "1m" }', "ready",
     {"kind": "exec", "exec": ("pg_isready", "-q"), "interval": 1.0, "timeout": 1.0, "start_period": 60.0, "retries": 3}),
    ('source = { git = "https://example.org/org/api.git", ref = "main", poll = "30s" }', "source",
     SourceSpec(kind="git", url="https://example.org/org/api.git", ref="main", poll=30.0)),
    ('source = { git = "git@example.org:org/api.git" }', "source",
     SourceSpec(kind="git", url="git@example.org:org/api.git", ref="HEAD", poll=None)),
]


@pytest.mark.parametrize(("body", "field", "expected"), VALID, ids=[f"{f}:{b.splitlines()[-1]}" for b, f, _ in VALID])
def test_valid_values(tmp_path, body, field, expected):
    (tmp_path / "sub" / "dir").mkdir(parents=True)  # a cwd must exist in a local source
    if "command" not in body:
        body = 'command = ["app"]\n' + body
    value = getattr(load_service(tmp_path, body), field)
    if isinstance(value, MappingProxyType):
        value = dict(value)
    if isinstance(value, Check):  # a typed check: compared as its table
        value = value.to_dict()
        if value["kind"] == "exec":
            value["exec"] = tuple(value["exec"])  # type: ignore[arg-type]
    assert value == expected


def test_signal_values_are_plain_ints(tmp_path):
    spec = load_service(tmp_path, 'command = "app"\nstop_signal = "HUP"')
    assert type(spec.stop_signal) is int and spec.stop_signal == 1


# -- relative paths: against the config file's folder, never the working directory ---------


def _layout(root: Path) -> Path:
    """A config folder with a local source, a local git repo path and an env file."""
    conf = root / "conf"
    (conf / "api").mkdir(parents=True)
    (conf / "repos" / "lib.git").mkdir(parents=True)
    (conf / "env").mkdir()
    (conf / "env" / "api.env").write_text("FROM_FILE=1\n")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return conf


PATHS = [
    ('source = "./api"', lambda c: SourceSpec(kind="path", path=(c / "api").resolve())),
    ('source = "api"', lambda c: SourceSpec(kind="path", path=(c / "api").resolve())),
    ('source = { path = "api/../api" }', lambda c: SourceSpec(kind="path", path=(c / "api").resolve())),
    ("", lambda c: SourceSpec(kind="path", path=c.resolve(), mode="in-place")),
    ('source = { path = "api", mode = "in-place" }', lambda c: SourceSpec(kind="path", path=(c / "api").resolve(),
                                                                       mode="in-place")),
    ('source = { git = "repos/lib.git", ref = "v1" }',
     lambda c: SourceSpec(kind="git", url=str((c / "repos/lib.git").resolve()), ref="v1")),
]


@pytest.mark.parametrize(("line", "expected"), PATHS, ids=[p[0] or "no source" for p in PATHS])
def test_relative_source_resolved_against_config_folder(tmp_path, monkeypatch, line, expected):
    conf = _layout(tmp_path)
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = load_service(conf, 'command = "app"\n' + line)
    assert spec.source == expected(conf)


def test_relative_env_file_and_state_dir_resolved_against_config_folder(tmp_path, monkeypatch):
    conf = _layout(tmp_path)
    monkeypatch.chdir(tmp_path / "elsewhere")
    desired = config.load(write(conf, """
        [supervise]
        state_dir = "../state"
        [services.api]
        command = "app"
        env_file = "env/api.env"
    """))
    spec = desired.services["api"]
    assert spec.env_file == (conf / "env" / "api.env").resolve()
    assert spec.environment["FROM_FILE"] == "1"
    assert desired.settings.state_dir == (tmp_path / "state").resolve()


def test_config_loaded_by_a_relative_path(tmp_path, monkeypatch):
    conf = _layout(tmp_path)
    write(conf, '[services.api]\ncommand = "app"\nsource = "api"\nenv_file = "env/api.env"\n')
    monkeypatch.chdir(tmp_path)
    desired = config.load("conf/services.toml")
    assert desired.path == (conf / "services.toml").resolve()
    assert desired.services["api"].source.path == (conf / "api").resolve()
    assert desired.services["api"].env_file == (conf / "env" / "api.env").resolve()
    write(conf, '[services.api]\ncommand = "app"\nsource = "nope"\n')
    found = errors(Path("conf/services.toml"))
    assert str(found[0]).startswith('conf/services.toml:3:1: services.api: source folder "nope" does not exist')


# -- environment: [env] < env_file < service env; env_file is dotenv -----------------------


def test_env_precedence(tmp_path):
    write(tmp_path, "B=file\nC=file\nD=file\n", ".env")
    spec = config.load(write(tmp_path, """
        [env]
        A = "global"
        B = "global"
        C = "global"

        [services.api]
        command = "app"
        env_file = ".env"
        env = { C = "service", E = "service" }
    """)).services["api"]
    assert dict(spec.environment) == {"A": "global", "B": "file", "C": "service", "D": "file", "E": "service"}


def test_global_env_reaches_every_service(tmp_path):
    desired = config.load(write(tmp_path, """
        [env]
        LOG_LEVEL = "info"
        [services.a]
        command = "a"
        [services.b]
        command = "b"
        env = { LOG_LEVEL = "debug" }
    """))
    assert dict(desired.services["a"].environment) == {"LOG_LEVEL": "info"}
    assert dict(desired.services["b"].environment) == {"LOG_LEVEL": "debug"}


DOTENV = [
    ("PLAIN=value", {"PLAIN": "value"}),
    ("export EXPORTED=yes", {"EXPORTED": "yes"}),
    ('DOUBLE="a b # not a comment"', {"DOUBLE": "a b # not a comment"}),
    ("SINGLE='a \"b\" # c'", {"SINGLE": 'a "b" # c'}),
    ("BARE=$NOT_EXPANDED", {"BARE": "$NOT_EXPANDED"}),  # dotenv expands only ${VAR}
    ("PASS='pa$$word'", {"PASS": "pa$$word"}),  # reaches the process as written: no 2nd expansion
    ("UNSET=${NOR_THIS}", {"UNSET": ""}),
    ("TRAILING=value # a comment", {"TRAILING": "value"}),
    ("# only a comment\n\nAFTER_BLANK=1", {"AFTER_BLANK": "1"}),
    ('MULTI="line one\nline two"', {"MULTI": "line one\nline two"}),
    ('ESCAPED="tab\\there"', {"ESCAPED": "tab\there"}),
    ("EMPTY=", {"EMPTY": ""}),
    ("NO_VALUE", {"NO_VALUE": ""}),
    ("HOST=db\nURL=postgres://${HOST}:5432", {"HOST": "db", "URL": "postgres://db:5432"}),
    ("SPACED = padded ", {"SPACED": "padded"}),
]


@pytest.mark.parametrize(("text", "expected"), DOTENV, ids=[t.splitlines()[-1] for t, _ in DOTENV])
def test_env_file_is_dotenv(tmp_path, monkeypatch, text, expected):
    for name in ("HOST", "NOT_EXPANDED", "NOR_THIS"):
        monkeypatch.delenv(name, raising=False)
    write(tmp_path, text + "\n", "app.env")
    spec = load_service(tmp_path, 'command = "app"\nenv_file = "app.env"')
    # what the process gets: dotenv's expansion only, never a second one of ours
    env = replica_env("app", spec.environment, 0, base={})
    assert {k: env[k] for k in spec.environment} == expected


@pytest.mark.parametrize("text, lines", [
    ("GOOD=1\nBAD LINE hunter2-ENVFILE\n", "line 2"),
    ('GOOD=1\nAPI_KEY="unterminated-SECRET\n', "line 2"),
])
def test_an_env_file_line_dotenv_cannot_parse_is_an_error_that_never_shows_the_line(tmp_path, text, lines):
    """python-dotenv skips such a line with a warning on stderr, and the variable is missing
    from the service's environment: a user's report. An error naming the line, not its text."""
    write(tmp_path, text, "app.env")
    path = write(tmp_path, '[services.api]\ncommand = "app"\nenv_file = "app.env"\n')
    found = errors(path)
    assert len(found) == 1 and f"cannot parse {lines}" in found[0].message, found
    assert "SECRET" not in str(found[0]) and "hunter2" not in str(found[0])


# -- depends_on ----------------------------------------------------------------------------

DEPENDS = [
    ('depends_on = ["db"]', (Dependency("db", Condition.STARTED, False),)),
    ('depends_on = ["db", "cache"]', (Dependency("db"), Dependency("cache"))),
    ('depends_on = { db = "ready" }', (Dependency("db", Condition.READY),)),
    ('depends_on = { db = "started", cache = "completed" }',
     (Dependency("db", Condition.STARTED), Dependency("cache", Condition.COMPLETED))),
    ('depends_on = { db = { condition = "ready", restart = true } }', (Dependency("db", Condition.READY, True),)),
    ('depends_on = { db = { condition = "ready", restart = false } }', (Dependency("db", Condition.READY, False),)),
    ("depends_on = { db = { restart = true } }", (Dependency("db", Condition.STARTED, True),)),
    ('depends_on = { db = { condition = "completed" } }', (Dependency("db", Condition.COMPLETED, False),)),
    ("depends_on = []", ()),
]


@pytest.mark.parametrize(("line", "expected"), DEPENDS, ids=[d[0] for d in DEPENDS])
def test_depends_on(tmp_path, line, expected):
    desired = config.load(write(tmp_path, f"""
[services.db]
command = "db"
[services.cache]
command = "cache"
[services.api]
command = "api"
{line}
"""))
    assert desired.services["api"].depends_on == expected
    assert desired.services["db"].depends_on == ()


# -- invalid files: one located diagnostic per mistake --------------------------------------

# Each case: the file text, then (line, token, message). The column is where ``token`` starts on
# that line (1-based). Every file has its mistake in [services.api] unless the message says so.
INVALID = [
    # unknown keys, with suggestions
    ('[services.api]\ncommand = "app"\nreplica = 2\n', 3, "replica", 'unknown key "replica" (did you mean "replicas"?)'),
    ('[services.api]\ncommand = "app"\nstop_timout = "5s"\n', 3, "stop_timout",
     'unknown key "stop_timout" (did you mean "stop_timeout"?)'),
    ('[services.api]\ncommand = "app"\nenviron = { A = "1" }\n', 3, "environ", 'unknown key "environ"'),
    ('[services.api]\ncommand = "app"\nbackoff = { initial = "1s", maxx = "1m" }\n', 3, "maxx",
     'unknown key "maxx" (did you mean "max"?)'),
    ('[services.api]\ncommand = "app"\nsource = { git = "https://x.org/a.git", reff = "main" }\n', 3, "reff",
     'unknown key "reff" (did you mean "ref"?)'),
    ('[services.api]\ncommand = "app"\nlive = { http = "http://x/h", intervall = "5s" }\n', 3, "intervall",
     'unknown key "intervall" (did you mean "interval"?)'),
    ('[services.api]\ncommand = "app"\nstart_limit = { bursts = 3 }\n', 3, "bursts",
     'unknown key "bursts" (did you mean "burst"?)'),
    # missing or bad command
    ('[services.api]\nreplicas = 1\n', 1, "[services.api]", 'missing required key "command"'),
    ('[services.api]\ncommand = ""\n', 2, "command", '"command" must not be empty'),
    ("[services.api]\ncommand = []\n", 2, "command", '"command" must not be empty'),
    ('[services.api]\ncommand = "python \'unterminated"\n', 2, "command", '"command": cannot split'),
    ("[services.api]\ncommand = [1, 2]\n", 2, "command",
     '"command" must be a string or a list of strings, got a list whose item 1 is an integer'),
    ('[services.api]\ncommand = ["app", "--port", 8000]\n', 2, "command",
     '"command" must be a string or a list of strings, got a list whose item 3 is an integer'),
    ('[services.api]\ncommand = "app"\nbuild = ["make", ["all"]]\n', 3, "build",
     '"build" must be a string or a list of strings, got a list whose item 2 is a list'),
    ("[services.api]\ncommand = 5\n", 2, "command", '"command" must be a string or a list of strings, got an integer'),
    ('[services.api]\nshell = true\ncommand = ["a", "b"]\n', 3, "command",
     '"command" must be a non-empty string when shell = true'),
    ('[services.api]\ncommand = "app"\nshell = "yes"\n', 3, "shell", '"shell" must be true or false, got a string'),
    ('[services.api]\ncommand = "app"\nbuild = ""\n', 3, "build", '"build" must not be empty'),
    # wrong types and values
    ('[services.api]\ncommand = "app"\nreplicas = "2"\n', 3, "replicas", '"replicas" must be a whole number, got a string'),
    ('[services.api]\ncommand = "app"\nreplicas = true\n', 3, "replicas", '"replicas" must be a whole number, got a boolean'),
    ('[services.api]\ncommand = "app"\nreplicas = -1\n', 3, "replicas", '"replicas" must be between 0 and 1000'),
    ('[services.api]\ncommand = "app"\nrestart = "allways"\n', 3, "restart",
     '"restart" must be one of always, on-failure, never, got \'allways\' (did you mean "always"?)'),
    ('[services.api]\ncommand = "app"\nupdate = "rolling"\n', 3, "update",
     '"update" must be "recreate" or "start-first", got \'rolling\''),
    ('[services.api]\ncommand = "app"\nwatch = "*.py"\n', 3, "watch", '"watch" must be a list of glob strings'),
    ('[services.api]\ncommand = "app"\nuser = 0\n', 3, "user", '"user" must be a user name, got an integer'),
    ('[services.api]\ncommand = "app"\ncwd = 5\n', 3, "cwd", '"cwd" must be a path string, got an integer'),
    ('[services.api]\ncommand = "app"\ncwd = "${APP}/x"\n', 3, "cwd",
     '"cwd" is used as written: ${APP} is not expanded here (${VAR} works in command, env and checks)'),
    ('[services.api]\ncommand = "app"\nuser = "${U:-app}"\n', 3, "user", '${U:-app} is not expanded here'),
    # durations
    ('[services.api]\ncommand = "app"\nstop_timeout = "10 seconds"\n', 3, "stop_timeout", '"stop_timeout": bad duration'),
    ('[services.api]\ncommand = "app"\nstop_timeout = "10"\n', 3, "stop_timeout", '"stop_timeout": bad duration'),
    ('[services.api]\ncommand = "app"\nstop_timeout = -1\n', 3, "stop_timeout", "must not be negative"),
    ('[services.api]\ncommand = "app"\nstop_timeout = true\n', 3, "stop_timeout", "got a boolean"),
    ("[services.api]\ncommand = \"app\"\nstop_timeout = nan\n", 3, "stop_timeout", '"stop_timeout":'),
    ('[services.api]\ncommand = "app"\nbackoff = { initial = "1x" }\n', 3, "initial", '"initial": bad duration'),
    ('[services.api]\ncommand = "app"\nbackoff = { initial = "2m", max = "1m" }\n', 3, "backoff",
     'backoff "initial" (120.0s) is larger than "max" (60.0s)'),
    ('[services.api]\ncommand = "app"\nbackoff = "1s"\n', 3, "backoff", '"backoff" must be a table'),
    ('[services.api]\ncommand = "app"\nstart_limit = { burst = 0 }\n', 3, "burst", '"burst" must be at least 1'),
    ('[services.api]\ncommand = "app"\nstart_limit = { interval = "forever" }\n', 3, "interval", '"interval": bad duration'),
    # signals
    ('[services.api]\ncommand = "app"\nstop_signal = "SIGTREM"\n', 3, "stop_signal",
     'unknown signal "SIGTREM" (did you mean "SIGTERM"?)'),
    ('[services.api]\ncommand = "app"\nstop_signal = "KIL"\n', 3, "stop_signal", 'unknown signal "KIL" (did you mean "SIGKILL"?)'),
    ('[services.api]\ncommand = "app"\nstop_signal = 99\n', 3, "stop_signal", "unknown signal number 99"),
    ('[services.api]\ncommand = "app"\nstop_signal = 0\n', 3, "stop_signal", "unknown signal number 0"),
    ('[services.api]\ncommand = "app"\nstop_signal = ["TERM"]\n', 3, "stop_signal", '"stop_signal" must be a signal name'),
    # environment
    ('[services.api]\ncommand = "app"\nenv = { "BAD-NAME" = "x" }\n', 3, '"BAD-NAME"', 'bad environment variable name "BAD-NAME"'),
    ('[services.api]\ncommand = "app"\nenv = { LIST = [1] }\n', 3, "LIST", 'env "LIST" must be a string or a number, got a list'),
    ('[services.api]\ncommand = "app"\n[services.api.env]\nOK = "1"\nNESTED = { a = 1 }\n', 5, "NESTED",
     'env "NESTED" must be a string or a number, got a table'),
    ('[services.api]\ncommand = "app"\nenv = "A=1"\n', 3, "env", '"env" must be a table of NAME = "value"'),
    ('[services.api]\ncommand = "app"\nenv_file = "missing.env"\n', 3, "env_file", 'env_file "missing.env" does not exist'),
    # sources
    ('[services.api]\ncommand = "app"\nsource = "./nowhere"\n', 3, "source", 'source folder "./nowhere" does not exist'),
    ('[services.api]\ncommand = "app"\nsource = { ref = "main" }\n', 3, "source", 'source table needs "git"'),
    ('[services.api]\ncommand = "app"\nsource = { git = "./no-repo" }\n', 3, "git", 'git repository "./no-repo" does not exist'),
    ('[services.api]\ncommand = "app"\nsource = { git = "--upload-pack=x" }\n', 3, "git", "bad repository '--upload-pack=x'"),
    ('[services.api]\ncommand = "app"\nsource = { git = "https://x.org/a.git", ref = "--output=x" }\n', 3, "ref",
     "bad ref '--output=x'"),
    ('[services.api]\ncommand = "app"\nsource = 5\n', 3, "source", '"source" must be a path string or a table'),
    # checks
    ('[services.api]\ncommand = "app"\nready = { tcp = "localhost" }\n', 3, "tcp", '"tcp" must be "host:port"'),
    ('[services.api]\ncommand = "app"\nready = { http = "ftp://x/" }\n', 3, "http", '"http" must be an http:// or https:// URL'),
    ('[services.api]\ncommand = "app"\nready = { tcp = "a:1", http = "http://a/" }\n', 3, "ready",
     '"ready" needs exactly one of tcp, http, exec'),
    ('[services.api]\ncommand = "app"\nlive = {}\n', 3, "live", '"live" needs exactly one of tcp, http, exec'),
    ('[services.api]\ncommand = "app"\nready = "tcp://x:1"\n', 3, "ready", '"ready" must be a table'),
    # dependencies
    ('[services.db]\ncommand = "db"\n[services.api]\ncommand = "app"\ndepends_on = ["dbb"]\n', 5, "depends_on",
     'unknown dependency "dbb" (did you mean "db"?)'),
    ('[services.api]\ncommand = "app"\ndepends_on = ["api"]\n', 3, "depends_on", 'service "api" depends on itself'),
    ('[services.db]\ncommand = "db"\n[services.api]\ncommand = "app"\ndepends_on = "db"\n', 5, "depends_on",
     '"depends_on" must be a list of names or a table'),
    ('[services.db]\ncommand = "db"\n[services.api]\ncommand = "app"\ndepends_on = [{ db = "ready" }]\n', 5, "depends_on",
     '"depends_on" entries must be service names, got a table'),
    ('[services.db]\ncommand = "db"\n[services.api]\ncommand = "app"\ndepends_on = { db = "healthy" }\n', 5, "db",
     "dependency condition must be one of started, ready, completed, got 'healthy'"),
    ('[services.db]\ncommand = "db"\n[services.api]\ncommand = "app"\ndepends_on = { db = "readdy" }\n', 5, "db",
     '(did you mean "ready"?)'),
    ('[services.db]\ncommand = "db"\n[services.api]\ncommand = "app"\n'
     'depends_on = { db = { condition = "ready", restrat = true } }\n', 5, "restrat",
     'unknown key "restrat" (did you mean "restart"?)'),
    ('[services.db]\ncommand = "db"\n[services.api]\ncommand = "app"\n'
     'depends_on = { db = { condition = "ready", restart = "yes" } }\n', 5, "restart",
     '"restart" must be true or false, got a string'),
    # service tables themselves
    ('[services]\napi = "python -m api"\n', 2, "api", '"services.api" must be a table'),
]


@pytest.mark.parametrize(("text", "line", "token", "message"), INVALID, ids=[c[3][:60] for c in INVALID])
def test_invalid_service_is_located(tmp_path, text, line, token, message):
    path = write(tmp_path, text)
    found = errors(path)
    assert len(found) == 1, "\n".join(map(str, found))
    diagnostic = found[0]
    col = text.splitlines()[line - 1].index(token) + 1
    assert (diagnostic.path, diagnostic.line, diagnostic.col, diagnostic.service) == (str(path), line, col, "api")
    assert message in diagnostic.message
    assert str(diagnostic).startswith(f"{path}:{line}:{col}: services.api: ")
    assert str(diagnostic).endswith(diagnostic.message)


TOP_LEVEL = [
    ('[supervise]\npol = "1m"\n', 2, "pol", 'unknown key "pol" (did you mean "poll"?)'),
    ('[supervise]\nruntime = "kubernets"\n', 2, "runtime",
     '"runtime" must be one of local, container, kubernetes, got \'kubernets\' (did you mean "kubernetes"?)'),
    ('[supervise]\npoll = "often"\n', 2, "poll", '"poll": bad duration'),
    ("[supervise]\nkeep_versions = 0\n", 2, "keep_versions", '"keep_versions" must be at least 1'),
    ("[supervise]\nstate_dir = 1\n", 2, "state_dir", '"state_dir" must be a path string, got an integer'),
    ('supervise = "yes"\n', 1, "supervise", '"supervise" must be a table'),
    ('[envv]\nA = "1"\n', 1, "[envv]", 'unknown key "envv" (did you mean "env"?)'),
    ('[service.api]\ncommand = "app"\n', 1, "[service.api]", 'unknown key "service" (did you mean "services"?)'),
    ('[env]\n"A B" = "1"\n', 2, '"A B"', 'bad environment variable name "A B"'),
    ('env = ["A=1"]\n', 1, "env", '"env" must be a table of NAME = "value", got a list'),
    ('services = ["api"]\n', 1, "services", '"services" must be a table of [services.NAME] tables'),
]


@pytest.mark.parametrize(("text", "line", "token", "message"), TOP_LEVEL, ids=[c[3][:60] for c in TOP_LEVEL])
def test_invalid_top_level_is_located(tmp_path, text, line, token, message):
    path = write(tmp_path, text)
    found = errors(path)
    assert len(found) == 1, "\n".join(map(str, found))
    diagnostic = found[0]
    col = text.splitlines()[line - 1].index(token) + 1
    assert (diagnostic.line, diagnostic.col, diagnostic.service) == (line, col, None)
    assert message in diagnostic.message
    assert str(diagnostic) == f"{path}:{line}:{col}: {diagnostic.message}"


SYNTAX = [
    # text, line, column (1-based) of the offending character
    ('[services.api\ncommand = "app"\n', 1, 14),
    ('[services.api]\ncommand = "app\n', 2, 15),
    ("[services.api]\ncommand = \n", 2, 11),
    ('[services.api]\ncommand = "app"\nreplicas = 1 2\n', 3, 14),
    ('[services.api]\ncommand = "app"\nenv = { A = "1" B = "2" }\n', 3, 17),
    ('[services.api]\ncommand = "app"\n\n[services.api]\ncommand = "b"\n', 5, 1),
    ('[services.api]\ncommand = "app"\ncommand = "b"\n', 3, 1),
    ('a = 1\na = 2\n', 2, 1),
]


@pytest.mark.parametrize(("text", "line", "col"), SYNTAX, ids=[t.splitlines()[-1] for t, _, _ in SYNTAX])
def test_toml_syntax_error_is_located(tmp_path, text, line, col):
    path = write(tmp_path, text)
    found = errors(path)
    assert len(found) == 1
    assert (found[0].line, found[0].col) == (line, col), str(found[0])
    assert found[0].message.startswith("TOML syntax error: ")
    assert str(found[0]).startswith(f"{path}:{line}:{col}: TOML syntax error: ")


def test_parse_names_the_given_path_in_errors():
    with pytest.raises(ConfigError) as caught:
        config.parse('[services.api]\ncomand = "x"\n', "conf/services.toml")
    assert [str(d) for d in caught.value.diagnostics] == [
        'conf/services.toml:1:1: services.api: missing required key "command"',
        'conf/services.toml:2:1: services.api: unknown key "comand" (did you mean "command"?)',
    ]


def test_unreadable_file(tmp_path):
    found = errors(tmp_path / "absent.toml")
    assert len(found) == 1
    assert found[0].message.startswith("cannot read config:")
    assert str(found[0]).startswith(f"{tmp_path / 'absent.toml'}: cannot read config:")


# -- service names: they become file names, so no path tricks ------------------------------

BAD_NAMES = ["../x", "a/b", "", ".hidden", "..", ".", "-dash", "a b", "x" * 101, "a\\b", "tab\there", "é"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_service_names_rejected(tmp_path, name):
    quoted = name.replace("\\", "\\\\").replace("\t", "\\t")
    path = write(tmp_path, f'[services."{quoted}"]\ncommand = "app"\n')
    found = errors(path)
    assert len(found) == 1, "\n".join(map(str, found))
    assert found[0].service == name
    assert found[0].message.startswith(f'bad service name "{name}"')
    assert (found[0].line, found[0].col) == (1, 1), str(found[0])


@pytest.mark.parametrize("name", ["api", "web-1", "a.b", "_private", "API9", "x" * 100])
def test_good_service_names_accepted(tmp_path, name):
    path = write(tmp_path, f'[services."{name}"]\ncommand = "app"\n')
    assert list(config.load(path).services) == [name]


# -- dependency graph -----------------------------------------------------------------------

CYCLES = [
    ('[services.a]\ncommand = "a"\ndepends_on = ["b"]\n[services.b]\ncommand = "b"\ndepends_on = ["a"]\n',
     3, "a", "dependency cycle: a -> b -> a"),
    ('[services.a]\ncommand = "a"\ndepends_on = ["b"]\n[services.b]\ncommand = "b"\ndepends_on = { c = "ready" }\n'
     '[services.c]\ncommand = "c"\ndepends_on = { a = { condition = "started", restart = true } }\n',
     3, "a", "dependency cycle: a -> b -> c -> a"),
    ('[services.root]\ncommand = "r"\ndepends_on = ["x"]\n[services.x]\ncommand = "x"\ndepends_on = ["y"]\n'
     '[services.y]\ncommand = "y"\ndepends_on = ["x"]\n',
     6, "x", "dependency cycle: x -> y -> x"),
]


@pytest.mark.parametrize(("text", "line", "service", "message"), CYCLES, ids=[c[3] for c in CYCLES])
def test_dependency_cycle_reported(tmp_path, text, line, service, message):
    found = errors(write(tmp_path, text))
    assert [(d.line, d.col, d.service, d.message) for d in found] == [(line, 1, service, message)]


def test_unknown_dependencies_each_reported(tmp_path):
    found = errors(write(tmp_path, """
        [services.db]
        command = "db"
        [services.api]
        command = "app"
        depends_on = ["db", "cache", "dbs"]
        [services.web]
        command = "web"
        depends_on = { api = "ready", queue = "started" }
    """))
    assert [(d.line, d.service, d.message) for d in found] == [
        (5, "api", 'unknown dependency "cache"'),
        (5, "api", 'unknown dependency "dbs" (did you mean "db"?)'),
        (8, "web", 'unknown dependency "queue"'),
    ]


def test_dependency_on_a_service_with_errors_is_not_unknown(tmp_path):
    found = errors(write(tmp_path, """
        [services.db]
        comand = "db"
        [services.api]
        command = "app"
        depends_on = ["db"]
    """))
    assert [d.message for d in found] == [
        'missing required key "command"', 'unknown key "comand" (did you mean "command"?)']


# -- all mistakes at once -------------------------------------------------------------------


def test_five_mistakes_five_diagnostics(tmp_path):
    path = write(tmp_path, """
        [services.api]
        command = ["python", "-m", "api"]
        restart = "allways"
        stop_timeout = "10 seconds"
        depends_on = ["dbb"]

        [services.db]
        command = "postgres"
        replica = 2
        stop_signal = "SIGTREM"
    """)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    diagnostics = caught.value.diagnostics
    assert [(d.line, d.col, d.service) for d in diagnostics] == [
        (3, 1, "api"), (4, 1, "api"), (5, 1, "api"), (9, 1, "db"), (10, 1, "db")]
    lines = str(caught.value).splitlines()
    assert len(lines) == 5
    assert lines[0] == f"""{path}:3:1: services.api: "restart" must be one of always, on-failure, never, got 'allways' (did you mean "always"?)"""
    assert lines[1].startswith(f'{path}:4:1: services.api: "stop_timeout": bad duration \'10 seconds\'')
    assert lines[2] == f'{path}:5:1: services.api: unknown dependency "dbb" (did you mean "db"?)'
    assert lines[3] == f'{path}:9:1: services.db: unknown key "replica" (did you mean "replicas"?)'
    assert lines[4] == f'{path}:10:1: services.db: unknown signal "SIGTREM" (did you mean "SIGTERM"?)'


def test_diagnostics_are_in_file_order(tmp_path):
    found = errors(write(tmp_path, """
        [services.b]
        command = "b"
        replicas = "x"
        [supervise]
        pol = 1
        [services.a]
        restart = "no"
    """))
    assert [d.line for d in found] == sorted(d.line for d in found)
    assert len(found) == 4


def test_empty_file_is_refused_not_applied(tmp_path):
    with pytest.raises(ConfigError) as error:
        config.load(write(tmp_path, "  \n"))
    assert "the file is empty" in str(error.value)
    assert config.load(write(tmp_path, "[services]\n")).services == {}


def test_state_dir_is_found_even_in_a_broken_file(tmp_path):
    path = write(tmp_path, '[supervise]\nstate_dir = "var/st"\n[services.a\n')
    assert config.state_dir_of(path) == (tmp_path / "var/st").resolve()
    path = write(tmp_path, '[services.a\n')
    assert config.state_dir_of(path) == (tmp_path / ".supervise").resolve()


def test_a_service_runtime_without_an_executor_is_refused(tmp_path):
    # containers have an executor now (executors/containers.py): routed, not refused
    assert config.load(write(tmp_path, '[services.a]\ncommand = ["true"]\nruntime = "container"\n')
                       ).services["a"].runtime == "container"
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, '[services.a]\ncommand = ["true"]\nruntime = "docker"\n'))
    assert info.value.diagnostics[0].message.startswith('"runtime" must be one of local, container, kubernetes')


def test_a_service_runtime_chooses_its_executor(tmp_path):
    desired = config.load(write(tmp_path, '[services.a]\ncommand = ["true"]\nruntime = "local"\n'
                                          '[services.b]\ncommand = ["true"]\n'))
    assert desired.services["a"].runtime == "local" and desired.services["b"].runtime is None


def test_the_name_supervise_is_reserved(tmp_path):
    """A user's report: a service named ``supervise`` printed ``supervise | ready x[0]: all
    good`` on the console, indistinguishable from the supervisor's own lines."""
    path = write(tmp_path, '[services.Supervise]\ncommand = "app"\n')
    assert any("reserved" in d.message for d in errors(path))
