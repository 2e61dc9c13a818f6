"""``supervise events [NAME...]``: stream events as JSON lines (one object a line, see
:class:`supervisor.observe.events.Event`) until interrupted or the supervisor stops."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from ...decide.errors import EXIT_OK
from ..client import Client, ControlError, NotRunning
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
        """Print the stream. One that ends on ``upgrading`` (supervise exec'ing its new
        version, same pid) goes on with the new one: connected again at once (the listening
        socket is handed over, so the connection waits in its backlog), for as long as an
        upgrade may take to answer."""
        from .upgrade import ANSWER_WAIT

        last = None
        for event in client.stream("events", services=args.services):
            print(json.dumps(event, separators=(",", ":")), flush=True)
            last = event.get("type")
        follow_until = time.monotonic() + ANSWER_WAIT
        while last == "upgrading":
            last = None
            try:
                with Client(client.state_dir, timeout=None) as again:
                    for event in again.stream("events", services=args.services):
                        print(json.dumps(event, separators=(",", ":")), flush=True)
                        last = event.get("type")
            except (NotRunning, ControlError):
                if time.monotonic() >= follow_until:
                    raise
                time.sleep(0.05)
                last = "upgrading"
                continue
            follow_until = time.monotonic() + ANSWER_WAIT
        return {}

    def show(self, reply: dict[str, Any], args: argparse.Namespace) -> int:
        return EXIT_OK

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        from ...observe.events import SUPERVISOR_EVENTS
        from ..server import send

        names = set(request.get("services") or [])
        queue = daemon.notifier.subscribe()
        try:
            await send(writer, {"ok": True})
            while True:
                event = await queue.get()
                if event is None:
                    return
                if names and event.service not in names and event.type not in SUPERVISOR_EVENTS:
                    continue
                writer.write((event.to_json() + "\n").encode())
                await writer.drain()
        finally:
            daemon.notifier.unsubscribe(queue)
