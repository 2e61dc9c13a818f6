"""``supervise plan [--json]``: what a run would do now, against the running supervisor if one
answers (it plans the file against what it runs), else against nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...decide.errors import EXIT_OK, Code
from ..client import Client, ControlError, NotRunning
from .base import CliError, Command, Parents

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Plan(Command):
    """Client: the plan's lines, or ``{"ok", "against", "actions"}`` with ``--json``
    (``against``: "running" or "nothing"). Server: the plan of ``request["config"]`` (default:
    the supervisor's own file) against what runs; an invalid file is ``config-invalid``."""

    name = "plan"
    help = "print what a run would do now (against the running supervisor, if any)"

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        return sub.add_parser(self.name, parents=[parents.common, parents.as_json], help=self.help)

    def run(self, path: Path, args: argparse.Namespace) -> int:
        from ...decide.plan import plan as make_plan
        from ...desired import config
        from ...desired.model import Observed

        desired = config.load(path)
        against = "running"
        try:
            with Client(desired.settings.state_dir) as client:
                lines = client.call("plan", config=str(path.resolve()))["actions"]
        except NotRunning:
            lines, against = make_plan(desired, Observed.empty()).lines(), "nothing"
        except ControlError as exc:
            raise CliError(str(exc)) from None
        if args.json:  # against: "running" (the live supervisor's state) or "nothing" (none runs)
            print(json.dumps({"ok": True, "against": against, "actions": lines}, indent=2))
            return EXIT_OK
        for line in lines:
            print(line)
        if not lines:
            print("nothing to do")
        return EXIT_OK

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        import asyncio

        from ...desired import config
        from ...desired.config import ConfigError

        try:
            desired = await asyncio.to_thread(config.load, Path(request.get("config") or daemon.path))
        except ConfigError as exc:
            return {"ok": False, "error": str(exc), "code": Code.CONFIG_INVALID}
        return {"actions": daemon.reconciler.plan(desired).lines()}
