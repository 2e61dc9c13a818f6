"""Issue 12 ("every change lands safely"): each kind of fault, from the issue's own input.

Real processes, real files; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil

from supervisor import health

from harness import PY, Stack, run


def _zombie_children() -> list[int]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def _running(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in (process.info["cmdline"] or []) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


# -- item 6: exec checks leak ------------------------------------------------------------------

def test_exec_check_timeout_kills_and_reaps_its_whole_group(tmp_path: Path):
    """``live = { exec = ["sh","-c","sleep 3; true"], interval = "500ms", timeout = "300ms" }``:
    each timed-out check ends with its shell and its ``sleep``; no zombie stays with the
    supervisor, and after the stop nothing of any check runs (under init or anywhere)."""
    marker = "3.0612"  # a sleep length no other process on the machine uses
    tally = tmp_path / "tally"

    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(f'''
[services.app]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
live = {{ exec = ["sh", "-c", "echo x >> {tally}; sleep {marker}; true"], interval = "500ms", timeout = "300ms", retries = 1000 }}
''')
            await stack.until(lambda: tally.exists() and len(tally.read_text().split()) >= 5, timeout=15,
                              message="five liveness checks")
            # at most the check in flight now is alive; the timed-out ones are gone and reaped
            await stack.until(lambda: len(_running(marker)) <= 1, timeout=2, message="old checks' sleeps gone")
            assert len(_running(marker)) <= 1
            await stack.until(lambda: not _zombie_children(), timeout=2, message="no zombie children")
        await Stack.until(lambda: not _running(marker), timeout=3, message="no check left after the stop")
        await Stack.until(lambda: not _zombie_children(), timeout=3, message="no zombie after the stop")

    run(scenario())


def test_exec_check_cancelled_mid_run_leaves_nothing(tmp_path: Path):
    """A check cancelled while it runs (the replica stops) kills its group, also a child that
    left it with setsid, and reaps them."""
    marker = "7.0613"

    async def scenario() -> None:
        check = {"kind": "exec", "exec": ["sh", "-c", f"setsid sleep {marker} & sleep {marker}"], "timeout": 30}
        task = asyncio.ensure_future(health.probe(check, dict(os.environ)))
        await Stack.until(lambda: len(_running(marker)) == 2, timeout=5, message="the check's sleeps")
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await Stack.until(lambda: not _running(marker), timeout=3, message="the check's processes gone")

    run(scenario())


def test_exec_check_results_and_background_leftovers(tmp_path: Path):
    """Exit 0 passes, non-zero fails; a background child the check leaves is ended with it."""
    marker = "9.0614"

    async def scenario() -> None:
        env = dict(os.environ)
        assert await health.probe({"kind": "exec", "exec": ["true"], "timeout": 5}, env)
        assert not await health.probe({"kind": "exec", "exec": ["false"], "timeout": 5}, env)
        assert await health.probe({"kind": "exec", "exec": ["sh", "-c", f"sleep {marker} & true"],
                                   "timeout": 5}, env)
        await Stack.until(lambda: not _running(marker), timeout=3, message="the leftover sleep gone")

    run(scenario())
