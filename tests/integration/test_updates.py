"""Safe updates: start-first replacement, and automatic rollback of a bad new version."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from harness import PY, Stack, run

SLEEP = f'"{PY}", "-c", "import time; time.sleep(300)"'
CRASH = f'"{PY}", "-c", "import sys; sys.exit(1)"'


def service(command: str, extra: str = "") -> str:
    return f"""
[services.app]
command = [{command}]
backoff = {{ initial = "20ms", max = "100ms" }}
{extra}
"""


READY = 'ready = { exec = ["true"], interval = "50ms" }'


def test_crash_looping_new_version_is_rolled_back_to_the_last_good(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, READY))
            # proven good: ready (without a check: up for PROBATION seconds)
            old = await stack.until(lambda: stack.replica("app") and stack.replica("app").ready and stack.pid("app"))
            await stack.apply(service(CRASH, READY))
            rolled = await stack.until(lambda: stack.of_type("rolled-back", "app"), message="a rollback")
            assert "crashed 3 times" in rolled[0].data["reason"]
            back = await stack.until(lambda: stack.pid("app") not in (None, old) and stack.pid("app"))
            replica = stack.replica("app")
            assert "time.sleep(300)" in " ".join(replica.launch.spec.command)
            assert psutil.Process(back).is_running()
            assert "rolled back to the previous config" in stack.r.controllers["app"].deploy_message
            # the bad config is not retried on every wake-up; the next change is
            assert list(await stack.apply(service(CRASH, READY))) == []
            plan = await stack.apply(service(SLEEP, READY + '\nenv = { V = "2" }'))
            assert [a.kind.value for a in plan] == ["restart"]

    run(body())


def test_new_version_that_never_becomes_ready_is_rolled_back(tmp_path):
    ready = 'ready = { exec = ["test", "-e", "ready-flag"], interval = "50ms", timeout = "50ms", retries = 1 }'

    async def body():
        (tmp_path / "ready-flag").write_text("")
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, ready))
            await stack.until(lambda: stack.replica("app") and stack.replica("app").ready)
            (tmp_path / "ready-flag").unlink()
            await stack.apply(service(SLEEP, ready + '\nenv = { V = "new" }'))
            rolled = await stack.until(lambda: stack.of_type("rolled-back", "app"), timeout=15)
            assert "never became ready" in rolled[0].data["reason"]
            await stack.until(lambda: stack.pid("app") and stack.replica("app").launch.spec.environment.get("V") is None)

    run(body())


def test_start_first_starts_the_new_one_before_stopping_the_old(tmp_path):
    extra = 'update = "start-first"\nready = { exec = ["true"], interval = "50ms" }'

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, extra))
            old = await stack.until(lambda: stack.replica("app") and stack.replica("app").ready and stack.pid("app"))
            await stack.apply(service(SLEEP, extra + '\nenv = { V = "2" }'))
            new = await stack.until(lambda: stack.pid("app") not in (None, old) and stack.pid("app"))
            ready_new = next(e for e in stack.of_type("ready", "app") if e.data["pid"] == new)
            stopping_old = next(e for e in stack.of_type("stopping", "app") if e.data["pid"] == old)
            assert ready_new.timestamp <= stopping_old.timestamp
            assert stack.replica("app").launch.spec.environment["V"] == "2"

    run(body())


def test_start_first_keeps_the_old_one_when_the_new_one_dies(tmp_path):
    extra = 'update = "start-first"'

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, extra))
            old = await stack.until(lambda: stack.pid("app"))
            await stack.apply(service(CRASH, extra))
            rolled = await stack.until(lambda: stack.of_type("rolled-back", "app"))
            assert "exited during start-up" in rolled[0].data["reason"]
            assert stack.pid("app") == old
            assert len(stack.of_type("stopping", "app")) == 0 or all(
                e.data["pid"] != old for e in stack.of_type("stopping", "app"))

    run(body())


def test_live_check_restarts_a_replica_that_stops_answering(tmp_path):
    live = 'live = { exec = ["test", "-e", "alive"], interval = "50ms", timeout = "200ms", retries = 2 }'

    async def body():
        (tmp_path / "alive").write_text("")
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, live))
            first = await stack.until(lambda: stack.pid("app"))
            await asyncio.sleep(0.3)  # answering: left alone
            assert stack.pid("app") == first
            (tmp_path / "alive").unlink()
            await stack.until(lambda: stack.of_type("restarting", "app"), message="the liveness restart")
            assert "liveness check failed 2 times" in stack.of_type("restarting", "app")[0].data["reason"]
            (tmp_path / "alive").write_text("")
            await stack.until(lambda: stack.pid("app") not in (None, first))

    run(body())


def test_no_rollback_to_a_version_that_never_proved_itself(tmp_path):
    flaky = f'"{PY}", "-c", "import sys,time; time.sleep(0.3); sys.exit(1)"'

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(flaky))
            await stack.until(lambda: stack.pid("app"))
            await stack.apply(service(CRASH))  # crashing too, and the old one was never proven
            await stack.until(lambda: len(stack.of_type("exited", "app")) >= 4, message="crashes of the new one")
            assert not stack.of_type("rolled-back", "app")
            assert "sys.exit(1)" in " ".join(stack.replica("app").launch.spec.command)

    run(body())


# -- start-first: a ready check must be answered by the new replica, not the old (issue 12.1) ---

APP = '''
import http.server, os, socket, sys, time
PORT = int(os.environ["PORT"])
BODY = "v1"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{BODY} pid {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.HTTPServer):
    def server_bind(self):
        if os.environ.get("REUSEPORT"):  # a service written to listen beside its old version
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


Server(("127.0.0.1", PORT), Handler).serve_forever()
'''


def site(tmp_path, kind: str, port: int, reuseport: bool = False):
    """The issue's input: a local folder with an http.server app, built, watched, start-first,
    with a ready check on its fixed port (``kind``: "http" or "tcp")."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(APP)
    target = f"http://127.0.0.1:{port}/" if kind == "http" else f"127.0.0.1:{port}"
    env = f'PORT = "{port}"' + (', REUSEPORT = "1"' if reuseport else "")
    path = tmp_path / "services.toml"
    path.write_text(f"""
[services.site]
source = "./app"
build = ["{PY}", "-m", "py_compile", "app.py"]
command = ["{PY}", "app.py"]
env = {{ {env} }}
watch = ["*.py"]
update = "start-first"
stop_timeout = "3s"
ready = {{ {kind} = "{target}", interval = "200ms" }}
""")
    return app, path


@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_start_first_is_not_fooled_by_the_old_replica_answering_the_new_ones_check(tmp_path, kind):
    """The new version runs for a moment, then raises at start: its check on the shared port is
    answered by the old replica meanwhile. It is never ready, it is not promoted, the old one
    keeps serving, and the rollback event says why (the port's listener is the old pid).
    Wanted: "exited during start-up (exit 1; port P is answered by pid OLD (another replica
    of the service), not by pid NEW or its children)"."""
    from conftest import free_port, http_get
    from harness import DaemonRun

    port = free_port()
    app, path = site(tmp_path, kind, port)

    async def body():
        async with DaemonRun(path) as d:
            old = await d.until(lambda: d.pid("site") if d.of_type("ready", "site") else None, timeout=20,
                                message="the first version ready")
            assert (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/") or "").endswith(f"pid {old}")
            (app / "app.py").write_text("import time\ntime.sleep(0.6)\nraise RuntimeError('broken at start')\n" + APP)
            rolled = await d.until(lambda: d.of_type("rolled-back", "site"), timeout=20, message="the abandon")
            new = [e.data["pid"] for e in d.of_type("started", "site") if e.data["pid"] != old]
            assert len(new) == 1, new
            reason = rolled[0].data["reason"]
            assert "exited during start-up" in reason and f"answered by pid {old} (another replica" in reason, reason
            assert not [e for e in d.of_type("ready", "site") if e.data["pid"] == new[0]]
            assert not [e for e in d.of_type("stopping", "site") if e.data["pid"] == old]
            assert d.pid("site") == old and psutil.pid_exists(old)
            assert (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/") or "").endswith(f"pid {old}")

    run(body())


def test_start_first_promotes_a_new_version_that_listens_beside_the_old_one(tmp_path):
    """The ownership rule does not stop a service that can share its port (SO_REUSEPORT):
    the new one listens too, is ready, and replaces the old."""
    from conftest import free_port, http_get
    from harness import DaemonRun

    port = free_port()
    app, path = site(tmp_path, "http", port, reuseport=True)

    async def body():
        async with DaemonRun(path) as d:
            old = await d.until(lambda: d.pid("site") if d.of_type("ready", "site") else None, timeout=20,
                                message="the first version ready")
            (app / "app.py").write_text(APP.replace('BODY = "v1"', 'BODY = "v2"'))
            new = await d.until(lambda: d.pid("site") not in (None, old) and d.pid("site"), timeout=20,
                                message="the new version promoted")
            assert [e for e in d.of_type("ready", "site") if e.data["pid"] == new]
            await d.until(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE,
                          message="the old one stopped")
            assert (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/") or "") == f"v2 pid {new}"
            assert not d.of_type("rolled-back", "site")

    run(body())


def test_a_port_held_outside_the_service_is_trusted_as_before(tmp_path):
    """A listener that is no replica's (a container engine's port proxy for a local
    ``docker run -p``, here a plain process of the test) cannot be told apart: the check is
    trusted, and a start-first update goes through."""
    import subprocess
    import sys

    from conftest import free_port

    port = free_port()
    listener = subprocess.Popen([sys.executable, "-c", f"import socket,time; s=socket.socket(); "
                                 f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(300)"])
    extra = f'update = "start-first"\nready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}'

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service(SLEEP, extra))
            old = await stack.until(lambda: stack.replica("app") and stack.replica("app").ready and stack.pid("app"))
            await stack.apply(service(SLEEP, extra + '\nenv = { V = "2" }'))
            await stack.until(lambda: stack.pid("app") not in (None, old), message="the new one promoted")
            assert not stack.of_type("rolled-back", "app")

    try:
        run(body())
    finally:
        listener.kill()
        listener.wait()
