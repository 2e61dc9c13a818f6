"""``supervise exec NAME [--replica N] -- CMD...``: a one-off command with a service's
environment, working folder and user, in the foreground (what ``foreman run`` and
``docker compose run`` give).

The environment is computed as a replica's is (:func:`environ.replica_env`: the caller's
environment, ``[env]``, ``env_file``, the service's ``env``, then ``REPLICA`` and
``SUPERVISE_SERVICE``; ``SUPERVISE_VERSION`` too when a version of it runs). The folder is the
one the running version runs in (its state record), else the local source folder (where a
folder source is built), joined with ``cwd``; a git source that has no version yet is an
error. ``CMD`` is run as given (an argv, no shell, no ``${VAR}`` expansion: the calling shell
already expanded it); it keeps the terminal, and its exit status is ours (128+N for signal N,
as shells report it).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Sequence

from ..desired import config
from ..observe import state
from ..desired.environ import replica_env
from ..desired.model import ServiceSpec


class ExecError(Exception):
    """The command cannot be started; ``code`` is the exit status to give (127: not found)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def split_argv(words: Sequence[str], replica: int) -> tuple[int, list[str]]:
    """``[--replica N] [--] CMD...`` after NAME (argparse's REMAINDER keeps options given after
    NAME): the replica and the command. Raises ExecError for a bad ``--replica``."""
    words = list(words)
    while words and words[0] != "--" and words[0].startswith("-"):
        if not words[0].startswith("--replica"):
            raise ExecError(f"exec: {words[0]} goes before NAME (after NAME: only --replica N, then -- CMD)", 2)
        option = words.pop(0)
        value = option.split("=", 1)[1] if "=" in option else (words.pop(0) if words else "")
        try:
            replica = int(value)
        except ValueError:
            raise ExecError(f"exec: --replica needs a number, got {value!r}", 2) from None
    if words[:1] == ["--"]:
        words = words[1:]
    return replica, words


def where(spec: ServiceSpec, state_dir: Path, replica: int) -> tuple[Path, str | None]:
    """(working folder, running version or None) for a one-off of ``spec``."""
    record = state.load_all(state_dir).get(spec.name)
    replicas = record.replicas if record is not None else {}
    running = replicas.get(replica) or next(iter(replicas.values()), None)
    if running is not None:
        return running.workdir / spec.cwd, running.version
    if spec.source.kind == "path" and spec.source.path is not None:
        return spec.source.path / spec.cwd, None
    raise ExecError(f"{spec.name}: no version of its git source is checked out yet; start it once, then exec")


def run(path: Path, name: str, argv: Sequence[str], replica: int = 0) -> int:
    """Run ``argv`` as service ``name`` would run; return its exit status. Raises ExecError
    (and ConfigError for a bad file)."""
    from . import procs

    desired = config.load(path)
    spec = desired.services.get(name)
    if spec is None:
        raise ExecError(f"unknown service: {name} (services: {', '.join(desired.services) or 'none'})")
    if not argv:
        raise ExecError("exec: give the command after --, e.g. supervise exec web -- env", 2)
    if replica < 0 or replica >= max(spec.replicas, 1):
        raise ExecError(f"{name} has replicas 0..{max(spec.replicas, 1) - 1}, not {replica}", 2)
    cwd, version = where(spec, desired.settings.state_dir, replica)
    env = replica_env(name, spec.environment, replica, user=spec.user)  # HOME, USER... of user=
    if version:
        env["SUPERVISE_VERSION"] = version
    identity = {}
    if spec.user is not None:
        try:
            identity = procs.user_identity(spec.user)
        except procs.SpawnError as exc:
            raise ExecError(f"{name}: {exc}") from None
    try:
        child = subprocess.Popen(list(argv), cwd=cwd, env=env, **identity)
    except FileNotFoundError:
        if not cwd.is_dir():
            raise ExecError(f"{name}: working folder {cwd} does not exist") from None
        raise ExecError(f"command not found: {argv[0]}", 127) from None
    except PermissionError:
        raise ExecError(f"permission denied: {argv[0]}", 126) from None
    # The child shares our terminal: Ctrl-C reaches it from the kernel, and is its to handle.
    # We pass SIGTERM/SIGHUP on and wait for it.
    old = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
           for sig in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
