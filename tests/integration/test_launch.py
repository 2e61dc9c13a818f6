"""procs.launch runs fork+exec in a thread (the local executor's starts): the reaper must not
take the exit status of a child that exits before it is tracked (issue 17, cold start)."""

from __future__ import annotations

import asyncio
import os

from supervisor.desired.model import Exit
from supervisor.execute import procs
from conftest import wait_until


def _exited_unreaped(pid: int) -> bool:
    """Our child ``pid`` has exited and is still waitable (a zombie nobody reaped)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        raise AssertionError(f"child {pid} was reaped by someone else") from None


def test_a_child_that_exits_before_it_is_tracked_keeps_its_exit_status():
    """A reaper that is a subreaper takes an unknown exited child for a stray orphan and reaps
    it; while a launch is under way (Reaper.launching) it must wait, since that child may be the
    launch's own process, whose exit status would otherwise be lost (a replica that never
    exits for us). Real processes; the reaper watches by pidfd (no SIGCHLD handler in a test)
    and is told it is a subreaper, so the stray path is the one a daemon takes."""
    async def main() -> Exit:
        reaper = procs.Reaper(asyncio.get_running_loop(), use_signals=False)
        reaper.subreaper = True
        read, write = os.pipe()
        try:
            with reaper.launching():
                launched = await asyncio.to_thread(procs.launch, ["sh", "-c", "exit 7"], env=dict(os.environ),
                                                   cwd="/", output=write)
                wait_until(lambda: _exited_unreaped(launched.pid), timeout=10, message="the child's exit")
                reaper.reap()  # what a SIGCHLD would run now: the child is not tracked yet
                assert _exited_unreaped(launched.pid)
                handle = procs.track(reaper, launched)
            return await asyncio.wait_for(handle.exited, 10)
        finally:
            os.close(read)
            os.close(write)

    assert asyncio.run(main()) == Exit(code=7)


def test_launch_outside_launching_is_reaped_at_once_when_tracked():
    """The plain path (procs.spawn = launch + track on the loop) still reports the exit."""
    async def main() -> Exit:
        reaper = procs.Reaper(asyncio.get_running_loop(), use_signals=False)
        read, write = os.pipe()
        try:
            handle = procs.spawn(reaper, ["sh", "-c", "exit 5"], env=dict(os.environ), cwd="/", output=write)
            return await asyncio.wait_for(handle.exited, 10)
        finally:
            os.close(read)
            os.close(write)

    assert asyncio.run(main()) == Exit(code=5)
