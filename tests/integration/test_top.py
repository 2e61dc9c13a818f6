"""``supervise top``: driven through Textual's pilot and through a real terminal (tmux), against
a real running supervisor and real processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import terminate, wait_until, write

PY = sys.executable
SLEEP = f'["{PY}", "-c", "import time; print(\\"hello from sleeper\\", flush=True); time.sleep(300)"]'
CONFIG = f"""
[services.db]
command = {SLEEP}

[services.web]
command = {SLEEP}
replicas = 2
depends_on = ["db"]
"""


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True,
                          text=True, timeout=60)


def rows(path: Path) -> dict[tuple[str, int | None], dict]:
    result = cli(path, "status", "--json")
    try:
        reply = json.loads(result.stdout)
    except ValueError:
        return {}
    return {(r["service"], r["replica"]): r for r in reply.get("services", [])}


def start_supervisor(tmp_path: Path, path: Path) -> subprocess.Popen:
    out = open(tmp_path / "daemon.out", "a")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


@pytest.fixture
def running(tmp_path):
    path = write(tmp_path / "services.toml", CONFIG)
    proc = start_supervisor(tmp_path, path)
    wait_until(lambda: cli(path, "status").returncode == 0, timeout=30, message="every service running")
    state = {"proc": proc}
    yield path, state
    terminate(state["proc"], timeout=30)


def waiter(pilot, default_timeout: float):
    """``await until(predicate, timeout=, message=)``: the pilot's bounded wait for the view,
    pausing the app 50 ms between looks (Textual's own clock, not a bare sleep)."""
    async def until(predicate, timeout: float = default_timeout, message: str = "condition"):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {message}"
            await pilot.pause(0.05)
    return until


def test_pilot_shows_replicas_usage_order_and_log_and_keys_drive_the_supervisor(running, tmp_path):
    path, state = running
    from supervisor.top import make_app

    async def scenario() -> None:
        app = make_app(path, interval=0.2)
        async with app.run_test(size=(150, 40)) as pilot:
            until = waiter(pilot, 20.0)

            def table_rows() -> list[tuple[str, str, str]]:
                table = app.query_one("#services")
                return [tuple(str(c) for c in table.get_row_at(i)[:3]) for i in range(table.row_count)]

            await until(lambda: len(app.snapshot.rows) == 3 and all(r.get("rss") for r in app.snapshot.rows),
                        message="three replicas with their memory")
            assert [r[:2] for r in table_rows()] == [("db", "0"), ("web", "0"), ("web", "1")]
            assert all(r["cpu"] is not None for r in app.snapshot.rows)
            assert str(app.query_one("#order").render()) == "order: db -> web"
            await until(lambda: "hello from sleeper" in "\n".join(app.query_one("#log").lines), message="db's log")
            await until(lambda: "no supervisor" not in str(app.query_one("#banner").render()),
                        message="the banner to clear")

            # the second row is web: stop it with x, start it with s, restart it with r
            await pilot.press("down", "x")
            await until(lambda: rows(path)[("web", 0)]["held"], message="web held stopped")
            assert rows(path)[("db", 0)]["phase"] == "running"  # the key acted on the selected row
            await until(lambda: "stop web: done" in str(app.query_one("#banner").render()), message="the stop's answer")
            await pilot.press("s")
            await until(lambda: rows(path)[("web", 1)]["phase"] == "running" and not rows(path)[("web", 1)]["held"],
                        message="web started again")
            before = rows(path)[("web", 0)]["pid"]
            await pilot.press("r")
            await until(lambda: rows(path)[("web", 0)]["pid"] not in (None, before), message="web restarted")
            await pilot.press("f")
            await until(lambda: "paused" in str(app.query_one("#loghead").render()), message="log paused")
            await pilot.press("f")
            await until(lambda: "following" in str(app.query_one("#loghead").render()), message="log following")

            # the supervisor goes away (SIGQUIT: the services keep running) and comes back
            state["proc"].send_signal(signal.SIGQUIT)
            assert state["proc"].wait(timeout=30) == 0
            await until(lambda: "no supervisor" in str(app.query_one("#banner").render()), message="no supervisor")
            state["proc"] = start_supervisor(tmp_path, path)
            await until(lambda: len(app.snapshot.rows) == 3 and not app.snapshot.error, message="the new supervisor")
            await until(lambda: "no supervisor" not in str(app.query_one("#banner").render()),
                        message="the banner to clear")
            await pilot.press("q")

    asyncio.run(scenario())


def test_pilot_shows_build_progress_from_the_log(tmp_path):
    """status says only "building": top adds the time since the build began and its last line."""
    write(tmp_path / "src" / "main.txt", "x")
    path = write(tmp_path / "services.toml", f"""
[services.app]
source = "./src"
build = ["sh", "-c", "echo compiling step 1; while [ ! -e {tmp_path}/go ]; do sleep 0.05; done; echo done"]
command = {SLEEP}
""")
    proc = start_supervisor(tmp_path, path)
    from supervisor.top import make_app

    async def scenario() -> None:
        app = make_app(path, interval=0.2)
        async with app.run_test(size=(150, 40)) as pilot:
            until = waiter(pilot, 30.0)

            def message() -> str:
                rows = app.snapshot.rows
                return rows[0].get("message") or "" if rows else ""

            await until(lambda: "compiling step 1" in message(), message="the build's last line")
            assert message().startswith("building ") and app.snapshot.rows[0]["phase"] == "building"
            (tmp_path / "go").touch()
            await until(lambda: app.snapshot.rows and app.snapshot.rows[0]["phase"] == "running", message="running")
            await pilot.press("q")

    try:
        asyncio.run(scenario())
    finally:
        terminate(proc, timeout=30)


def tmux_ready() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing; .ci/run installs it")
        pytest.skip("tmux is not installed here (CI installs it)")
    return tmux


def test_top_in_a_real_terminal(running, tmp_path):
    """tmux gives top a real pseudo-terminal: what a person sees is what capture-pane returns."""
    path, _state = running
    tmux = tmux_ready()
    socket = f"supervise-test-{uuid.uuid4().hex[:8]}"
    command = f"{PY} -m supervisor top --config {path}"

    def screen() -> str:
        return subprocess.run([tmux, "-L", socket, "capture-pane", "-p"], capture_output=True, text=True).stdout

    try:
        subprocess.run([tmux, "-L", socket, "-f", "/dev/null", "new-session", "-d", "-x", "140", "-y", "30", command],
                       check=True, env={**os.environ, "TERM": "xterm-256color"})
        wait_until(lambda: "web" in screen() and "order: db -> web" in screen(), timeout=30, message="top's screen")
        text = screen()
        assert "SERVICE" in text and "CPU" in text and "MEM" in text
        assert "hello from sleeper" in text  # the first row's (db's) log tail
        (tmp_path / "top-screen.txt").write_text(text)
        subprocess.run([tmux, "-L", socket, "send-keys", "x"], check=True)
        wait_until(lambda: rows(path)[("db", 0)]["held"], timeout=30, message="db stopped by the x key")
        wait_until(lambda: "stopped (held)" in screen(), message="top showing it")
        subprocess.run([tmux, "-L", socket, "send-keys", "s"], check=True)
        wait_until(lambda: rows(path)[("db", 0)]["phase"] == "running", timeout=30, message="db started by s")
        subprocess.run([tmux, "-L", socket, "send-keys", "q"], check=True)
        wait_until(lambda: subprocess.run([tmux, "-L", socket, "has-session"], capture_output=True).returncode != 0,
                   timeout=15, message="top to quit on q")

        # `status --watch NAME` is the same view, of the named services only
        subprocess.run([tmux, "-L", socket, "-f", "/dev/null", "new-session", "-d", "-x", "140", "-y", "30",
                        f"{PY} -m supervisor status --watch web --config {path}"], check=True)
        wait_until(lambda: " web " in screen() and "3 running" not in screen() and "2 running" in screen(),
                   timeout=30, message="the watch view of web alone")
        assert "\n db " not in screen()
        subprocess.run([tmux, "-L", socket, "send-keys", "q"], check=True)
        wait_until(lambda: subprocess.run([tmux, "-L", socket, "has-session"], capture_output=True).returncode != 0,
                   timeout=15, message="the watch view to quit on q")
    finally:
        subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True)
