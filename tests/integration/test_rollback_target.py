"""A rollback goes to the newest version that was serving fine: v2 ready and serving (its ready
deadline, with a 5 s check timeout, is ~20 s away) is replaced by a crashing v3, which rolls
back to v2, not to v1 (the rule of a good version: ready for good_after without a crash). A real
daemon, a real folder source edited between versions, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import free_port, terminate, wait_until, write

PY = sys.executable

APP = """import http.server, sys
MARK = "{mark}"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(MARK.encode())
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"""
BAD = 'raise SystemExit("bad version")\n'


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True, text=True,
                          timeout=60)


def row(path: Path) -> dict:
    out = cli(path, "status", "--json").stdout
    return next((r for r in json.loads(out)["services"] if r["service"] == "site"), {}) if out.strip() else {}


def test_a_rollback_goes_to_the_newest_version_that_served_well(tmp_path):
    port = free_port()
    app = tmp_path / "app"
    write(app / "app.py", APP.format(mark="v1", port=port))
    path = write(tmp_path / "services.toml", f"""
[services.site]
source = "./app"
command = ["{PY}", "app.py"]
backoff = {{ initial = "50ms", max = "100ms" }}
ready = {{ http = "http://127.0.0.1:{port}/", interval = "100ms", timeout = "5s" }}
""")
    out = tmp_path / "daemon.out"
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(out, "a"),
                            stderr=subprocess.STDOUT)
    try:
        v1 = wait_until(lambda: (r := row(path)) and r["phase"] == "ready" and r["good"] and r["version"],
                        timeout=30, message="v1 ready and good")
        write(app / "app.py", APP.format(mark="v2", port=port))
        assert cli(path, "reload").returncode == 0
        v2 = wait_until(lambda: (r := row(path)) and r["phase"] == "ready" and r["version"] != v1 and r["version"],
                        timeout=30, message="v2 ready")
        assert row(path)["rollback_to"] == v1  # on probation: its deadline is ~17 s away
        write(app / "app.py", BAD)
        assert cli(path, "reload").returncode == 0
        back = wait_until(lambda: (r := row(path)) and "rolled back" in (r.get("message") or "") and r,
                          timeout=30, message="the rollback")
        assert f"-> {v2}" in back["message"], back["message"]
        wait_until(lambda: (r := row(path)) and r["phase"] == "ready" and r["version"] == v2, timeout=30,
                   message="v2 serving again")
    finally:
        terminate(proc)
