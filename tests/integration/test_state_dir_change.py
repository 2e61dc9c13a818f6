"""A save that changes ``[supervise] state_dir`` under a running supervisor: refused in one line
(state_dir changes need a restart), everything keeps running on the old state dir, clients that
read the new state_dir still reach the running supervisor, and a second ``supervise`` on the
same file is refused instead of starting every service a second time. Real daemon
(in-process), real saves, real sockets, a real second supervisor process."""

from __future__ import annotations

import asyncio
import subprocess

from conftest import terminate
from harness import PY, DaemonRun, run

from supervisor.control import socket_path
from supervisor.control.client import Client

SLEEP = f'["{PY}", "-c", "import time; time.sleep(300)"]'
GOOD = f"""
[services.api]
command = {SLEEP}
stop_timeout = "2s"
"""


def status(state_dir) -> dict:
    with Client(state_dir, timeout=10) as client:
        return client.call("status")


def second_supervisor(path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        terminate(proc)  # (started every service a second time: the bug; the leak check sees them)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_state_dir_change_is_refused_and_the_new_folder_answers(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text(GOOD)
    old, new = tmp_path / ".supervise", tmp_path / "moved"

    async def body():
        async with DaemonRun(path) as d:
            pid = await d.until(lambda: d.pid("api"))
            path.write_text(f'[supervise]\nstate_dir = "moved"\n{GOOD}'.replace('"2s"', '"3s"'))
            await d.until(lambda: d.of_type("config-error"), message="the save refused")
            [error] = d.of_type("config-error")[-1].data["errors"]
            assert "state_dir changes need a restart" in error and "\n" not in error
            assert d.daemon.state_dir == old and d.daemon.desired.services["api"].stop_timeout == 2.0
            await d.until(lambda: socket_path(new).exists(), message="the new folder answers")
            reply = await asyncio.to_thread(status, new)  # a client that reads the file finds us
            assert [row["pid"] for row in reply["services"]] == [pid]
            assert "state_dir changes need a restart" in reply["supervisor"]["config_error"]
            second = await asyncio.to_thread(second_supervisor, path)
            assert second.returncode == 1 and "another supervise" in second.stderr, second.stderr
            assert len(second.stderr.strip().splitlines()) == 1, second.stderr
            path.write_text(GOOD.replace('"2s"', '"4s"'))  # state_dir put back: applies, the new folder let go
            await d.until(lambda: d.daemon.desired.services["api"].stop_timeout == 4.0)
            await d.until(lambda: not socket_path(new).exists(), message="the new folder let go")
            assert d.pid("api") == pid
            assert (await asyncio.to_thread(status, old))["services"][0]["pid"] == pid
            (tmp_path / "alias").symlink_to(".supervise")  # another name of the same folder: no change
            errors = len(d.of_type("config-error"))
            path.write_text(f'[supervise]\nstate_dir = "alias"\n{GOOD}'.replace('"2s"', '"5s"'))
            await d.until(lambda: d.daemon.desired.services["api"].stop_timeout == 5.0)
            assert len(d.of_type("config-error")) == errors and d.daemon.desired.settings.state_dir == old

    run(body())
