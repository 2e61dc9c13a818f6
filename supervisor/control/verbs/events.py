"""``supervise events [NAME...]``: stream events as JSON lines (one object a line, see
:class:`supervisor.observe.events.Event`) until interrupted or the supervisor stops."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ...decide.errors import EXIT_OK
from ..client import Client
from .base import Command

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Events(Command):
    """Client: print each event as it comes. Server: answer ``{"ok": true}``, then write every
    event of the services asked for (all with none) until the client hangs up or the bus ends."""

    name = "events"
    help = "stream events as JSON lines"
    timeout = None

    def exchange(self, client: Client, args: argparse.Namespace) -> dict[str, Any]:
        for event in client.stream("events", services=args.services):
            print(json.dumps(event, separators=(",", ":")), flush=True)
        return {}

    def show(self, reply: dict[str, Any], args: argparse.Namespace) -> int:
        return EXIT_OK

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        from ..server import send

        names = set(request.get("services") or [])
        queue = daemon.notifier.subscribe()
        try:
            await send(writer, {"ok": True})
            while True:
                event = await queue.get()
                if event is None:
                    return
                if names and event.service not in names:
                    continue
                writer.write((event.to_json() + "\n").encode())
                await writer.drain()
        finally:
            daemon.notifier.unsubscribe(queue)
