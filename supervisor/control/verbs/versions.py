"""``supervise versions [--json] NAME``: the versions of a service on disk (git worktrees, pip
venvs, folder snapshots), newest first: which proved good, which replicas run which, which is
pinned; then the rule of a good version (README, "Rollback has a written rule")."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ...decide.errors import EXIT_OK, Code
from ..client import Client
from .base import Command, Parents, rollback_line

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Versions(Command):
    """Client: the table (or the reply as JSON). Server: :meth:`Reconciler.versions
    <supervisor.reconciler.Reconciler.versions>` of the service (unknown: exit 4)."""

    name = "versions"
    help = "a service's versions on disk: which proved good, which runs, which is pinned"

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        verb = sub.add_parser(self.name, parents=[parents.common, parents.as_json], help=self.help)
        verb.add_argument("service", metavar="NAME", help="the service")
        return verb

    def exchange(self, client: Client, args: argparse.Namespace) -> dict[str, Any]:
        return client.call(self.name, service=args.service)

    def show(self, reply: dict[str, Any], args: argparse.Namespace) -> int:
        if args.json:
            print(json.dumps(reply, indent=2))
            return EXIT_OK
        header = ("VERSION", "GOOD", "RUNNING", "PINNED", "BUILT", "FOLDER")
        table = [header]
        for row in reply["versions"]:
            running = ",".join(map(str, row["running"])) if row["running"] else "-"
            table.append((row["version"] + (" (newest)" if row.get("newest") else ""),
                          "yes" if row["good"] else "no", running, "yes" if row["pinned"] else "-",
                          "-" if row["built"] is None else "yes" if row["built"] else "no",
                          row["folder"] or "(not on disk)"))
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
        print()
        print(f"{reply['service']}: {reply['source']}; " + rollback_line(reply)
              + f"; keep_versions = {reply.get('keep_versions')}")
        return EXIT_OK

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        name = request.get("service")
        if not isinstance(name, str) or name not in daemon.reconciler.controllers:
            return {"ok": False, "error": f"unknown service: {name}", "code": Code.UNKNOWN_SERVICE}
        return daemon.reconciler.versions(name)
