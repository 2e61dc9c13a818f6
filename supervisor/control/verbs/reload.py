"""``supervise reload``: re-read the config file and apply it now (the same path as a save and
SIGHUP: :meth:`supervisor.daemon.Daemon.reload`); prints the plan applied. An invalid file is
``config-invalid`` (exit 2) and changes nothing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ...decide.errors import EXIT_OK, Code
from .base import Command, Parents

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Reload(Command):
    """Client: the actions applied, or "nothing to do". Server: ``Daemon.reload``."""

    name = "reload"
    help = "re-read the config file and apply it now"
    timeout = None

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        return sub.add_parser(self.name, parents=[parents.common], help=self.help)

    def show(self, reply: dict[str, Any], args: argparse.Namespace) -> int:
        for line in reply["actions"] or ["nothing to do"]:
            print(line)
        return EXIT_OK

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        the_plan, error = await daemon.reload("reload verb")
        if the_plan is None:
            return {"ok": False, "error": error, "code": Code.CONFIG_INVALID}
        return {"actions": the_plan.lines()}
