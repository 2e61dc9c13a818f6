"""``supervise``: the command line. Maps every error to an exit code in one place.

The verbs answered by the running supervisor (status, plan, reload, start, stop, restart,
events) are each a file of :mod:`supervisor.control.verbs` with their client and server
halves; the verbs that need no supervisor (run, check, render, top, logs, import, init, exec,
completion) are dispatched here to the modules that do them.

Exit codes: 0 success; 1 runtime error (e.g. no supervisor running, state dir locked, no
answer on the control socket in time, its backlog full: always one line, never a traceback);
2 bad usage or an invalid config file; 3 ``status``: something asked about is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

# Only what every verb needs is imported here: the client verbs (status, stop, ...) must answer
# fast (the whole `supervise status` of 2,000 services within 100 ms, issue 17), so the
# validator and the model (desired.config: dataclasses, inspect), logging, asyncio, watchdog
# and tomlkit are imported inside the verbs that use them. tests/unit/test_cli_imports.py
# holds it.
from .control.verbs import COMMANDS
from .control.verbs.base import CliError, Parents
from .decide.errors import EXIT_ERROR, EXIT_OK, EXIT_UNKNOWN, EXIT_USAGE
from .desired.peek import ConfigError, default_config_path, escape, runtime_of

if TYPE_CHECKING:
    from .desired.config import Diagnostic

#: Verbs answered by the running supervisor over the control socket: nothing on their way
#: logs, so they set up no logging (importing it is a tenth of their time).
CLIENT_VERBS = ("status", "start", "stop", "restart", "reload", "events")

__all__ = ["CliError", "build_parser", "main"]


class VersionAction(argparse.Action):
    """``--version``: ``supervise VERSION``, the installed distribution's (importlib.metadata),
    looked up only when asked (every other call stays as fast as without it)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"supervise {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (the man page test walks it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                        help="config file (default: $SUPERVISE_CONFIG or ./services.toml)")
    names = argparse.ArgumentParser(add_help=False)
    names.add_argument("services", nargs="*", metavar="NAME", help="services (default: all)")
    parser = argparse.ArgumentParser(
        prog="supervise", parents=[common],
        description="Converge this machine to services.toml and keep it there.")
    parser.add_argument("--version", action=VersionAction, help="print the installed version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="do not echo service output (the log files still have it all)")
    parser._add_container_actions(quiet)  # `supervise -q` works without the verb too
    run = sub.add_parser("run", parents=[common, quiet], help="run in the foreground (the default verb)")
    once = run.add_mutually_exclusive_group()
    once.add_argument("--exit-when-done", action="store_true",
                      help='run once: exit when every job (restart = "never" or "on-failure") has finished, '
                           "or at the first failure, stopping the rest; the exit status is the first failure's")
    once.add_argument("--exit-when", action="append", metavar="NAME", default=None,
                      help="run once: exit when service NAME has finished (repeatable), stopping the rest; "
                           "the exit status is its own")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub.add_parser("check", parents=[common, as_json], help="validate the config; exit 2 listing every error")
    shared = Parents(common, names, as_json)
    COMMANDS["plan"].add_parser(sub, shared)
    render = sub.add_parser("render", parents=[common],
                            help="print the Kubernetes manifests of the file as YAML (for review or GitOps)")
    render.add_argument("--tag", metavar="TAG", default=None,
                        help="image tag of services whose image is pushed to kubernetes.registry (REGISTRY/NAME:TAG)")
    COMMANDS["status"].add_parser(sub, shared)
    sub.add_parser("top", parents=[common, names],
                   help="full-screen live view: replicas, CPU, memory, log tail; keys to start/stop/restart")
    logs_ = sub.add_parser("logs", parents=[common, names, as_json],
                           help='print (and follow) service logs; --json: one {"service","time","line"} a line')
    logs_.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs_.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                       help="last N lines of each (default 10; all with --since)")
    logs_.add_argument("--since", metavar="DURATION", default=None, help='only lines of the last DURATION ("10m")')
    logs_.add_argument("--grep", metavar="RE", default=None, help="only lines matching the regular expression RE")
    logs_.add_argument("--replica", metavar="N", type=int, default=None,
                       help="only the output of replica N (and the notes about it)")
    logs_.add_argument("--stream", choices=("stdout", "stderr"), default=None, help="only this output stream")
    for verb in ("start", "stop", "restart", "reload", "versions", "rollback", "upgrade", "events"):
        COMMANDS[verb].add_parser(sub, shared)
    add_import_verb(sub)
    sub.add_parser("init", parents=[common],
                   help="write a commented starter services.toml (from the Procfile beside it, if there is one)")
    one_off = sub.add_parser("exec", parents=[common],
                             help="run a one-off command with a service's environment, folder and user")
    one_off.add_argument("service", metavar="NAME", help="the service whose environment to use")
    one_off.add_argument("--replica", type=int, default=0, metavar="N", help="as replica N (default 0): REPLICA=N")
    one_off.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command and its arguments")
    completion = sub.add_parser("completion", parents=[common],
                                help="print the shell completion script: bash, zsh or fish")
    completion.add_argument("shell", nargs="?", choices=("bash", "zsh", "fish"), metavar="SHELL",
                            help="bash, zsh or fish")
    completion.add_argument("--names", action="store_true",
                            help="print the service names to complete, one a line (what the scripts call)")
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
    """The ``supervise`` command: parse ``argv``, run the verb, return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verb = args.verb or "run"
    if verb not in CLIENT_VERBS or getattr(args, "watch", False):
        setup_logging(args.verbose)
    path = getattr(args, "config", None) or default_config_path()
    try:
        if verb not in NO_CONFIG_VERBS and not path.exists():
            raise CliError(f"{path}: no such file: write a starter one with `supervise init`, "
                           "or name yours with --config FILE", EXIT_USAGE)
        if verb == "init":
            return cmd_init(path)
        if verb == "completion":
            return cmd_completion(path, args, parser)
        if verb == "exec":
            from .execute.oneoff import ExecError, run as run_one_off, split_argv

            try:
                replica, argv = split_argv(args.argv, args.replica)
                return run_one_off(path, args.service, argv, replica)
            except ExecError as exc:
                raise CliError(str(exc), exc.code) from None
        if verb == "check":
            return cmd_check(path, args.json)
        if verb == "render":
            from .kube.cli import cmd_render

            return cmd_render(path, args.tag)
        if verb in ("run", "plan", "status", "top", "logs", "events"):
            if runtime_of(path) == "kubernetes":  # the cluster answers these, not a local supervisor
                setup_logging(args.verbose)
                return cmd_kubernetes(verb, path, args)
        if verb == "run":
            until = None
            if getattr(args, "exit_when_done", False) or getattr(args, "exit_when", None):
                from .decide.runonce import Until

                until = Until(tuple(args.exit_when or ()))
            # argv None: main() is the process itself (the console script), which may end at once
            return cmd_run(path, quiet=getattr(args, "quiet", False), until=until, exit_process=argv is None)
        if verb == "logs":
            return cmd_logs(path, args)
        if verb == "import":
            return cmd_import(args.file, args.env, args.format)
        if verb == "top":
            from . import top

            return top.run(path, args.services)
        return COMMANDS[verb].run(path, args)  # a control verb: supervisor/control/verbs/VERB.py
    except ConfigError as exc:
        if getattr(args, "json", False):  # scripts get the same mistakes as objects on stdout
            print(json.dumps({"ok": False, "errors": [diagnostic_object(d) for d in exc.diagnostics]}, indent=2))
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        if getattr(args, "json", False) and verb != "logs":  # valid JSON on stdout, whatever happened
            print(json.dumps({"ok": False, "error": str(exc), **({"services": []} if verb == "status" else {})},
                             indent=2))
        # several diagnostics (a reload of a file with two mistakes) are several lines, each
        # escaped: a literal "\x0a" between them helped nobody
        for line in str(exc).splitlines() or [""]:
            print(f"supervise: {escape(line)}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `supervise events | head`
        sys.stderr.close()
        return EXIT_OK
    except OSError as exc:  # the system refused something (a file, the socket): one line
        print(f"supervise: {escape(str(exc))}", file=sys.stderr)
        return EXIT_ERROR


def cmd_kubernetes(verb: str, path: Path, args: argparse.Namespace) -> int:
    """The verbs of a ``runtime = "kubernetes"`` file (see :mod:`supervisor.kube.cli`)."""
    from .kube import cli as kube_cli

    if verb == "run":
        if getattr(args, "exit_when_done", False) or getattr(args, "exit_when", None):
            raise CliError("run --exit-when-done and --exit-when run local services; not on Kubernetes", EXIT_USAGE)
        return kube_cli.cmd_run(path, quiet=getattr(args, "quiet", False))
    if verb == "plan":
        return kube_cli.cmd_plan(path, args.json)
    if verb == "top" or verb == "status":
        if verb == "top" or args.watch:
            shown = "top" if verb == "top" else "status --watch"
            raise CliError(f"{shown} shows a local supervisor; on Kubernetes, use status (a row per pod)", EXIT_USAGE)
        return kube_cli.cmd_status(path, args.services, args.json)
    if verb == "logs":
        if args.since or args.grep or args.json or args.replica is not None or args.stream:
            raise CliError("logs --since, --grep, --json, --replica and --stream read local log files; "
                           "not on Kubernetes yet", EXIT_USAGE)
        return kube_cli.cmd_logs(path, args.services, 10 if args.lines is None else args.lines, args.follow)
    if args.since is not None:
        raise CliError("events --since replays the local supervisor's history; not on Kubernetes yet", EXIT_USAGE)
    return kube_cli.cmd_events(path, args.services)


#: Verbs that work without a config file.
NO_CONFIG_VERBS = ("import", "init", "completion")


def cmd_init(path: Path) -> int:
    """``supervise init``: write a starter config at ``path`` (never over an existing file)."""
    from .desired.scaffold import InitError, init

    try:
        origin = init(path)
    except InitError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {path} from {origin}; check it with `supervise check`, start with `supervise`")
    return EXIT_OK


def cmd_completion(path: Path, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``supervise completion bash|zsh|fish`` prints the script; ``--names`` the service names."""
    from . import completion

    if args.names:
        for name in completion.service_names(path):
            print(name)
        return EXIT_OK
    if args.shell is None:
        raise CliError("completion: name a shell: bash, zsh or fish", EXIT_USAGE)
    sys.stdout.write(completion.script(args.shell, parser))
    return EXIT_OK


def state_dir_of(path: Path) -> Path:
    """``[supervise] state_dir`` of the file at ``path`` (:func:`supervisor.desired.peek.state_dir_of`)."""
    from .desired.peek import state_dir_of as peek_state_dir

    return peek_state_dir(path)


def diagnostic_object(diagnostic: Diagnostic) -> dict:
    """A config mistake for ``--json``: ``{"file", "line", "col", "service", "message"}``
    (line and col 1-based, 0 when unknown; service null for a mistake outside a service)."""
    return {"file": diagnostic.path, "line": diagnostic.line, "col": diagnostic.col,
            "service": diagnostic.service, "message": diagnostic.message}


def cmd_check(path: Path, as_json: bool = False) -> int:
    """``supervise check``: 0 with a one-line summary, or ConfigError (exit 2). Every runtime
    of the file format is checked, including ``kubernetes`` and its keys."""
    from .desired import config

    desired = config.load(path, runtimes=config.RUNTIMES)
    count = len(desired.services)
    if as_json:
        print(json.dumps({"ok": True, "file": str(path), "services": list(desired.services)}, indent=2))
        return EXIT_OK
    print(f"{path}: ok ({count} service{'s' if count != 1 else ''})")
    return EXIT_OK


def cmd_import(path: Path, env: Path | None, format: str | None) -> int:
    """Print the services.toml equivalent of the Procfile or supervisord.conf at ``path``."""
    from .desired.importers import Finding, ImportFailed, import_file

    findings: list[Finding] = []
    try:
        text = import_file(path, env=env, format=format, findings=findings)
    except ImportFailed as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for finding in findings:  # what was not carried over: also comments in the output
        print(f"supervise: warning: {finding}", file=sys.stderr)
    sys.stdout.write(text)
    return EXIT_OK


def cmd_run(path: Path, quiet: bool = False, until=None, exit_process: bool = False) -> int:
    """``supervise run``: the foreground supervisor until SIGINT/SIGTERM (SIGQUIT detaches);
    with ``until`` (a :class:`runonce.Until`), until the run once is over (its exit status).
    ``exit_process``: once stopped, end the process here (:func:`exit_now`) instead of
    returning (only when this call is the whole process: the console script's)."""
    import asyncio

    from .daemon import AlreadyRunning, Daemon

    from .desired import config
    from .observe.safefs import UnsafeStateDir, UntrustedConfig

    from . import selfupdate

    handover = selfupdate.take_handover()  # before anything reads the environment (services inherit it)
    desired = config.load(path)
    if until is not None:
        from .decide.runonce import RunOnceError, check

        try:
            check(until, desired.services)
        except RunOnceError as exc:
            raise CliError(str(exc), exc.code) from None
    daemon = Daemon(path, desired, console=not quiet, until=until, handover=handover)
    try:
        code = asyncio.run(daemon.run())
    except (AlreadyRunning, UnsafeStateDir, UntrustedConfig) as exc:
        raise CliError(str(exc)) from None
    if daemon.exec_plan is not None:  # an upgrade: every service was let go; same pid from here on
        selfupdate.exec_new(daemon.exec_plan, daemon.lock.handover_fds(), daemon.control_fd)
    if exit_process:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process with ``code`` now, after an orderly flush: the atexit handlers (logging's
    flush among them) and stdout/stderr, then ``os._exit``. What it skips is the interpreter's
    teardown, which frees the whole heap object by object (0.1-0.2 s after a stop of 200
    services, more than the stop itself) and that nothing needs once the supervisor has
    stopped: every service, file, socket and lock is closed or ended by then. Returns (the
    caller exits normally) when a non-daemon thread is still running: the interpreter would
    wait for it, and so do we."""
    import atexit
    import threading

    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython's; what Py_Finalize runs
    if run_exitfuncs is not None:
        run_exitfuncs()
    else:  # pragma: no cover - another interpreter: at least the log handlers' flush
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say there
            pass
    os._exit(code)


def cmd_logs(path: Path, args: argparse.Namespace) -> int:
    """Print the last lines of each service log (merged in time order, see :mod:`logview`),
    then follow them with -f.

    Reads the files directly, so it works whether or not a supervisor is running."""
    import re
    import signal
    import threading
    import time

    from .execute import logs
    from .observe import logview
    from .desired.durations import parse_duration

    try:
        since = time.time() - parse_duration(args.since) if args.since is not None else None
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EXIT_USAGE) from None
    try:
        pattern = re.compile(args.grep) if args.grep is not None else None
    except re.error as exc:
        raise CliError(f"--grep: not a regular expression: {exc}", EXIT_USAGE) from None
    count = args.lines if args.lines is not None else (None if since is not None else 10)
    from .desired import config

    try:
        desired = config.load(path)
        state_dir, known = desired.settings.state_dir, list(desired.services)
    except ConfigError:  # a broken file must not hide the logs: read what is on disk
        state_dir = state_dir_of(path)
        known = sorted(p.stem for p in logs.log_dir(state_dir).glob("*.log"))
    names = args.services or known
    unknown = [n for n in names if n not in known and not logs.log_path(state_dir, n).exists()]
    if unknown:
        raise CliError("unknown service: " + ", ".join(unknown), EXIT_UNKNOWN)
    only = logview.Filter(args.replica, args.stream)
    tail = logview.FilteredTail(logs.log_dir(state_dir), sys.stdout, pattern, args.json, only)
    tail.width = max([8, *(len(n) for n in names)])
    for name in names:
        tail.add(name, logs.log_path(state_dir, name))
    for line in logview.merge(logview.read(n, logs.log_path(state_dir, n), count, since, pattern, only) for n in names):
        tail.show(line)
    if not args.follow:
        return EXIT_OK
    tail.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        tail.stop()
    return EXIT_OK


def setup_logging(verbose: bool = False) -> None:
    """Our own messages on stderr; syslog priority prefixes under journald (sd-daemon(3)),
    that is when ``$JOURNAL_STREAM`` names stderr (see :func:`notify.journal_stream`)."""
    import logging

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

    # Our lines show none of a record's caller, thread or process fields: leave them uncomputed
    # (the logging HOWTO's "Optimization"). A record cost a frame walk and getpid(), and a stop
    # of 2,000 services logs 4,000 lines.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    log = logging.getLogger("supervise")
    from .term import use_colour

    journal = False
    if os.environ.get("JOURNAL_STREAM"):  # notify imports asyncio: only when it can matter
        from .observe.notify import journal_stream

        journal = journal_stream(sys.stderr) and not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journal, use_colour(sys.stderr)))
    logging.getLogger("watchdog").setLevel(logging.ERROR)  # its shutdown chatter is not ours
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
