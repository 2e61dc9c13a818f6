"""``supervise``: the command line. Maps every error to an exit code in one place.

Exit codes: 0 success; 1 runtime error (e.g. no supervisor running, state dir locked);
2 bad usage or an invalid config file; 3 ``status``: something asked about is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from . import __version__, config, logs
from .config import ConfigError
from .durations import parse_duration
from .events import Event, EventType, Notifier
from .model import Desired, Observed
from .notify import SdNotify, UnitReporter, journal_stream
from .plan import plan as make_plan

if TYPE_CHECKING:  # pragma: no cover
    from .reconciler import Reconciler

log = logging.getLogger("supervise")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


class CliError(Exception):
    """A failure to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=None,
                        help="config file (default: $SUPERVISE_CONFIG or ./services.toml)")
    parser = argparse.ArgumentParser(
        prog="supervise", parents=[common],
        description="Converge this machine to services.toml and keep it there.")
    parser.add_argument("--version", action="version", version=f"supervise {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.add_parser("run", parents=[common], help="run in the foreground (the default verb)")
    sub.add_parser("check", parents=[common], help="validate the config; exit 2 listing every error")
    sub.add_parser("plan", parents=[common], help="print what a run would do now, one action a line")
    add_import_verb(sub)
    return parser


def add_import_verb(sub) -> None:
    """``supervise import FILE [--env ENV_FILE] [--from FORMAT]``."""
    verb = sub.add_parser("import", help="print a services.toml equivalent to a Procfile or a supervisord.conf")
    verb.add_argument("file", type=Path, metavar="FILE", help="a Procfile or a supervisord.conf")
    verb.add_argument("--env", type=Path, metavar="ENV_FILE", default=None,
                      help="Procfile: the dotenv file for every service (default: .env beside FILE, if any)")
    verb.add_argument("--from", dest="format", choices=("procfile", "supervisord"), default=None,
                      help="the format of FILE (default: guessed from its name and contents)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    path = args.config or config.default_config_path()
    try:
        if args.verb == "check":
            return cmd_check(path)
        if args.verb == "plan":
            return cmd_plan(path)
        if args.verb == "import":
            return cmd_import(args.file, args.env, args.format)
        return cmd_run(path)
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"supervise: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside the loop
        return 130


def cmd_check(path: Path) -> int:
    desired = config.load(path)
    count = len(desired.services)
    print(f"{path}: ok ({count} service{'s' if count != 1 else ''})")
    return EXIT_OK


def cmd_plan(path: Path) -> int:
    desired = config.load(path)
    the_plan = make_plan(desired, Observed.empty())
    for line in the_plan.lines():
        print(line)
    if not the_plan:
        print("nothing to do")
    return EXIT_OK


def cmd_import(path: Path, env: Path | None, format: str | None) -> int:
    """Print the services.toml equivalent of the Procfile or supervisord.conf at ``path``."""
    from .importers import ImportFailed, import_file

    try:
        sys.stdout.write(import_file(path, env=env, format=format))
    except ImportFailed as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return EXIT_OK


def cmd_run(path: Path) -> int:
    desired = config.load(path)
    return asyncio.run(_run(path, desired))


async def _run(path: Path, desired: Desired) -> int:
    from .reconciler import Reconciler

    loop = asyncio.get_running_loop()
    notifier = Notifier()
    notifier.add_listener(print_event)
    unit = systemd_reporter()
    reconciler = Reconciler(desired, notifier, on_change=unit.changed)
    unit.attach(reconciler)
    await reconciler.start()
    tail = logs.ConsoleTail(logs.log_dir(desired.settings.state_dir))
    tail.start()
    for name in desired.services:
        tail.add(name, logs.log_path(desired.settings.state_dir, name))
    notifier.add_listener(lambda event: event.type is EventType.CREATE and event.service and
                          tail.add(event.service, logs.log_path(desired.settings.state_dir, event.service)))

    last_error: list[str] = [""]

    def load() -> Desired | None:
        try:
            new = config.load(path)
        except ConfigError as exc:
            text = str(exc)
            if text != last_error[0]:
                log.error("config not applied, the last good one stays in force:\n%s", text)
                notifier.emit(EventType.CONFIG_ERROR, None, None, errors=[str(d) for d in exc.diagnostics])
            last_error[0] = text
            return None
        last_error[0] = ""
        if new.settings.state_dir != desired.settings.state_dir:
            log.warning("state_dir changes take effect at the next start")
        return new

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_on_sighup(unit, reconciler, load))

    log.info("supervise %s: %d services from %s (state in %s)", __version__, len(desired.services),
             path, desired.settings.state_dir)
    runner = asyncio.create_task(reconciler.run(load))
    reconciler.request()
    unit.start()
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
    unit.stopping()
    log.info("stopping every service")
    runner.cancel()
    try:
        await runner
    except asyncio.CancelledError:
        pass
    except Exception:  # pragma: no cover - reported, then we still stop everything
        log.exception("reconciler failed")
    await unit.close()  # a reload in progress ends here, before the services stop
    await reconciler.shutdown()
    tail.stop()
    notifier.close()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    log.info("stopped")
    return EXIT_OK


def systemd_reporter() -> UnitReporter:
    """What ``run`` tells systemd (``Type=notify``; a no-op without ``$NOTIFY_SOCKET``).

    ``$NOTIFY_SOCKET`` and ``$WATCHDOG_*`` are read, then removed so services do not inherit
    them. ``$SUPERVISE_READY_TIMEOUT`` (a duration, default 60s) bounds the wait for the first
    convergence before ``READY=1`` is sent anyway.
    """
    sd = SdNotify.from_environ(unset=True)
    raw = os.environ.get("SUPERVISE_READY_TIMEOUT", "").strip()
    timeout = 60.0
    if raw:
        try:
            timeout = float(raw) if raw.replace(".", "", 1).isdigit() else parse_duration(raw)
        except ValueError as exc:
            log.warning("SUPERVISE_READY_TIMEOUT ignored: %s", exc)
    return UnitReporter(sd, ready_timeout=timeout)


def reload_on_sighup(unit: UnitReporter, reconciler: "Reconciler", load: Callable[[], Desired | None]) -> None:
    """SIGHUP: re-read the file and apply it, between ``RELOADING=1`` and ``READY=1``. An
    invalid file is reported by ``load`` (None) and the last good one stays in force."""
    async def apply() -> None:
        desired = load()
        if desired is not None:
            await reconciler.apply(desired)

    unit.reload(apply)


def print_event(event: Event) -> None:
    """One readable log line per life-cycle event (JSON is what ``supervise events`` gives)."""
    data = event.data
    who = event.service or ""
    if "replica" in data:
        who = f"{who}[{data['replica']}]"
    detail = []
    for key in ("pid", "exit", "delay", "reason", "error"):
        if data.get(key) not in (None, ""):
            detail.append(f"{key} {data[key]}" if key in ("pid", "delay") else str(data[key]))
    if event.version:
        detail.append(f"version {event.version}")
    level = logging.ERROR if event.type in (EventType.BUILD_FAILED, EventType.FETCH_FAILED, EventType.FAILED,
                                            EventType.START_FAILED) else logging.INFO
    if event.type is EventType.CONFIG_ERROR:
        return
    log.log(level, "%s %s%s", event.type.value, who, (": " + ", ".join(detail)) if detail else "")
    for line in data.get("tail", []) or []:
        log.log(level, "    %s", line)


class _Formatter(logging.Formatter):
    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, journal: bool, colour: bool):
        super().__init__()
        self.journal = journal
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return "\n".join(f"<{self.PRIORITY.get(record.levelno, 6)}>{line}" for line in message.splitlines())
        prefix = "supervise |"
        if self.colour:
            colour = "31" if record.levelno >= logging.ERROR else "33" if record.levelno >= logging.WARNING else "1"
            prefix = f"\x1b[{colour}m{prefix}\x1b[0m"
        return "\n".join(f"{prefix} {line}" for line in message.splitlines())


def setup_logging(verbose: bool = False) -> None:
    """Our own messages on stderr; syslog priority prefixes under journald (sd-daemon(3)),
    that is when ``$JOURNAL_STREAM`` names stderr (see :func:`notify.journal_stream`)."""
    journal = journal_stream(sys.stderr) and not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journal, logs.use_colour(sys.stderr)))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
