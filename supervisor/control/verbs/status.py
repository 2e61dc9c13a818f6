"""``supervise status [NAME...] [--json] [--watch]``: the table of replicas; exit 3 when one
asked about is not running. ``--watch`` is the live view of ``supervise top``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...decide.errors import EXIT_NOT_RUNNING, EXIT_OK, Code
from .base import Command, Parents, print_status

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


def as_asked(rows: list[dict[str, Any]]) -> bool:
    """Whether every status row is as the file asks (``status`` exits 0, else 3): running or
    ready; a service scaled to zero with nothing of it running; a replica that exited 0 and
    stays exited (restart "never" or "on-failure": a one-shot such as a Procfile's release
    that completed, what depends_on "completed" waits for). A replica whose state cannot be
    observed (phase ``unknown``: its cluster is out of reach) is not."""
    return all(row["phase"] in ("running", "ready") or (row.get("desired") == 0 and row["replica"] is None)
               or (row["phase"] == "exited" and row.get("last_exit") == "exit 0")
               for row in rows)


class Status(Command):
    """Client: print the rows (or the reply as JSON); exit 0 when every row is up as asked,
    else 3. Server: the status rows of the services asked for (all with none) and the
    supervisor's pid, uptime (seconds), file and the last config error."""

    name = "status"
    help = "table of replicas; exit 3 when one asked about is not running"

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        status = sub.add_parser(self.name, parents=[parents.common, parents.names, parents.as_json], help=self.help)
        status.add_argument("-w", "--watch", action="store_true", help="the live view of `supervise top`")
        return status

    def run(self, path: Path, args: argparse.Namespace) -> int:
        if args.watch:
            from ... import top

            return top.run(path, args.services)
        return super().run(path, args)

    def show(self, reply: dict[str, Any], args: argparse.Namespace) -> int:
        rows = reply["services"]
        if args.json:
            print(json.dumps(reply, indent=2))
        else:
            print_status(rows, rules=True)
        return EXIT_OK if as_asked(rows) else EXIT_NOT_RUNNING

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        from ... import __version__

        names = request.get("services") or []
        reconciler = daemon.reconciler
        unknown = [n for n in names if n not in reconciler.controllers and n not in reconciler.desired.services]
        if unknown:
            return {"ok": False, "error": "unknown service: " + ", ".join(unknown), "code": Code.UNKNOWN_SERVICE}
        return {"services": daemon.status_rows(names), "supervisor": {
            "pid": os.getpid(), "uptime": time.time() - daemon.started, "config": str(daemon.path),
            "version": __version__, "revision": daemon.revision, "config_error": daemon.last_error or None}}
