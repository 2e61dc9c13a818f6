"""What a control verb is: one :class:`Command` per verb, each in a file of its own in this
folder with both of its halves (the shape of circus's ``commands/base.py``):

- the client half, run by ``supervise VERB``: :meth:`Command.add_parser` (its arguments and
  help), :meth:`Command.run` (connects to the state dir's control socket, sends the request of
  :meth:`Command.exchange`, prints the reply with :meth:`Command.show`, returns the exit code);
- the server half, run by the supervisor for each request line: :meth:`Command.handle` (the
  request object in, the reply object out; ``ok`` is added by the server).

The protocol (JSON lines, owner-only socket) is :mod:`supervisor.control.server` and
:mod:`supervisor.control.client`; the exit codes come from :mod:`supervisor.decide.errors`.
Kept light: the CLI imports every verb on each call, so asyncio, the engine and the validator
(:mod:`supervisor.desired.config`) are only named for type checking here, and a half imports
what it needs when it runs (tests/unit/test_cli_imports.py holds it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ...decide import errors
from ...decide.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from ...desired.durations import format_duration
from ...desired.peek import state_dir_of
from ..client import Client, ControlError, NotRunning

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon
    from ...execute.service import ServiceController


class CliError(Exception):
    """A failure to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


class Parents(NamedTuple):
    """The shared argparse parents a verb's parser may take: ``common`` (``--config``),
    ``names`` (``NAME...``: services, default all) and ``as_json`` (``--json``). (A
    NamedTuple: dataclasses brings inspect and ast into every `supervise status`.)"""

    common: argparse.ArgumentParser
    names: argparse.ArgumentParser
    as_json: argparse.ArgumentParser


class Command:
    """One control verb. Subclasses set :attr:`name` and :attr:`help` and write
    :meth:`handle`; the client half's defaults send ``{"verb": name, "services": [...]}`` and
    print the status table of the reply's ``services``."""

    #: The verb, on the command line and in the request's ``"verb"``.
    name: str = ""
    #: One line for ``supervise --help``.
    help: str = ""
    #: Seconds the client waits for a reply; None: as long as it takes (a stop waits for the
    #: services' ``stop_timeout``, a reload for a parse and an apply).
    timeout: float | None = 30.0

    # -- client half -----------------------------------------------------------------------

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        """Add ``supervise VERB`` to the subparsers ``sub`` (the man page test walks them)."""
        return sub.add_parser(self.name, parents=[parents.common, parents.names], help=self.help)

    def run(self, path: Path, args: argparse.Namespace) -> int:
        """``supervise VERB`` against the supervisor of ``path``'s state dir: the exit code.
        Raises :class:`CliError`: exit 1 when none runs, else the exit code of the error code
        the supervisor answered with (:func:`supervisor.decide.errors.exit_code`)."""
        state_dir = state_dir_of(path)  # peek: without importing the validator (issue 17)
        try:
            with Client(state_dir, timeout=self.timeout) as client:
                reply = self.exchange(client, args)
        except NotRunning as exc:
            raise CliError(str(exc)) from None
        except ControlError as exc:
            raise CliError(str(exc), errors.exit_code(exc.code)) from None
        return self.show(reply, args)

    def exchange(self, client: Client, args: argparse.Namespace) -> dict[str, Any]:
        """Send the request and return the reply. Raises ControlError, CliError."""
        return client.call(self.name, services=getattr(args, "services", []))

    def show(self, reply: dict[str, Any], args: argparse.Namespace) -> int:
        """Print the reply; the exit code."""
        print_status(reply["services"])
        return EXIT_OK

    # -- server half -----------------------------------------------------------------------

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        """The reply to ``request`` (``ok`` is added; ``{"ok": False, "error", "code"}`` for a
        refusal), or None when the handler wrote its own replies (a stream)."""
        raise NotImplementedError(self.name)


class ServiceCommand(Command):
    """``start``/``stop``/``restart``: NAMEs, globs or ``--all``, waiting as long as it takes."""

    timeout = None

    def add_parser(self, sub: Any, parents: Parents) -> argparse.ArgumentParser:
        one = sub.add_parser(self.name, parents=[parents.common], help=self.help)
        one.add_argument("services", nargs="*", metavar="NAME", help="service names or shell globs ('web-*')")
        one.add_argument("--all", action="store_true", help="every service of the running supervisor")
        return one

    def exchange(self, client: Client, args: argparse.Namespace) -> dict[str, Any]:
        services = choose_services(client, self.name, args.services, args.all)
        return client.call(self.name, services=services)

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        """The controllers of the request's services (an unknown name: the ``unknown-service``
        error, nothing done), :meth:`act` on them, then their status rows."""
        try:
            controllers = self.controllers(daemon, request)
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0], "code": errors.Code.UNKNOWN_SERVICE}
        await self.act(daemon, controllers)
        return {"services": daemon.status_rows([c.name for c in controllers])}

    async def act(self, daemon: Daemon, controllers: list[ServiceController]) -> None:
        """What the verb does to ``controllers`` (each verb's own); returns once it is done."""
        raise NotImplementedError

    @staticmethod
    def controllers(daemon: Daemon, request: dict[str, Any]) -> list[ServiceController]:
        """The controllers of the request's ``services``. Raises KeyError("unknown service: ...")."""
        names = request.get("services") or []
        reconciler = daemon.reconciler
        unknown = [n for n in names if n not in reconciler.controllers and n not in reconciler.desired.services]
        if unknown:
            raise KeyError("unknown service: " + ", ".join(unknown))
        return [reconciler.controllers[n] for n in names]


def choose_services(client: Client, verb: str, words: list[str], every: bool) -> list[str]:
    """The names ``start``/``stop``/``restart`` act on: ``--all``, or NAMEs and globs expanded
    against the running supervisor's services (:mod:`supervisor.desired.patterns`). Raises CliError."""
    from ...desired.patterns import NoMatch, expand, is_pattern

    if every and words:
        raise CliError(f"{verb}: give NAMEs or --all, not both", EXIT_USAGE)
    if not every and not words:
        raise CliError(f"{verb}: name the services (NAME or a glob such as 'web-*'), or give --all", EXIT_USAGE)
    if not every and not any(is_pattern(w) for w in words):
        return words
    running = list(dict.fromkeys(row["service"] for row in client.call("status")["services"]))
    if every:
        if not running:
            raise CliError(f"{verb} --all: the supervisor runs no service")
        return running
    try:
        return expand(words, running)
    except NoMatch as exc:
        raise CliError(str(exc)) from None


def print_status(rows: list[dict], rules: bool = False) -> None:
    """The status table: one line per replica; with ``rules``, then the rollback rule of each
    service (``NAME: good = ...; ...``) after a blank line."""
    header = ("SERVICE", "REPLICA", "PHASE", "PID", "VERSION", "UPTIME", "RESTARTS", "LAST EXIT", "READY", "GOOD",
              "MESSAGE")
    table = [header]
    rules_of: dict[str, str] = {}
    for row in rows:
        good = row.get("good")
        table.append((
            row["service"], "-" if row["replica"] is None else str(row["replica"]),
            row["phase"] + (" (held)" if row.get("held") else ""), str(row["pid"] or "-"),
            row["version"] or "-", format_duration(row["uptime"]) if row["uptime"] is not None else "-",
            str(row["restarts"]), row["last_exit"] or "-", "yes" if row["ready"] else "no",
            "-" if good is None else "yes" if good else "no", row.get("message") or "",
        ))
        if row.get("good_rule"):
            rules_of[row["service"]] = rollback_line(row)
    widths = [max(map(len, column)) for column in zip(*table)]
    lines = ["  ".join([cell.ljust(width) for cell, width in zip(r, widths)]).rstrip() for r in table]
    sys.stdout.write("\n".join(lines) + "\n")  # one write: 2,000 rows are one status
    if rules and rules_of:
        print()
        for name, line in rules_of.items():
            print(f"{name}: {line}")


def rollback_line(row: dict) -> str:
    """The rollback rule of a status row in words: ``good = up for 10s without a crash;
    a failing update rolls back to abc-123`` (README, "Rollback has a written rule")."""
    line = f"good = {row['good_rule']}; "
    if row.get("in_place"):
        line += "runs its folder in place: no rollback to earlier files"
        if row.get("rollback_to"):
            line += f" (a failing config change goes back to the last good config of {row['rollback_to']})"
    elif row.get("pinned"):
        line += f"pinned to {row['pinned']} by `supervise rollback` until the next change"
    elif row.get("rollback_to"):
        line += f"a failing update rolls back to {row['rollback_to']}"
    else:
        line += "no good version yet: a failing update has nothing to roll back to"
    return line
