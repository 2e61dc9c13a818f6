"""Procfile and supervisord.conf -> services.toml: the output is valid TOML that
``supervise check`` accepts (config.parse), and it says what it could not carry over."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import tomlkit

from supervisor import config
from supervisor.importers import (
    ImportFailed,
    guess_format,
    key_value_pairs,
    needs_shell,
    procfile_to_toml,
    shell_to_argv,
    supervisord_to_toml,
)
from supervisor.model import RestartPolicy

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
    text = procfile_to_toml(PROCFILE, env_text=DOTENV, env_file=".env")
    desired = check(text, tmp_path)
    services = desired.services
    assert list(services) == ["web", "worker", "api", "release", "clock", "assets"]
    assert services["web"].command == ("bundle", "exec", "puma", "-C", "config/puma.rb")
    assert not services["web"].shell
    assert services["worker"].command[3:5] == ("-c", "${SIDEKIQ_CONCURRENCY:-5}")
    assert services["api"].command == ("./bin/api", "--port", "${PORT}", "--host", "0.0.0.0")
    assert services["release"].shell and services["release"].command == ("rake db:migrate && rake assets:precompile",)
    assert services["release"].restart is RestartPolicy.NEVER
    assert services["clock"].shell and services["assets"].shell
    # PORT as foreman gives it: base from .env (3000), + 100 per process type in file order.
    assert [s.environment["PORT"] for s in services.values()] == ["3000", "3100", "3200", "3300", "3400", "3500"]
    # The .env reaches every service (read with python-dotenv, `export` and quotes included).
    assert services["web"].environment["DATABASE_URL"] == "postgres://app:secret@localhost/app_dev"
    assert services["clock"].environment["REDIS_URL"] == "redis://localhost:6379/0"
    assert "NOT CARRIED OVER: line 9 not understood: this line is not a process" in text
    assert "secret" not in text  # values stay in .env, not copied into the file


def test_procfile_without_env_uses_foreman_default_ports(tmp_path):
    desired = check(procfile_to_toml("web: python -m http.server $PORT\nworker: python worker.py\n"), tmp_path)
    assert desired.services["web"].environment["PORT"] == "5000"
    assert desired.services["worker"].environment["PORT"] == "5100"


def test_procfile_with_nothing_in_it_is_refused():
    with pytest.raises(ImportFailed, match="no `name: command` lines"):
        procfile_to_toml("# only a comment\n\n")


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
user=www-data
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
numprocs=2
numprocs_start=1
exitcodes=0,2
startsecs=10
startretries=5
priority=200
stopasgroup=false

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
    text = supervisord_to_toml(supervisord_conf.read_text(), path=str(supervisord_conf))
    services = check(text, tmp_path).services
    assert list(services) == ["web", "worker", "cron", "redis", "mailer"]

    web = services["web"]
    assert web.command == ("/srv/app/venv/bin/gunicorn", "app:wsgi", "--bind", "127.0.0.1:80${REPLICA}",
                           "--name", "web")
    assert (web.replicas, web.restart, web.stop_signal, web.stop_timeout) == (
        3, RestartPolicy.ALWAYS, signal.SIGQUIT, 30.0)
    assert (web.cwd, web.user) == ("/srv/app", "www-data")
    assert web.environment["GREETING"] == "hello, world"  # a quoted comma stays in the value
    assert web.environment["DJANGO_SETTINGS_MODULE"] == "app.settings.prod"
    assert web.environment["LANG"] == "en_US.UTF-8" and web.environment["TZ"] == "UTC"  # [supervisord]

    worker = services["worker"]
    # %(process_num)d -> ${REPLICA}, %% -> %, a literal $ stays literal under our expansion.
    assert worker.command[-2:] == ("worker${REPLICA}@%h", "--pidfile=/run/$x")
    assert worker.restart is RestartPolicy.ON_FAILURE  # supervisord's default: unexpected
    assert worker.replicas == 2

    cron = services["cron"]
    assert cron.command == ("/usr/sbin/cron", "-f")
    assert (cron.replicas, cron.restart) == (0, RestartPolicy.NEVER)  # autostart = false

    redis = services["redis"]  # from conf.d/*.conf, relative to the including file
    assert redis.command[4] == f"{tmp_path / 'conf.d'}/data"  # %(here)s: the included file's folder
    assert redis.stop_signal == signal.SIGINT
    assert services["mailer"].restart is RestartPolicy.ON_FAILURE

    for note in ("%(process_num)02d became ${REPLICA}, unpadded",
                 "%(host_node_name)s has no equivalent",
                 "stopasgroup = false: supervise always signals the whole process group",
                 "numprocs_start = 1", "priority = 200", "startsecs = 10", "startretries = 5",
                 "exitcodes = 0,2", "umask = 022", "redirect_stderr, stdout_logfile",
                 "[group:app] programs = web,worker", "[eventlistener:memmon]", "[unix_http_server]"):
        assert note in text, note


def test_supervisord_expressions_in_a_literal_shape():
    text = supervisord_to_toml("[program:a]\ncommand=run ${NOT_OURS} $$ %(ENV_HOME)s/x\n")
    doc = tomlkit.parse(text)
    assert doc["services"]["a"]["command"] == ["run", "$${NOT_OURS}", "$$$", "${HOME}/x"]


@pytest.mark.parametrize("text, expected", [
    ('KEY="val",KEY2=val2', {"KEY": "val", "KEY2": "val2"}),
    ("A='x, y', B = z ", {"A": "x, y", "B": "z"}),
    ('URL="postgres://u:p@h/db?a=b"', {"URL": "postgres://u:p@h/db?a=b"}),
    ("", {}),
])
def test_supervisord_environment_pairs(text, expected):
    assert key_value_pairs(text) == expected


@pytest.mark.parametrize("text, message", [
    ("[supervisord]\nlogfile=x\n", "no \\[program:NAME\\] sections"),
    ("command=x\n", "File contains no section headers"),
    ("[program:a]\nautostart=false\n", "has no command"),
    ('[program:a]\ncommand=a "unclosed\n', "No closing quotation"),
    ("[program:a]\ncommand=a\nenvironment=JUSTAWORD\n", "is not KEY=value"),
])
def test_supervisord_input_that_cannot_be_converted(text, message):
    with pytest.raises(ImportFailed, match=message):
        supervisord_to_toml(text)


@pytest.mark.parametrize("name, text, expected", [
    ("Procfile", "web: x\n", "procfile"),
    ("Procfile.dev", "web: x\n", "procfile"),
    ("supervisord.conf", "[program:a]\n", "supervisord"),
    ("app.ini", "", "supervisord"),
    ("processes", "[program:a]\ncommand=x\n", "supervisord"),
    ("processes", "# p\nweb: x\nworker: y\n", "procfile"),
    ("notes.txt", "hello world\n", None),
])
def test_guess_format(name, text, expected):
    assert guess_format(name, text) == expected
