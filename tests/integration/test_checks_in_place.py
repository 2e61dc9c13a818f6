"""A check changed in the file applies in place to the replicas that run: a replica not ready
yet is probed with the new check from then on (it becomes ready, and its dependents start), and
a liveness check likewise. Real processes (an HTTP server that logs every request), real saves
through the reconciler."""

from __future__ import annotations

from harness import PY, Stack, run

from conftest import free_port
from supervisor.desired.model import Phase

SERVER = ("import http.server,sys\\n"
          "class H(http.server.BaseHTTPRequestHandler):\\n"
          "    def do_GET(self):\\n"
          "        print('GET', self.path, flush=True)\\n"
          "        self.send_response(200 if self.path == '/health' else 404); self.end_headers()\\n"
          "    def log_message(self, *a): pass\\n"
          "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()")


def config(port: int, path: str, live: str = "") -> str:
    return f"""
[services.srv]
command = ["{PY}", "-c", "{SERVER}", "{port}"]
ready = {{ http = "http://127.0.0.1:{port}{path}", interval = "50ms", timeout = "1s" }}
{live}
[services.dependent]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
depends_on = {{ srv = "ready" }}
"""


def test_changing_the_ready_check_of_a_replica_not_ready_yet_probes_with_the_new_one(tmp_path):
    port = free_port()

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(config(port, "/nonexistent-path"))
            await stack.until(lambda: stack.log("srv").count("GET /nonexistent-path") >= 2,
                              message="the wrong path probed")
            assert stack.phase("srv") is Phase.RUNNING and stack.phase("dependent") is Phase.PENDING
            pid = stack.pid("srv")
            plan = await stack.apply(config(port, "/health"))
            assert [str(a) for a in plan] == ["update srv: ready applied in place"]
            await stack.until(lambda: stack.phase("srv") is Phase.READY, message="ready with the new check")
            await stack.until(lambda: stack.pid("dependent"), message="the dependent started")
            assert stack.pid("srv") == pid  # in place: the same process
            # a liveness check added in place runs too: a failing one restarts the replica
            live = f'live = {{ http = "http://127.0.0.1:{port}/gone", interval = "50ms", retries = 2 }}'
            await stack.apply(config(port, "/health", live))
            await stack.until(lambda: stack.pid("srv") not in (None, pid), message="restarted by liveness")

    run(body())
