"""Procfile and supervisord.conf -> services.toml, by the source tools' own rules (honcho and
foreman for a Procfile; supervisord's options.py and datatypes.py for supervisord.conf).

Every accepted input's output passes ``supervise check`` (config.parse) saved where the input
was; what the source tool refuses is refused with ``FILE:LINE: ...``; what has no equivalent
is a Finding (stderr in the CLI) and a comment in the output."""

from __future__ import annotations

import os
import platform
import signal
import threading
from pathlib import Path

import pytest

from supervisor.desired import config
from supervisor.desired.environ import command_argv, replica_env
from supervisor.desired.importers import (
    Finding,
    ImportFailed,
    clean,
    guess_format,
    import_file,
    key_value_pairs,
    needs_shell,
    procfile_to_toml,
    shell_to_argv,
    supervisord_to_toml,
)
from supervisor.desired.model import Condition, RestartPolicy

PROCFILE = """\
# Procfile of a Rails app
web: bundle exec puma -C config/puma.rb
worker:   bundle exec sidekiq -c ${SIDEKIQ_CONCURRENCY:-5} -q default -q mailers

api: exec ./bin/api --port $PORT --host "0.0.0.0"
release: rake db:migrate && rake assets:precompile
clock: RAILS_ENV=production bundle exec clockwork config/clock.rb
assets: cd frontend && npm run watch 2>&1 | tee -a log/assets.log
this line is not a process
"""

DOTENV = """\
# local settings
PORT=3000
DATABASE_URL="postgres://app:secret@localhost/app_dev"
export REDIS_URL=redis://localhost:6379/0
"""


def check(text: str, folder: Path):
    """What `supervise check` does with the output saved as FOLDER/services.toml."""
    path = folder / "services.toml"
    path.write_text(text)
    return config.parse(text, path)


def no_raw_controls(text: str) -> bool:
    return all(c in "\n" or c.isprintable() for c in text)


# -- Procfile --------------------------------------------------------------------------------

@pytest.mark.parametrize("command, shell", [
    ("bundle exec puma -C config/puma.rb", False),
    ("exec gunicorn app:app -b 0.0.0.0:$PORT", False),
    ('node "${ENTRY:-server}.js" --port=${PORT}', False),
    ("python -m http.server", False),
    ("cd web && npm start", True),
    ("echo '$HOME'", True),               # single quotes: the shell would not expand it
    ("ls *.py", True),
    ("app | logger", True),
    ("app > out.log", True),
    ("app $(cat args)", True),
    ("FOO=1 app", True),
    ("ulimit -n 4096; app", True),
    ("app # trailing comment", True),
    ("~/bin/app", True),
])
def test_commands_run_without_a_shell_unless_they_need_one(command, shell):
    assert needs_shell(command) is shell


def test_shell_words_become_argv_with_our_expansion():
    assert shell_to_argv('exec ./bin/api --port $PORT --host "0.0.0.0"') == [
        "./bin/api", "--port", "${PORT}", "--host", "0.0.0.0"]
    assert shell_to_argv("app ${A:-x} \"$B\"") == ["app", "${A:-x}", "${B}"]


def test_procfile_round_trip(tmp_path):
    (tmp_path / ".env").write_text(DOTENV)
    findings: list[Finding] = []
    text = procfile_to_toml(PROCFILE, env_text=DOTENV, env_file=".env", findings=findings, environ={})
    services = check(text, tmp_path).services
    assert list(services) == ["web", "worker", "api", "release", "clock", "assets"]
    assert services["web"].command == ("bundle", "exec", "puma", "-C", "config/puma.rb")
    assert not services["web"].shell
    assert services["worker"].command[3:5] == ("-c", "${SIDEKIQ_CONCURRENCY:-5}")
    assert services["api"].command == ("./bin/api", "--port", "${PORT}", "--host", "0.0.0.0")
    assert services["release"].shell and services["release"].command == ("rake db:migrate && rake assets:precompile",)
    assert services["clock"].shell and services["assets"].shell
    # PORT as honcho gives it: base from .env (3000), + 100 per process type in file order.
    assert [s.environment["PORT"] for s in services.values()] == ["3000", "3100", "3200", "3300", "3400", "3500"]
    # The .env reaches every service (read with python-dotenv, `export` and quotes included).
    assert services["web"].environment["DATABASE_URL"] == "postgres://app:secret@localhost/app_dev"
    assert services["clock"].environment["REDIS_URL"] == "redis://localhost:6379/0"
    assert [str(f) for f in findings] == [
        "Procfile:9: line not understood, skipped (as honcho and foreman skip it): this line is not a process"]
    assert "NOT CARRIED OVER: Procfile:9: line not understood" in text
    assert "secret" not in text  # values stay in .env, not copied into the file


def test_release_is_a_one_shot_every_other_service_waits_for(tmp_path):
    services = check(procfile_to_toml("web: app\nrelease: ./migrate\nworker: work\n", environ={}), tmp_path).services
    assert services["release"].restart is RestartPolicy.NEVER
    for name in ("web", "worker"):
        assert [(d.service, d.condition) for d in services[name].depends_on] == [("release", Condition.COMPLETED)]
    assert services["release"].depends_on == ()
    # release keeps its place in the port order, as honcho counts every process type
    assert [s.environment["PORT"] for s in services.values()] == ["5000", "5100", "5200"]


@pytest.mark.parametrize("dotenv, environ, ports", [
    (None, {}, ["5000", "5100"]),                               # honcho's and foreman's default
    (None, {"PORT": "8000"}, ["8000", "8100"]),                 # PORT from the environment
    ("PORT=3000\n", {"PORT": "8000"}, ["3000", "3100"]),        # .env wins over the environment
])
def test_port_base_as_honcho_takes_it(tmp_path, dotenv, environ, ports):
    text = procfile_to_toml("web: python -m http.server $PORT\nworker: python worker.py\n", env_text=dotenv,
                            env_file=".env" if dotenv else None, environ=environ)
    if dotenv:
        (tmp_path / ".env").write_text(dotenv)
    services = check(text, tmp_path).services
    assert [s.environment["PORT"] for s in services.values()] == ports


def test_procfile_bom_and_crlf_read_as_honcho_reads_them(tmp_path):
    (tmp_path / "Procfile").write_bytes(b"\xef\xbb\xbfweb: python -m http.server $PORT\r\n"
                                        b"# comment\r\nworker: python worker.py --name \"a b\"\r\n")
    (tmp_path / ".env").write_bytes(b"\xef\xbb\xbfPORT=7000\r\nNAME=x\r\n")
    findings: list[Finding] = []
    text = import_file(tmp_path / "Procfile", findings=findings, environ={})
    services = check(text, tmp_path).services
    assert list(services) == ["web", "worker"]
    assert services["worker"].command == ("python", "worker.py", "--name", "a b")  # no stray \r
    assert [s.environment["PORT"] for s in services.values()] == ["7000", "7100"]
    assert findings == []
    assert "\r" not in text and "\ufeff" not in text


def test_platform_only_variables_are_reported_not_left_empty(tmp_path):
    findings: list[Finding] = []
    procfile = ("web: ./server --dyno $DYNO --commit ${SOURCE_VERSION}\nworker: ./work --id $DYNO_ID\n"
                "big: node --max-old-space-size=$((DYNO_RAM / 2)) index.js\n")
    text = procfile_to_toml(procfile, findings=findings, environ={})
    check(text, tmp_path)
    assert [(f.line, f.message.split(":")[0], f.message.split("$")[1].split(" ")[0]) for f in findings] == [
        (1, "web", "DYNO"), (1, "web", "SOURCE_VERSION"), (3, "big", "DYNO_RAM")]
    assert "$DYNO is set only by a platform" in text
    # set by .env (or the environment): nothing to report
    findings.clear()
    procfile_to_toml(procfile, env_text="DYNO=web.1\nSOURCE_VERSION=abc\nDYNO_RAM=512\n", env_file=".env", findings=findings,
                     environ={})
    assert findings == []


@pytest.mark.parametrize("procfile, message", [
    ("web: a\nworker: b\nweb: c\n", "Procfile:3: process name 'web' is also on line 1: process names must be "
                                    "unique within a Procfile (honcho refuses it)"),
    ("web: a\n<<<<<<< HEAD\nworker: b\n=======\nworker: c\n>>>>>>> feature\n",
     "Procfile:2: merge-conflict marker '<<<<<<< HEAD': resolve the conflict first"),
    ("# only a comment\n\n", "Procfile: no `name: command` lines found"),
    ("web:   \n", "Procfile: no `name: command` lines found"),
    ("web: a\n-web: b\n", "Procfile:2: process name '-web' would be the service name 'web' a second time; "
                         "rename one of them"),
])
def test_procfile_refused_as_honcho_refuses_it(procfile, message):
    with pytest.raises(ImportFailed) as caught:
        procfile_to_toml(procfile, environ={})
    assert str(caught.value) == message


def test_procfile_port_that_is_not_a_number_is_refused():
    with pytest.raises(ImportFailed, match=r"^\.env: PORT='abc' is not a port number \(honcho refuses it too\)"):
        procfile_to_toml("web: a\n", env_text="PORT=abc\n", env_file=".env", environ={})


def test_control_characters_never_reach_the_output_raw(tmp_path):
    findings: list[Finding] = []
    text = procfile_to_toml("web: a\n\x1b[31mnot a\x07 process\x1b[0m\n", findings=findings, environ={})
    check(text, tmp_path)
    assert no_raw_controls(text) and "\\x1b[31mnot a\\x07 process" in text
    assert no_raw_controls(str(findings[0]))
    assert clean("a\tb\u2028c\x7f") == "a\\x09b\\u2028c\\x7f"


# -- supervisord.conf ------------------------------------------------------------------------

SUPERVISORD = """\
; supervisor config file
[unix_http_server]
file=/var/run/supervisor.sock   ; (the path to the socket file)
chmod=0700                       ; socket file mode (default 0700)

[supervisord]
logfile=/var/log/supervisor/supervisord.log ; (main log file;default $CWD/supervisord.log)
pidfile=/var/run/supervisord.pid ; (supervisord pidfile;default supervisord.pid)
environment=LANG="en_US.UTF-8",TZ=UTC

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///var/run/supervisor.sock ; use a unix:// URL  for a unix socket

[program:web]
command=/srv/app/venv/bin/gunicorn app:wsgi --bind 127.0.0.1:80%(process_num)02d --name %(program_name)s
process_name=%(program_name)s_%(process_num)02d
numprocs=3
directory=/srv/app
user=root
autorestart=true
stopsignal=QUIT
stopwaitsecs=30
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile=/var/log/web.log
environment=DJANGO_SETTINGS_MODULE="app.settings.prod",PATH="/srv/app/venv/bin:%(ENV_PATH)s",GREETING="hello, world"

[program:worker]
command=python -m celery -A app worker -n worker%(process_num)d@%%h --pidfile=/run/$x
process_name=%(program_name)s-%(process_num)d
numprocs=2
exitcodes=0,2
startsecs=10
startretries=5
priority=200

[program:cron]
command = /usr/sbin/cron -f  ; run in the foreground
autostart = false
autorestart = false
umask=022

[group:app]
programs=web,worker
priority=999

[eventlistener:memmon]
command=memmon -a 200MB -m root@example.com
events=TICK_60

[include]
files = conf.d/*.conf extra.ini
"""

REDIS = """\
# an included file
[program:redis]
command=redis-server --port 6379 --dir %(here)s/data --cluster-announce-hostname %(host_node_name)s
stopsignal=INT

[include]
files = /never/read/*.conf
"""


@pytest.fixture
def supervisord_conf(tmp_path) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "redis.conf").write_text(REDIS)
    (tmp_path / "conf.d" / "notes.txt").write_text("not included: wrong suffix\n")
    (tmp_path / "extra.ini").write_text("[program:mailer]\ncommand=python mailer.py\nautorestart=unexpected\n")
    path = tmp_path / "supervisord.conf"
    path.write_text(SUPERVISORD)
    return path


def test_supervisord_round_trip(supervisord_conf, tmp_path):
    findings: list[Finding] = []
    text = supervisord_to_toml(supervisord_conf.read_text(), path=str(supervisord_conf), findings=findings,
                               environ={"PATH": "/usr/bin"})
    services = check(text, tmp_path).services
    # numprocs = 3 with a padded %(process_num)02d: one service per process, named as supervisord names them
    assert list(services) == ["web_00", "web_01", "web_02", "worker", "cron", "redis", "mailer"]

    web = services["web_01"]
    assert web.command == ("/srv/app/venv/bin/gunicorn", "app:wsgi", "--bind", "127.0.0.1:8001", "--name", "web")
    assert (web.replicas, web.restart, web.stop_signal, web.stop_timeout) == (
        1, RestartPolicy.ALWAYS, signal.SIGQUIT, 30.0)
    assert (web.cwd, web.user) == ("/srv/app", "root")
    assert web.environment["GREETING"] == "hello, world"  # a quoted comma stays in the value
    assert web.environment["DJANGO_SETTINGS_MODULE"] == "app.settings.prod"
    assert web.environment["PATH"] == "/srv/app/venv/bin:${PATH}"  # expanded at run time, as supervisord at start
    assert web.environment["LANG"] == "en_US.UTF-8" and web.environment["TZ"] == "UTC"  # [supervisord]

    worker = services["worker"]
    # plain %(process_num)d from 0 is exactly ${REPLICA}; %% -> %; a literal $ stays literal.
    assert worker.command[-2:] == ("worker${REPLICA}@%h", "--pidfile=/run/$x")
    assert worker.restart is RestartPolicy.ON_FAILURE  # supervisord's default: unexpected
    assert worker.replicas == 2

    cron = services["cron"]
    assert cron.command == ("/usr/sbin/cron", "-f")
    assert (cron.replicas, cron.restart) == (0, RestartPolicy.NEVER)  # autostart = false

    redis = services["redis"]  # from conf.d/*.conf, relative to the including file
    assert redis.command[4] == f"{tmp_path / 'conf.d'}/data"  # %(here)s: the included file's folder
    assert redis.command[6] == platform.node()
    assert redis.stop_signal == signal.SIGINT
    assert services["mailer"].restart is RestartPolicy.ON_FAILURE

    conf = str(supervisord_conf)
    reported = {(f.file, f.line, f.message.split(":")[0]) for f in findings}
    assert reported == {
        (conf, 2, "[unix_http_server]"), (conf, 7, "[supervisord] logfile"), (conf, 8, "[supervisord] pidfile"),
        (conf, 11, "[rpcinterface"), (conf, 14, "[supervisorctl]"), (conf, 28, "[program"),
        (conf, 29, "[program"), (conf, 34, "[program"), (conf, 36, "[program"), (conf, 37, "[program"),
        (conf, 38, "[program"), (conf, 39, "[program"), (conf, 45, "[program"), (conf, 47, "[group"),
        (conf, 51, "[eventlistener"), (str(tmp_path / "conf.d" / "redis.conf"), 6, "[include] in an included file")}
    for note in ("exitcodes = 0,2", "startsecs = 10", "startretries = 5", "priority = 200", "umask = 022",
                 "redirect_stderr = true", "stdout_logfile = /var/log/web.log", "[group:app]",
                 "[eventlistener:memmon]", "[unix_http_server]", "[rpcinterface:supervisor]", "pidfile"):
        assert note in text, note
    assert all(f"NOT CARRIED OVER: {f}" in text or f"note: {f}" in text for f in findings)


def replica_argv(spec, replica: int) -> list[str]:
    env = replica_env(spec.name, spec.environment, replica, base={})
    return command_argv(spec.command, spec.shell, env)


@pytest.mark.parametrize("numprocs, start, fmt", [
    (3, 0, "%(process_num)d"), (3, 0, "%(process_num)s"), (12, 0, "%(process_num)02d"),
    (3, 8, "%(process_num)d"), (2, 1, "%(process_num)03d"), (1, 5, "%(process_num)d"), (2, 0, "%(process_num)x"),
])
def test_each_process_keeps_the_number_supervisord_gives_it(tmp_path, numprocs, start, fmt):
    """Oracle: supervisord's rule is Python's % with process_num in range(start, start + numprocs)."""
    raw = f"run --port 80{fmt} --name %(program_name)s-{fmt}"
    conf = (f"[supervisord]\n[program:p]\ncommand={raw}\nprocess_name=%(program_name)s_{fmt}\n"
            f"numprocs={numprocs}\nnumprocs_start={start}\n")
    services = check(supervisord_to_toml(conf, environ={}), tmp_path).services
    got = [replica_argv(spec, r) for spec in services.values() for r in range(spec.replicas)]
    want = [(raw % {"process_num": n, "program_name": "p"}).split() for n in range(start, start + numprocs)]
    assert got == want
    if len(services) > 1:  # one service per process: named by process_name, as supervisorctl shows them
        assert list(services) == [("p_" + fmt) % {"process_num": n} for n in range(start, start + numprocs)]


def test_every_expansion_supervisord_knows(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "jobs.conf").write_text(
        "[program:job]\ncommand=job --conf %(here)s/job.ini --group %(group_name)s --of %(numprocs)d\n")
    conf = tmp_path / "supervisord.conf"
    conf.write_text("""\
[supervisord]
environment=REGION="eu-west",SLOTS=4

[program:api]
command=api --name %(program_name)s --host %(host_node_name)s --region %(ENV_REGION)s --user %(ENV_USER)s --pct 100%%
directory=%(here)s/%(ENV_APP)s
environment=HOME_DIR="%(ENV_HOME)s/x",SELF="%(program_name)s"

[group:backend]
programs=api,job

[include]
files=conf.d/*.conf
""")
    findings: list[Finding] = []
    text = supervisord_to_toml(conf.read_text(), path=str(conf), findings=findings,
                               environ={"USER": "ann", "HOME": "/home/ann", "APP": "srv/app"})
    services = check(text, tmp_path).services
    api, job = services["api"], services["job"]
    assert api.command == ("api", "--name", "api", "--host", platform.node(), "--region", "${REGION}",
                           "--user", "${USER}", "--pct", "100%")
    assert api.cwd == f"{tmp_path}/srv/app"  # supervise does not expand cwd: fixed at import
    assert api.environment["HOME_DIR"] == "${HOME}/x" and api.environment["SELF"] == "api"
    assert api.environment["REGION"] == "eu-west"  # [supervisord] environment, as [env]
    assert replica_argv(api, 0)[6] == "eu-west"
    assert job.command == ("job", "--conf", f"{tmp_path / 'conf.d'}/job.ini", "--group", "backend", "--of", "1")
    assert "cwd is expanded at import" in text


def test_env_value_that_supervisord_splits_into_words_is_expanded_at_import(tmp_path):
    findings: list[Finding] = []
    conf = "[supervisord]\n[program:a]\ncommand=app %(ENV_OPTS)s --end\n"
    services = check(supervisord_to_toml(conf, findings=findings, environ={"OPTS": "-v  --color 'x y'"}),
                     tmp_path).services
    assert services["a"].command == ("app", "-v", "--color", "x y", "--end")  # shlex.split, as supervisord
    assert "which supervisord splits into words" in findings[0].message and findings[0].line == 3
    findings.clear()  # quotes alone change the word too
    services = check(supervisord_to_toml(conf, findings=findings, environ={"OPTS": '"-v"'}), tmp_path).services
    assert services["a"].command == ("app", "-v", "--end") and findings[0].line == 3
    # an environment= value whose ENV_ value changes how the pairs split is expanded now too
    conf = "[supervisord]\n[program:a]\ncommand=a\nenvironment=B=1,A=%(ENV_V)s\n"
    findings.clear()
    services = check(supervisord_to_toml(conf, findings=findings, environ={"V": "x y"}), tmp_path).services
    assert dict(services["a"].environment) == {"B": "1", "A": "x"}
    assert [f.line for f in findings] == [4, 4]  # y dropped, and expanded now


@pytest.mark.parametrize("environ, count", [({"WORKERS": "4"}, 4), ({"WORKERS": "1"}, 1)])
def test_replica_count_from_the_environment_at_import(tmp_path, environ, count):
    findings: list[Finding] = []
    conf = ("[supervisord]\n[program:w]\ncommand=work -n %(process_num)d\nprocess_name=w%(process_num)d\n"
            "numprocs=%(ENV_WORKERS)s\n")
    text = supervisord_to_toml(conf, findings=findings, environ=environ)
    assert check(text, tmp_path).services["w"].replicas == count
    assert f"replicas = {count} # numprocs = %(ENV_WORKERS)s gave {count} at import" in text
    count = [f for f in findings if "numprocs" in f.message]
    assert len(count) == 1 and count[0].line == 5 and "change replicas when that changes" in count[0].message


def test_replica_count_from_supervisord_environment(tmp_path):
    conf = "[supervisord]\nenvironment=N=3\n[program:w]\ncommand=w\nprocess_name=w%(process_num)d\nnumprocs=%(ENV_N)s\n"
    assert check(supervisord_to_toml(conf, environ={}), tmp_path).services["w"].replicas == 3


REFUSED = [
    ("[program:a]\nautostart=false\n", 1, "[program:a]: does not specify a command"),
    ("[program:a]\ncommand=x\nnumprocs=2\n", 3, "numprocs = 2 needs %(process_num) in process_name"),
    ("[program:a]\ncommand=x\nnumprocs=2\nprocess_name=a\n", 4, "numprocs = 2 needs %(process_num)"),
    ("[programs:a]\ncommand=x\n", 1, "[programs:a]: unknown section type (did you mean \"program:NAME\"?)"),
    ("[program:a]\ncommand=x\n[group:g]\nprograms=a,b\n", 4, "names unknown program or fcgi-program b"),
    ("[program:a]\ncommand=x\nautostart=maybe\n", 3, "autostart: not a valid boolean value: 'maybe'"),
    ("[program:a]\ncommand=x\nautorestart=sometimes\n", 3, "invalid 'autorestart' value 'sometimes'"),
    ("[program:a]\ncommand=x\nstopsignal=BOGUS\n", 3, "value 'BOGUS' is not a valid signal name"),
    ("[program:a]\ncommand=x\nstopwaitsecs=ten\n", 3, "stopwaitsecs: 'ten' is not a valid integer"),
    ("[program:a]\ncommand=x\nexitcodes=0,256\n", 3, "not a valid list of exit codes: '0,256'"),
    ("[program:a]\ncommand=x\nnumprocs=two\n", 3, "numprocs: 'two' is not a valid integer"),
    ("[program:a]\ncommand=x\numask=9\n", 3, "umask: '9' is not a valid octal"),
    ("[program:a]\ncommand=x\nstopasgroup=true\nkillasgroup=false\n", 4, "stopasgroup = true with killasgroup = false"),
    ("[program:a]\ncommand=x\nstdout_logfile_maxbytes=5XB\n", 3, "'5XB' is not a valid byte size"),
    ("[program:a]\ncommand=x\nprocess_name=a b\n", 3, "Invalid name: 'a b' because of character: ' '"),
    ("[program:a/b]\ncommand=x\n", 1, "Invalid name: 'a/b' because of character: '/'"),
    ("[program:a]\ncommand=x %(bogus)s\n", 2, "%(bogus) cannot be expanded"),
    ("[program:a]\ncommand=x\npriority=%(process_num)d\n", 3, "%(process_num) cannot be expanded"),
    ("[program:a]\ncommand=x\nstdout_logfile=/l/%(nope)s.log\n", 3, "%(nope) cannot be expanded"),
    ("[program:a]\ncommand=x %(program_name)\n", 2, "badly formatted"),
    ("[program:a]\ncommand=x 100%\n", 2, "has a % that is not %(name)s or %%"),
    ("[program:a]\ncommand=x\ndirectory=%(ENV_NOPE_X)s\n", 3, "%(ENV_NOPE_X) cannot be expanded"),
    ("[program:a]\ncommand=x\nnumprocs=%(ENV_NOPE_X)s\n", 3, "%(ENV_NOPE_X) cannot be expanded"),
    ("[program:a]\ncommand=x\nenvironment=A=b c,D=e\n", 3, "Unexpected end of key/value pairs"),
    ("[program:a]\ncommand=x\nenvironment=JUSTAWORD\n", 3, "Unexpected end of key/value pairs"),
    ('[program:a]\ncommand=a "unclosed\n', 2, "cannot be split into words: No closing quotation"),
    ("[program:a]\ncommand=\n", 2, "command: is empty"),
    ("[program:a]\ncommand=x\ndirectory=${APP}/x\n", 3, "supervisord does not expand ${...}"),
    ("[program:a]\ncommand=x\nuser=${APP_USER}\n", 3, "supervisord does not expand ${...}"),
    ("[program:a]\ncommand=x\n[include]\n", 3, "[include]: has no files = line"),
    ("[program:a]\ncommand=x\n[eventlistener:e]\ncommand=m\n", 3, 'requires an "events" line'),
    ("[program:a]\ncommand=x\n[eventlistener:e]\ncommand=m\nevents=NOPE\n", 5, "unknown event type NOPE"),
    ("[program:a]\ncommand=x\n[eventlistener:e]\nevents=TICK_5\n", 3, "does not specify a command"),
    ("[program:a]\ncommand=x\n[rpcinterface:r]\nx=1\n", 3, "does not specify a supervisor.rpcinterface_factory"),
    ("[program:a]\ncommand=x\n[inet_http_server]\nusername=u\npassword=p\n", 3, "has no port value"),
    ("[program:a]\ncommand=x\n[inet_http_server]\nport=9001\nusername=u\n", 3, "a username or a password without"),
    ("[program:a]\ncommand=x\n[inet_http_server]\nport=:99999\n", 4, "is not a valid port"),
    ("[program:a]\ncommand=x\n[unix_http_server]\nfile=/s\nusername=u\n", 3, "a username or a password without"),
    ("[program:a]\ncommand=x\n[unix_http_server]\nfile=/s\nchmod=rw\n", 5, "'rw' is not a valid octal"),
    ("[supervisord]\nloglevel=loud\n[program:a]\ncommand=x\n", 2, "bad logging level name 'loud'"),
    ("[supervisord]\nminfds=many\n[program:a]\ncommand=x\n", 2, "minfds: 'many' is not a valid integer"),
    ("[supervisord]\nlogfile=%(program_name)s.log\n[program:a]\ncommand=x\n", 2, "%(program_name) cannot be expanded"),
    ("command=x\n", 1, "a line before any [section] 'command=x'"),
    ("[program:a]\ncommand=x\njust words\n", 3, "cannot parse 'just words'"),
    ("[program:a]\n<<<<<<< HEAD\ncommand=x\n=======\ncommand=y\n>>>>>>> b\n", 2, "merge-conflict marker"),
]


@pytest.mark.parametrize("text, line, message", REFUSED)
def test_supervisord_refusals_are_located(text, line, message):
    with pytest.raises(ImportFailed) as caught:
        supervisord_to_toml(text, environ={})
    assert str(caught.value).startswith(f"supervisord.conf:{line}: "), str(caught.value)
    assert message in str(caught.value)
    if "refuses" in str(caught.value) or "cannot be expanded" in str(caught.value):
        assert "supervisord" in str(caught.value)


def test_refusals_in_an_included_file_name_that_file(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "bad.conf").write_text("# x\n[program:b]\nautostart=true\n")
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[include]\nfiles=conf.d/*.conf\n")
    with pytest.raises(ImportFailed, match=rf"^{tmp_path}/conf.d/bad.conf:2: \[program:b\]: does not specify"):
        import_file(conf, environ={})
    (tmp_path / "conf.d" / "bad.conf").write_text("[program:b]\ncommand=b\noops\n")
    with pytest.raises(ImportFailed, match=rf"^{tmp_path}/conf.d/bad.conf:3: cannot parse 'oops'"):
        import_file(conf, environ={})


def test_an_unreadable_include_is_refused(tmp_path):
    (tmp_path / "conf.d" / "dir.conf").mkdir(parents=True)  # glob matches it; it cannot be read
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[program:a]\ncommand=a\n[include]\nfiles=conf.d/*.conf\n")
    with pytest.raises(ImportFailed, match=r"cannot read included file .*dir.conf: is not a regular file"):
        import_file(conf, environ={})


def test_an_include_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    """A real FIFO matched by the include glob: refused in one line, never read (it would block)."""
    (tmp_path / "conf.d").mkdir()
    os.mkfifo(tmp_path / "conf.d" / "pipe.conf")
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[program:a]\ncommand=a\n[include]\nfiles=conf.d/*.conf\n")
    result: list = []

    def attempt() -> None:
        try:
            import_file(conf, environ={})
        except ImportFailed as exc:
            result.append(str(exc))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "blocked on the FIFO"
    assert result == [f"cannot read included file {tmp_path}/conf.d/pipe.conf: is not a regular file "
                      "(supervisord would skip it and run without its programs)"]


def test_an_include_that_matches_nothing_is_a_warning(tmp_path):
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[program:a]\ncommand=a\n\n[include]\nfiles = conf.d/*.conf other.ini\n")
    findings: list[Finding] = []
    text = import_file(conf, findings=findings, environ={})
    check(text, tmp_path)
    assert [str(f) for f in findings] == [
        f'{conf}:6: [include] files: no file matches "{tmp_path}/conf.d/*.conf" (supervisord logs the same '
        "warning and goes on)",
        f'{conf}:6: [include] files: no file matches "{tmp_path}/other.ini" (supervisord logs the same '
        "warning and goes on)"]
    assert f"NOT CARRIED OVER: {findings[0]}" in text


def test_supervisord_bom_and_crlf(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_bytes(b"\xef\xbb\xbf[program:b]\r\ncommand=b --x\r\nbogus_key=1\r\n")
    conf = tmp_path / "supervisord.conf"
    conf.write_bytes(b"\xef\xbb\xbf[supervisord]\r\nlogfile=/tmp/s.log\r\n[program:a]\r\ncommand=a \"q r\"\r\n"
                     b"[include]\r\nfiles=conf.d/*.conf\r\n")
    findings: list[Finding] = []
    services = check(import_file(conf, findings=findings, environ={}), tmp_path).services
    assert services["a"].command == ("a", "q r") and services["b"].command == ("b", "--x")
    assert [(Path(f.file).name, f.line) for f in findings] == [("supervisord.conf", 2), ("b.conf", 3)]


def test_a_file_without_supervisord_section_is_read_as_an_included_file(tmp_path):
    findings: list[Finding] = []
    check(supervisord_to_toml("[program:a]\ncommand=a\n", findings=findings, environ={}), tmp_path)
    assert "no [supervisord] section" in findings[0].message


def test_what_has_no_equivalent_is_listed_with_its_line(tmp_path):
    conf = """\
[supervisord]
logfile=/var/log/s.log
pidfile=/run/s.pid
minfds=4096
umask=022
identifier=main
childlogdir=/var/log/sv
[unix_http_server]
file=/run/s.sock
[inet_http_server]
port=127.0.0.1:9001
[supervisorctl]
serverurl=unix:///run/s.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[eventlistener:crash]
command=crashmail -m a@b
events=PROCESS_STATE_EXITED
[program:app]
command=/usr/bin/pidproxy /run/app.pid /usr/bin/app --serve
environment=B="1",A=x y
startsecs=0
colour=blue
"""
    findings: list[Finding] = []
    text = supervisord_to_toml(conf, findings=findings, environ={})
    app = check(text, tmp_path).services["app"]
    assert app.command == ("/usr/bin/app", "--serve")  # the pidproxy wrapper goes
    assert dict(app.environment) == {"A": "x", "B": "1"}  # as supervisord reads it: y is dropped
    lines = sorted(f.line for f in findings)
    assert lines == [2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 21, 22, 23]
    for finding in findings:
        assert f"NOT CARRIED OVER: {finding}" in text
    assert any("pidproxy wrapper dropped" in f.message for f in findings)
    assert any("'y' follows a value without a comma" in f.message for f in findings)
    assert any("colour = blue: unknown to supervisord too" in f.message for f in findings)


def test_environment_names_supervise_refuses_are_dropped_and_reported(tmp_path):
    findings: list[Finding] = []
    text = supervisord_to_toml("[supervisord]\n[program:a]\ncommand=a\nenvironment=A-B=1,OK=2\n",
                               findings=findings, environ={})
    assert dict(check(text, tmp_path).services["a"].environment) == {"OK": "2"}
    assert findings[-1].line == 4 and "'A-B' is not a variable name" in findings[-1].message


def test_control_characters_in_supervisord_values_are_escaped(tmp_path):
    findings: list[Finding] = []
    text = supervisord_to_toml("[supervisord]\n[program:a]\ncommand=a\nnote=\x1b[1mbold\x07\n",
                               findings=findings, environ={})
    check(text, tmp_path)
    assert no_raw_controls(text) and "\\x1b[1mbold\\x07" in text
    assert no_raw_controls(str(findings[0]))


@pytest.mark.parametrize("text, expected", [
    ('KEY="val",KEY2=val2', {"KEY": "val", "KEY2": "val2"}),
    ("A='x, y', B = z ", {"A": "x, y", "B": "z"}),
    ('URL="postgres://u:p@h/db?a=b"', {"URL": "postgres://u:p@h/db?a=b"}),
    ("A=x y", {"A": "x"}),                   # supervisord drops the word after a value
    ("P=/usr/bin:/bin,V=1.5-rc+2", {"P": "/usr/bin:/bin", "V": "1.5-rc+2"}),
    ("", {}),
])
def test_supervisord_environment_pairs(text, expected):
    assert key_value_pairs(text) == expected


def test_check_refuses_variables_where_supervise_does_not_expand_them(tmp_path):
    text = '[services.a]\ncommand = ["a", "${X}"]\ncwd = "${APP_DIR}/x"\nuser = "${APP_USER:-app}"\n'
    with pytest.raises(config.ConfigError) as caught:
        check(text, tmp_path)
    messages = [str(d) for d in caught.value.diagnostics]
    assert len(messages) == 2
    assert ":3:" in messages[0] and "${APP_DIR} is not expanded here" in messages[0]
    assert ":4:" in messages[1] and "${APP_USER:-app}" in messages[1]


@pytest.mark.parametrize("name, text, expected", [
    ("Procfile", "web: x\n", "procfile"),
    ("Procfile.dev", "web: x\n", "procfile"),
    ("supervisord.conf", "[program:a]\n", "supervisord"),
    ("app.ini", "", "supervisord"),
    ("processes", "[program:a]\ncommand=x\n", "supervisord"),
    ("processes", "# p\nweb: x\nworker: y\n", "procfile"),
    ("processes", "# p\r\nweb: x\r\nworker: y\r\n", "procfile"),
    ("notes.txt", "hello world\n", None),
])
def test_guess_format(name, text, expected):
    assert guess_format(name, text) == expected
