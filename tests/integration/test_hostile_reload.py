"""A running supervisor under hostile input (issue 10): bad saves, shared watched folders, slow
reloads, malformed control clients. Real daemon (in-process), real files, real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import PY, DaemonRun, run

from supervisor.desired import config
from supervisor.control import socket_path
from supervisor.control.client import Client, ControlError

SLEEP = f'["{PY}", "-c", "import time; time.sleep(300)"]'
GOOD = f"""
[services.api]
command = {SLEEP}
stop_timeout = "2s"
"""


def ask(state_dir: Path, verb: str, timeout: float = 10.0, **args) -> dict:
    """One control request through the real client (blocking: call it in a thread)."""
    with Client(state_dir, timeout=timeout) as client:
        try:
            return client.call(verb, **args)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}


# -- High 1: a file that makes validation raise never stops anything ------------------------

BAD_SAVES = [
    GOOD + "stop_timeout = " + "9" * 400 + "\n",
    GOOD.replace('stop_timeout = "2s"', "stop_timeout = " + "9" * 400),
    GOOD + 'env_file = "a\\u0000b"\n',
    GOOD + 'source = "a\\u0000b"\n',
    GOOD + 'source = { git = "a\\u0000b" }\n',
    '[supervise]\nstate_dir = "a\\u0000b"\n' + GOOD,
    GOOD + f'source = "{"x" * 300}"\n',
    GOOD + "log = { max_size = inf }\n",
    GOOD + 'ready = { tcp = "h:' + "9" * 5000 + '" }\n',
]


def test_bad_saves_keep_the_last_good_file_in_force(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text(GOOD)

    async def body():
        async with DaemonRun(path) as d:
            pid = await d.until(lambda: d.pid("api"))
            for number, text in enumerate(BAD_SAVES):
                path.write_text(text + f"# save {number}\n")  # a real save: the watcher reloads
                await d.until(lambda: len(d.of_type("config-error")) > number, message=f"save {number} reported")
                errors = d.of_type("config-error")[-1].data["errors"]
                assert all(e.startswith(str(path)) for e in errors), errors
                assert not d.task.done() and d.pid("api") == pid
            reply = await asyncio.to_thread(ask, d.daemon.state_dir, "status")
            assert reply["supervisor"]["config_error"]
            path.write_text(GOOD.replace('"2s"', '"3s"'))  # a good save applies again
            await d.until(lambda: d.daemon.desired.services["api"].stop_timeout == 3.0)
            assert d.pid("api") == pid

    run(body())


# -- High 2: two services watching one folder -----------------------------------------------


def watched(tmp_path: Path, a_globs: str, b_globs: str) -> str:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    return f"""
[services.a]
source = "{src}"
command = {SLEEP}
watch = {a_globs}
stop_timeout = "2s"

[services.b]
source = "{src}"
command = {SLEEP}
watch = {b_globs}
stop_timeout = "2s"
"""


def test_two_services_watching_one_folder_survive_edits_of_both_watch_lists(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text(watched(tmp_path, '["*.a"]', '["*.b"]'))
    src = tmp_path / "src"

    async def edited(d: DaemonRun, name: str, file: str) -> None:
        pid = d.pid(name)
        (src / file).write_text(str(time.time()))
        await d.until(lambda: d.pid(name) not in (None, pid), message=f"{name} restarted for {file}")

    async def body():
        async with DaemonRun(path) as d:
            await d.until(lambda: d.pid("a") and d.pid("b"))
            watcher = d.daemon.source_watcher
            assert watcher.services_on(src.resolve()) == {"a", "b"}
            path.write_text(watched(tmp_path, '["*.a", "*.aa"]', '["*.b", "*.bb"]'))  # both lists
            await d.until(lambda: d.daemon.desired.services["b"].watch == ("*.b", "*.bb"))
            assert not d.task.done()
            assert watcher.services_on(src.resolve()) == {"a", "b"}
            await edited(d, "a", "x.aa")
            await edited(d, "b", "x.bb")
            path.write_text(watched(tmp_path, '["*.a"]', '["*.b", "*.bb"]'))  # one list
            await d.until(lambda: d.daemon.desired.services["a"].watch == ("*.a",))
            assert watcher.services_on(src.resolve()) == {"a", "b"}
            await edited(d, "b", "y.bb")  # b's watch was not dropped with a's
            await edited(d, "a", "y.a")
            path.write_text(watched(tmp_path, '["*.a"]', "[]"))
            await d.until(lambda: d.daemon.desired.services["b"].watch == ())
            assert watcher.services_on(src.resolve()) == {"a"}
            await edited(d, "a", "z.a")

    run(body())


# -- Medium 2: a watched folder without build ----------------------------------------------


def test_a_watched_folder_without_build_deploys_an_edit_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.py").write_text("import time\ntime.sleep(300)\n")
    path = tmp_path / "services.toml"
    path.write_text(f'[services.app]\nsource = "{src}"\ncommand = ["{PY}", "app.py"]\nwatch = ["*.py"]\n'
                    'stop_timeout = "2s"\n')

    async def body():
        async with DaemonRun(path) as d:
            pid = await d.until(lambda: d.pid("app"))
            version = d.controllers["app"].replicas[0].launch.artifact.version
            (src / "app.py").write_text("import time\n# edited\ntime.sleep(300)\n")

            def deployed():
                replica = d.controllers["app"].replicas.get(0)
                if replica and replica.pid not in (None, pid) and replica.launch.artifact.version != version:
                    return replica
                return None

            replica = await d.until(deployed, message="the edit deployed: a new pid and a new version")
            new = replica.pid
            reconciler = d.daemon.reconciler
            assert reconciler.revisions["app"].startswith(replica.launch.artifact.version.split("-")[0])
            for _ in range(3):  # later passes: nothing to do, the pid stays
                assert not (await reconciler.apply(d.daemon.desired))
            assert d.pid("app") == new

    run(body())


# -- Medium 1: a slow reload never holds restarts or the socket ----------------------------


def slow_file(count: int) -> str:
    """A file that takes long to reject: many services, each naming a missing dependency."""
    return "".join(f'[services.service-number-{i:05d}]\ncommand = "sleep 1"\n'
                   f'depends_on = ["missing-service-{i:05d}"]\n' for i in range(count))


def test_a_slow_reload_leaves_restarts_and_status_running(tmp_path, monkeypatch):
    path = tmp_path / "services.toml"
    real_load = config.load
    slow = threading.Event()

    def slow_load(*args, **kwargs):
        """config.load made 1.5 s slower once ``slow`` is set: a fast machine rejects even the
        pathological file below in under 0.5 s (tomli), too fast to show the loop going on."""
        try:
            return real_load(*args, **kwargs)
        finally:
            if slow.is_set():
                threading.Event().wait(1.5)  # the validation thread's own work, not a test wait

    monkeypatch.setattr(config, "load", slow_load)
    good = GOOD + f"""
[services.crash]
command = ["{PY}", "-c", "raise SystemExit(1)"]
backoff = {{ initial = "10ms", max = "20ms" }}
start_limit = {{ burst = 100000, interval = "1s" }}
"""
    path.write_text(good)

    async def body():
        async with DaemonRun(path) as d:
            await d.until(lambda: d.pid("api"))
            crash = d.controllers["crash"]
            await d.until(lambda: crash.replicas and crash.replicas[0].restarts > 2, message="crash loop")
            path.write_text(slow_file(3_000))  # ~270 kB: slow to reject
            slow.set()
            d.daemon.file_watcher.debouncer.cancel()  # this test drives the reload itself
            started = time.monotonic()
            reload = asyncio.create_task(asyncio.to_thread(ask, d.daemon.state_dir, "reload", 60.0))
            restarts = crash.replicas[0].restarts
            answered = []
            while not reload.done():
                asked = time.monotonic()
                reply = await asyncio.to_thread(ask, d.daemon.state_dir, "status")
                answered.append(time.monotonic() - asked)
                assert reply.get("services"), reply
            took = time.monotonic() - started
            result = reload.result()
            assert result["ok"] is False and "unknown dependency" in result["error"]
            assert took > 0.5, f"the reload took {took:.2f}s: too fast to show anything"
            assert len(answered) >= 3 and max(answered) < 1.0, answered
            assert crash.replicas[0].restarts > restarts + 2  # restarts went on meanwhile
            assert d.pid("api")

    run(body())


# -- the control server: malformed clients get an error reply, then a close ----------------


def raw(state_dir: Path, payload: bytes) -> bytes:
    """Send ``payload`` on a raw connection; everything the server answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path(state_dir)))
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_deep_or_huge_request_gets_an_error_reply_and_a_close(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text(GOOD)

    async def body():
        async with DaemonRun(path) as d:
            await d.until(lambda: d.pid("api"))
            state_dir = d.daemon.state_dir
            deep = b"[" * 100_000 + b"]" * 100_000 + b"\n"
            reply = await asyncio.to_thread(raw, state_dir, deep)
            assert json.loads(reply) == {"ok": False, "error": "bad request: JSON nested too deep"}
            huge = b'{"verb": "status", "x": "' + b"x" * (2 << 20) + b'"}\n'
            reply = await asyncio.to_thread(raw, state_dir, huge)
            assert json.loads(reply)["error"].startswith("bad request: longer than")

            def malformed(payload: bytes) -> None:
                with Client(state_dir, timeout=5) as client:  # answered, and the line goes on
                    client.sock.sendall(payload)
                    try:
                        client.receive()
                    except ControlError as exc:
                        assert str(exc).startswith("bad request"), payload
                    else:
                        raise AssertionError(f"{payload!r} accepted")
                    assert client.call("ping")["pid"]

            for payload in (b"[1]\n", b'{"verb": ["status"]}\n', b'"x"\n', b"\xff\xfe\n", b'{"verb": "nope"}\n'):
                await asyncio.to_thread(malformed, payload)
            assert (await asyncio.to_thread(ask, state_dir, "ping"))["pid"]

    run(body())


# -- the CLI against a supervisor that does not answer -------------------------------------


def test_client_timeout_and_full_backlog_are_one_line_errors(tmp_path):
    state_dir = tmp_path / ".supervise"
    state_dir.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path(state_dir)))
    listener.listen(0)  # accepts nothing: a supervisor stuck, its backlog fills
    waiting = []
    try:
        try:
            Client(state_dir, timeout=0.2).call("status")
        except ControlError as exc:
            assert "did not answer within 0.2s" in str(exc)
        else:
            raise AssertionError("no timeout")
        for _ in range(8):  # fill the backlog
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(socket_path(state_dir)))
            except BlockingIOError:
                sock.close()
                break
            waiting.append(sock)
        (tmp_path / "services.toml").write_text(GOOD)
        result = subprocess.run([sys.executable, "-m", "supervisor", "status", "-c", str(tmp_path / "services.toml")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "not accepting connections" in result.stderr
    finally:
        for sock in waiting:
            sock.close()
        listener.close()
