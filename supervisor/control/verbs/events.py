"""``supervise events [--since DURATION] [NAME...]``: stream events as JSON lines (one object a
line, see :class:`supervisor.observe.events.Event`) until interrupted or the supervisor stops;
with ``--since``, first the events of the last DURATION from the history the supervisor keeps
in STATE_DIR/events (:mod:`supervisor.observe.history`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...decide import errors
from ...decide.errors import EXIT_OK, EXIT_USAGE
from ...desired.peek import state_dir_of
from ..client import Client, ControlError, NotRunning
from .base import CliError, Command, Parents

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


def since_of(args: argparse.Namespace) -> float | None:
    """``--since DURATION`` as seconds since the epoch (None without it). Raises CliError (2)."""
    import time

    from ...desired.durations import parse_since

    if getattr(args, "since", None) is None:
        return None
    try:
        return time.time() - parse_since(args.since)
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EXIT_USAGE) from None


def _print(event: dict[str, Any]) -> None:
    print(json.dumps(event, separators=(",", ":")), flush=True)


class Events(Command):
    """Client: print each event as it comes (after the replay asked for with ``--since``).
    Server: answer ``{"ok": true}`` (with a ``note`` when ``since`` reaches back past the kept
    history), write the kept events since ``since`` (seconds since the epoch), then every new
    event of the services asked for (all with none) until the client hangs up or the bus ends."""

    name = "events"
    help = "stream events as JSON lines"
    timeout = None

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        events = super().add_parser(sub, parents)
        events.add_argument("--since", metavar="DURATION", default=None,
                            help='first replay the kept history of the last DURATION ("10m"), then follow')
        return events

    def run(self, path: Path, args: argparse.Namespace) -> int:
        """As :meth:`Command.run`; with ``--since`` and no supervisor, the kept history is
        printed before the one-line error (exit 1: there is nothing to follow)."""
        since = since_of(args)
        state_dir = state_dir_of(path)  # peek: without importing the validator (issue 17)
        try:
            with Client(state_dir, timeout=self.timeout) as client:
                last = self.follow(client, args.services, since)
            self.follow_upgrades(state_dir, args.services, last)
        except NotRunning as exc:
            if since is not None:
                from ...observe import history

                kept, note = history.read(state_dir, since, args.services)
                if note:
                    print(f"supervise: note: {note}", file=sys.stderr)
                for raw in kept:
                    _print(raw)
                raise CliError(f"{exc} (the kept history is printed; nothing to follow)") from None
            raise CliError(str(exc)) from None
        except ControlError as exc:
            raise CliError(str(exc), errors.exit_code(exc.code)) from None
        return EXIT_OK

    def follow(self, client: Client, services: list[str], since: float | None) -> str | None:
        """Ask for the stream (and the replay since ``since``) and print it until it ends;
        returns the type of the last event."""
        request: dict[str, Any] = {"services": services, **({"since": since} if since is not None else {})}
        opened, events = client.subscribe(self.name, **request)
        if opened.get("note"):  # --since reaches back past the kept history
            print(f"supervise: note: {opened['note']}", file=sys.stderr, flush=True)
        last = None
        for event in events:
            _print(event)
            last = event.get("type")
        return last

    def follow_upgrades(self, state_dir: Path, services: list[str], last: str | None) -> None:
        """A stream that ended on ``upgrading`` (supervise exec'ing its new version, same pid)
        goes on with the new one: connected again at once (the listening socket is handed
        over, so the connection waits in its backlog), for as long as an upgrade may take to
        answer. Raises NotRunning or ControlError past that."""
        from .upgrade import ANSWER_WAIT

        follow_until = time.monotonic() + ANSWER_WAIT
        while last == "upgrading":
            try:
                with Client(state_dir, timeout=self.timeout) as client:
                    last = self.follow(client, services, None)
            except (NotRunning, ControlError):
                if time.monotonic() >= follow_until:
                    raise
                time.sleep(0.05)
                continue
            follow_until = time.monotonic() + ANSWER_WAIT

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """The queue is subscribed and the history's files opened at one instant (nothing runs
        between on the loop), and the replay stops at the last event written before it: every
        event is sent once, none lost at the seam."""
        import asyncio

        from ...observe.events import SUPERVISOR_EVENTS
        from ...observe.history import snapshot
        from ..server import send

        names = set(request.get("services") or [])
        since = request.get("since")
        queue = daemon.notifier.subscribe()
        try:
            replay: list[dict[str, Any]] = []
            note = None
            if isinstance(since, (int, float)) and not isinstance(since, bool):
                try:
                    shot = snapshot(daemon.state_dir, daemon.history.last_seq)
                except OSError:
                    shot = None
                if shot is not None:
                    replay = await asyncio.to_thread(shot.read, float(since), names)
                    note = shot.note(float(since))
            await send(writer, {"ok": True, **({"note": note} if note else {})})
            for raw in replay:
                writer.write((json.dumps(raw, default=str, separators=(",", ":")) + "\n").encode())
            await writer.drain()
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
