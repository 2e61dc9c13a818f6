"""``supervise upgrade``: upgrade the running supervise itself, now, from ``[supervise] self``
(:mod:`supervisor.selfupdate`): install the newest version beside it, check it, exec it in
place (same pid); prints from which version to which once the new one answers, or why not."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...decide import errors
from ...decide.errors import EXIT_OK
from ...desired.peek import state_dir_of
from ..client import Client, ControlError, NotRunning
from .base import CliError, Command, Parents

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon

#: Seconds the client waits for the new version to answer after the exec (the guard's own
#: deadline, selfupdate.READY_DEADLINE, and some).
ANSWER_WAIT = 90.0


class Upgrade(Command):
    """Client: ask, then follow the same pid across its exec until the outcome of *this*
    upgrade is there (``ping``'s ``upgrade.id``): exit 0 with ``supervise upgraded from X to
    Y, pid P`` or "the newest version"; 1 with the reason when it was not done. Server:
    :meth:`Daemon.upgrade`; when it passed its checks, the reply goes out before the exec."""

    name = "upgrade"
    help = "install the newest supervise from [supervise] self, check it, and exec it in place (same pid)"
    timeout = None  # an install takes as long as pip takes

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        return sub.add_parser(self.name, parents=[parents.common], help=self.help)

    def run(self, path: Path, args: argparse.Namespace) -> int:
        state_dir = state_dir_of(path)
        try:
            with Client(state_dir, timeout=None) as client:
                reply = client.call(self.name)
        except NotRunning as exc:
            raise CliError(str(exc)) from None
        except ControlError as exc:
            raise CliError(f"upgrade: {exc}", errors.exit_code(exc.code)) from None
        if not reply.get("exec"):
            print(reply.get("message", "nothing to do"))
            return EXIT_OK
        pid, ident = reply["pid"], reply["id"]
        deadline = time.monotonic() + ANSWER_WAIT
        while time.monotonic() < deadline:
            try:
                with Client(state_dir, timeout=10) as client:
                    ping = client.call("ping")
            except (NotRunning, ControlError, OSError):  # (the socket is handed over: rare)
                time.sleep(0.05)
                continue
            outcome = ping.get("upgrade") or {}
            if ping.get("pid") != pid:
                raise CliError(f"upgrade: supervise pid {pid} is gone; pid {ping.get('pid')} answers now")
            if outcome.get("id") != ident:  # the old one before its exec, or the new one before its proof
                time.sleep(0.05)
                continue
            if not outcome.get("ok"):
                raise CliError(f"upgrade failed: {outcome.get('error')}")
            print(f"supervise upgraded from {outcome.get('from')} to {outcome.get('to')}, pid {pid}")
            return EXIT_OK
        raise CliError(f"upgrade: supervise pid {pid} did not answer within {ANSWER_WAIT:g}s after its exec")

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        from ..server import send

        reply = await daemon.upgrade("upgrade verb", force=True)
        if reply.get("ok") and reply.get("exec"):
            await send(writer, reply)  # before the exec ends this connection
            daemon.hand_over()
            return None
        return reply
