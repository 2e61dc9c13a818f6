"""``supervise import`` as a user runs it, and an imported Procfile actually running."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import write
from harness import Stack, run

PY = sys.executable


def supervise(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def imported(tmp_path: Path, source: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``supervise import SOURCE``: it exits 0 and what it prints, saved as
    ``tmp_path/services.toml``, passes ``supervise check``."""
    result = supervise("import", source, cwd=cwd)
    assert result.returncode == 0, result.stderr
    path = write(tmp_path / "services.toml", result.stdout)
    assert supervise("check", "--config", str(path)).returncode == 0
    return result


def ready_on(text: str, port: int) -> str:
    """The imported file with a tcp readiness check on ``port`` for its web service."""
    return text.replace("[services.web]", f'[services.web]\nready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imported_procfile_passes_check_and_serves_on_the_port_from_dotenv(tmp_path):
    port = free_port()
    write(tmp_path / "public" / "index.html", "imported\n")
    write(tmp_path / "Procfile", f"# the app\nweb: {PY} -m http.server --bind 127.0.0.1 --directory public $PORT\n")
    write(tmp_path / ".env", f"PORT={port}\n")  # found beside the Procfile, as foreman does
    result = imported(tmp_path, "Procfile", cwd=tmp_path)
    assert 'env_file = ".env"' in result.stdout

    async def scenario():
        async with Stack(tmp_path) as stack:
            await stack.apply(ready_on(result.stdout, port))
            await stack.until(lambda: stack.r.controllers["web"].phase.value == "ready", timeout=10,
                              message="the imported web service to answer")
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5).read()
            assert body == b"imported\n"

    run(scenario())


def test_import_supervisord_conf_with_include(tmp_path):
    write(tmp_path / "conf.d" / "a.conf", "[program:a]\ncommand=/bin/sleep 60\nautorestart=false\n")
    conf = write(tmp_path / "supervisord.conf", "[supervisord]\n[include]\nfiles = conf.d/*.conf\n")
    result = supervise("import", str(conf))
    assert result.returncode == 0, result.stderr
    assert '[services.a]\ncommand = ["/bin/sleep", "60"]\nrestart = "never"' in result.stdout


def test_import_errors_exit_2_with_one_line(tmp_path):
    notes = write(tmp_path / "notes.txt", "hello\n")
    result = supervise("import", str(notes))
    assert result.returncode == 2 and "--from" in result.stderr
    result = supervise("import", str(tmp_path / "missing"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = supervise("import", "--from", "supervisord", str(notes))
    assert result.returncode == 2 and f"{notes}:1: a line before any [section] 'hello'" in result.stderr


def test_import_refuses_what_the_source_tool_refuses_with_exit_2_and_a_line(tmp_path):
    """A conflicted Procfile, a duplicate name, and a supervisord.conf supervisord would not start."""
    write(tmp_path / "Procfile", "web: a\n<<<<<<< HEAD\nworker: b\n=======\nworker: c\n>>>>>>> topic\n")
    result = supervise("import", "Procfile", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "supervise: Procfile:2: merge-conflict marker '<<<<<<< HEAD': resolve the conflict first\n"
    write(tmp_path / "Procfile", "web: a\nweb: b\n")
    result = supervise("import", "Procfile", cwd=tmp_path)
    assert result.returncode == 2 and "Procfile:2: process name 'web' is also on line 1" in result.stderr
    conf = write(tmp_path / "supervisord.conf", "[supervisord]\n[program:w]\ncommand=w\nnumprocs=2\n")
    result = supervise("import", str(conf))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{conf}:4: [program:w] numprocs: numprocs = 2 needs %(process_num) in process_name" in result.stderr


def test_import_warns_on_stderr_and_its_output_passes_check(tmp_path):
    conf = write(tmp_path / "supervisord.conf", "[supervisord]\nlogfile=/tmp/x.log\n[program:a]\n"
                 "command=/bin/sleep 60\n[include]\nfiles=conf.d/*.conf\n")
    result = imported(tmp_path, str(conf))
    assert result.stderr.splitlines() == [
        f"supervise: warning: {conf}:2: [supervisord] logfile: logfile = /tmp/x.log: supervise logs to stderr; "
        "services log to STATE_DIR/logs",
        f'supervise: warning: {conf}:6: [include] files: no file matches "{tmp_path}/conf.d/*.conf" '
        "(supervisord logs the same warning and goes on)"]
    assert f"# NOT CARRIED OVER: {conf}:2: [supervisord] logfile" in result.stdout


def test_bom_and_crlf_procfile_with_release_runs_release_first(tmp_path):
    """The release one-shot completes before web starts (depends_on completed), as on Heroku."""
    port = free_port()
    (tmp_path / "Procfile").write_bytes(
        b"\xef\xbb\xbfweb: " + PY.encode() + b" -m http.server --bind 127.0.0.1 $PORT\r\n"
        b"release: " + PY.encode() + b" -c \"open('migrated', 'w').write('yes')\"\r\n")
    write(tmp_path / ".env", f"PORT={port}\n")
    result = imported(tmp_path, "Procfile", cwd=tmp_path)
    assert result.stderr == ""

    async def scenario():
        async with Stack(tmp_path) as stack:
            await stack.apply(ready_on(result.stdout, port))
            await stack.until(lambda: stack.r.controllers["web"].phase.value == "ready", timeout=10,
                              message="web to answer after release completed")
            assert (tmp_path / "migrated").read_text() == "yes"

    run(scenario())
