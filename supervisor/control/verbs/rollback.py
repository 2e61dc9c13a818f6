"""``supervise rollback NAME [VERSION]``: run an earlier version of a service (default: the
newest good one other than what runs) and pin it until the next change (a new revision of its
source, or the service changed in the file), which deploys as usual and ends the pin."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ...decide.errors import EXIT_OK, Code
from ..client import Client
from .base import Command, Parents, print_status

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Rollback(Command):
    """Client: says what runs now and prints the service's status. Server:
    :meth:`Reconciler.rollback <supervisor.reconciler.Reconciler.rollback>`; a refusal (in
    place, no such version, nothing good to go back to, held) changes nothing and exits 1."""

    name = "rollback"
    help = "run an earlier version (default: the newest good one) and pin it until the next change"
    timeout = None  # the replicas stop (stop_timeout) and start again

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        verb = sub.add_parser(self.name, parents=[parents.common], help=self.help)
        verb.add_argument("service", metavar="NAME", help="the service")
        verb.add_argument("version", nargs="?", default=None, metavar="VERSION",
                          help="a version (or a unique prefix) from `supervise versions NAME`")
        return verb

    def exchange(self, client: Client, args: argparse.Namespace) -> dict[str, Any]:
        return client.call(self.name, service=args.service, version=args.version)

    def show(self, reply: dict[str, Any], args: argparse.Namespace) -> int:
        print(f"{args.service}: running {reply['version']}, pinned until the next change")
        print_status(reply["services"], rules=True)
        return EXIT_OK

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        from ...execute.versions import VersionError

        name, wanted = request.get("service"), request.get("version")
        if not isinstance(name, str) or name not in daemon.reconciler.controllers:
            return {"ok": False, "error": f"unknown service: {name}", "code": Code.UNKNOWN_SERVICE}
        if wanted is not None and not isinstance(wanted, str):
            return {"ok": False, "error": "version: expected a string", "code": Code.FAILED}
        try:
            version = await daemon.reconciler.rollback(name, wanted or None)
        except VersionError as exc:
            return {"ok": False, "error": str(exc), "code": Code.FAILED}
        return {"version": version, "services": daemon.status_rows([name])}
