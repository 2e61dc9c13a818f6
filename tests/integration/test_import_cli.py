"""``supervise import`` as a user runs it, and an imported Procfile actually running."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

from conftest import write
from harness import Stack, run

PY = sys.executable


def supervise(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imported_procfile_passes_check_and_serves_on_the_port_from_dotenv(tmp_path):
    port = free_port()
    write(tmp_path / "public" / "index.html", "imported\n")
    write(tmp_path / "Procfile", f"# the app\nweb: {PY} -m http.server --bind 127.0.0.1 --directory public $PORT\n")
    write(tmp_path / ".env", f"PORT={port}\n")  # found beside the Procfile, as foreman does
    result = supervise("import", "Procfile", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'env_file = ".env"' in result.stdout
    path = write(tmp_path / "services.toml", result.stdout)
    assert supervise("check", "--config", str(path)).returncode == 0

    async def scenario():
        async with Stack(tmp_path) as stack:
            text = result.stdout.replace("[services.web]", f'[services.web]\nready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}')
            await stack.apply(text)
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
    assert result.returncode == 2 and "File contains no section headers" in result.stderr
