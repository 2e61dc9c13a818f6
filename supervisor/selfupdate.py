"""Self-update: supervise follows its own source (``[supervise] self``).

A new version is installed *beside* the running one, in its own virtual environment under
``STATE_DIR/self/versions/ID/`` (``ID``: the commit's first 12 digits for a git source, the
package version for a pip source), checked (``NEW/bin/supervise --version`` and ``NEW/bin/supervise
check --config LIVE_FILE``), then the running supervisor lets go of its services as for SIGQUIT
and execs the new one in place: the same pid (systemd's MainPID, the control socket's owner), the
state lock handed over as open fds, the services adopted from their state records and their
output FIFOs, which keep every line meanwhile. The exec goes through :mod:`upgrade_boot`, the
*old* version's guard: a new version that cannot start is replaced by the old one again.

The new venv layers on the running one's packages (a ``.pth`` naming the running interpreter's
``site-packages`` folders), so pip installs only what is new or changed: the project itself, and
a dependency only if the new version asks for one the running install lacks.

What crosses the exec, in the environment (each taken out again at start, by :func:`take_handover`,
so a service's environment never sees it):

- ``SUPERVISE_HANDOVER``: JSON ``{"lock": [anchor_fd, lock_fd], "control": listening_fd, "revision": ..., "from": {"version",
  "revision"}, "failed": {"to", "revision", "error"}, "bad": [revisions]}``;
- ``SUPERVISE_BOOT``: the guard's instructions (:mod:`upgrade_boot`);
- ``SUPERVISE_READY_FD``: the pipe the new supervise writes ``ready`` to once it adopted every
  replica, listens on its control socket and applied its first reconcile pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NoReturn

from .observe import safefs
from .redaction import redact
from .desired.model import SourceSpec
from .execute.sources import SourceError, prune_versions

log = logging.getLogger("supervise")

ENV_HANDOVER = "SUPERVISE_HANDOVER"
ENV_BOOT = "SUPERVISE_BOOT"
ENV_READY = "SUPERVISE_READY_FD"
#: Seconds for making a venv and installing the new version into it.
INSTALL_TIMEOUT = 900.0
#: Seconds for each check of a new version (``--version``, ``check``).
CHECK_TIMEOUT = 120.0
#: Seconds a new supervise has, after the exec, to adopt its services, apply one pass and say it is ready.
READY_DEADLINE = 60.0
#: The marker of a complete install (an interrupted one is made again, never run).
COMPLETE = ".supervise-installed"
#: The file a new venv gets to see the running install's packages.
BASE_PTH = "_supervise_base.pth"
_VERSION_OUT = re.compile(r"^supervise (\S+)\s*$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}$")

#: The environment this process started with, less the upgrade variables (filled by
#: :func:`take_handover`, before the unit's variables are taken out): given to the next
#: supervise after an upgrade, and to the previous one after a failed one.
ORIGINAL_ENV: dict[str, str] = {}


class UpgradeError(Exception):
    """A new version cannot be installed, fails its checks, or there is none to go to. The
    message is one line for the user (credentials in a URL redacted)."""


@dataclass
class Handover:
    """What the previous supervise of this pid handed over (all empty for a fresh start).

    ``lock``: the state lock's fds (anchor socket, lock file); ``control``: the control
    socket's listening fd; ``revision``: what this process
    was installed from (None: not by a self-update); ``upgraded_from``: ``{"version",
    "revision"}`` of the supervise that exec'd this one; ``failed``: ``{"to", "revision",
    "error"}`` when this process is the old one back after a new one failed; ``bad``: revisions
    that failed, not tried again automatically; ``ready_fd``: where to say ``ready``.
    """

    lock: tuple[int, int] | None = None
    control: int | None = None
    revision: str | None = None
    upgraded_from: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    bad: list[str] = field(default_factory=list)
    ready_fd: int | None = None
    stop: bool = False  # a stop signal came while the previous one was handing over: stop at once
    paused_at: float | None = None  # time.monotonic() when the previous one began to let go
    exec_at: float | None = None  # time.monotonic() at its exec (CLOCK_MONOTONIC: the same clock here)


def take_handover(environ: dict[str, str] | None = None) -> Handover:
    """Take the upgrade variables out of ``environ`` (default ``os.environ``, and
    :data:`ORIGINAL_ENV`) and return what they said. A malformed value is ignored (logged)."""
    env = os.environ if environ is None else environ
    raw = env.pop(ENV_HANDOVER, None)
    ready = env.pop(ENV_READY, None)
    env.pop(ENV_BOOT, None)
    ORIGINAL_ENV.clear()
    ORIGINAL_ENV.update(env)
    handover = Handover()
    if ready and ready.isdigit():
        handover.ready_fd = int(ready)
    if not raw:
        return handover
    try:
        data = json.loads(raw)
        lock = data.get("lock")
        if isinstance(lock, list) and len(lock) == 2 and all(isinstance(fd, int) and fd > 2 for fd in lock):
            handover.lock = (lock[0], lock[1])
        control = data.get("control")
        if isinstance(control, int) and not isinstance(control, bool) and control > 2:
            handover.control = control
        handover.revision = data.get("revision") if isinstance(data.get("revision"), str) else None
        handover.upgraded_from = data.get("from") if isinstance(data.get("from"), dict) else None
        handover.failed = data.get("failed") if isinstance(data.get("failed"), dict) else None
        handover.bad = [r for r in data.get("bad") or [] if isinstance(r, str)]
        handover.stop = data.get("stop") is True
        for key in ("paused_at", "exec_at"):
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(handover, key, float(value))
    except (ValueError, AttributeError) as exc:
        log.warning("ignoring a malformed %s: %s", ENV_HANDOVER, exc)
    return handover


def say_ready(handover: Handover) -> None:
    """Tell the guard (:mod:`upgrade_boot`) this supervise started: it adopted every replica,
    listens on its control socket and applied one pass. Once only; nothing when not exec'd by
    an upgrade."""
    fd, handover.ready_fd = handover.ready_fd, None
    if fd is None:
        return
    try:
        os.write(fd, b"ready\n")
        os.close(fd)
    except OSError as exc:
        log.warning("cannot tell the upgrade guard that this supervise started: %s", exc)


def label(version: str, revision: str | None) -> str:
    """How a supervise is named in messages: ``0.1.1``, or ``0.1.1 (git 1a2b3c4d5e6f)`` when
    installed from a commit."""
    if revision and revision != version:
        return f"{version} (git {revision[:12]})"
    return version


class SelfSource:
    """Installs and checks new versions of supervise from ``spec`` (a git or pip SourceSpec)
    under ``STATE_DIR/self``. Blocking methods: call them in a thread."""

    def __init__(self, spec: SourceSpec, state_dir: Path, python: str = sys.executable):
        if spec.kind not in ("git", "pip"):
            raise UpgradeError(f"[supervise] self: a {spec.kind} source cannot be installed")
        self.spec = spec
        self.state_dir = state_dir
        self.root = state_dir / "self"
        self.versions = self.root / "versions"
        self.python = python
        self.children: set[subprocess.Popen] = set()  # the install's and checks' processes, running
        self.cancelled = False

    def cancel(self) -> None:
        """Kill the install or check under way (the supervisor is stopping); the step then
        fails with :class:`UpgradeError`. Thread-safe."""
        self.cancelled = True
        for child in list(self.children):
            try:
                child.kill()
            except OSError:
                pass

    def latest(self) -> str:
        """The revision the source offers now: the ref's commit on the remote, or the version
        pip would install. Raises :class:`UpgradeError`."""
        try:
            if self.spec.kind == "git":
                from .execute.sources.git import GitSource

                return GitSource(self.spec, self.root / "source").remote_revision()
            from .execute.sources.pip import PipSource

            # the newest release alone: its dependencies are pip's business at install time,
            # where the running install's packages already satisfy most of them
            return PipSource(self.spec, self.root / "source", python=self.python).latest_alone()
        except SourceError as exc:
            raise UpgradeError(str(exc)) from None

    def install(self, revision: str) -> tuple[str, Path]:
        """Install ``revision`` (reused when complete) and return (the revision installed, its
        venv). A git source is fetched first: the installed commit is where the ref points
        then. Raises :class:`UpgradeError` with the failing step's last line."""
        safefs.ensure_dir(self.root)
        safefs.ensure_dir(self.versions)
        if self.spec.kind == "git":
            from .execute.sources.git import GitSource

            git = GitSource(self.spec, self.root / "source")
            try:
                revision = git.fetch()
            except SourceError as exc:
                raise UpgradeError(str(exc)) from None
            target: str | None = None
            venv = self.venv(revision[:12])
        else:
            from .execute.sources.pip import index_args, parse_requirement

            venv = self.venv(revision)
            name = parse_requirement(str(self.spec.requirement)).name
            target = f"{name}=={revision}"
        from .execute.sources.pip import venv_complete, fresh_venv_folder

        if venv_complete(venv):
            return revision, venv
        fresh_venv_folder(self.versions, venv)  # checked folders, nothing planted followed
        self._run([self.python, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
        self._layer(venv)
        if target is None:
            try:
                source = git.checkout(revision)
            except SourceError as exc:
                raise UpgradeError(str(exc)) from None
            what, extra = str(source), []
        else:
            what, extra = target, index_args(self.spec)
        self._run([self.python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                   "--disable-pip-version-check", "--no-input", *extra, "--", what], "pip install")
        safefs.write_atomic(venv, COMPLETE, (revision + "\n").encode())
        return revision, venv

    def venv(self, ident: str) -> Path:
        """The folder of the install named ``ident`` (a commit's 12 digits or a version)."""
        if not _SAFE_ID.match(ident):
            raise UpgradeError(f"bad version {ident!r}")
        return self.versions / ident

    def _layer(self, venv: Path) -> None:
        """Let ``venv`` see the running install's packages (after its own): a ``.pth`` naming
        every ``site-packages`` folder on our ``sys.path`` but those of other self-update
        installs (pruned some day: what one of them added, pip installs into this one)."""
        site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        paths = [p for p in dict.fromkeys(sys.path)
                 if p and os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)
                 and not Path(os.path.realpath(p)).is_relative_to(os.path.realpath(self.versions))]
        safefs.write_atomic(safefs.ensure_dir(site), BASE_PTH, "".join(f"{p}\n" for p in paths).encode())

    def check(self, venv: Path, config_path: Path) -> str:
        """Run the new version's ``--version`` and its ``check`` of the live file; return the
        version it says it is. Raises :class:`UpgradeError` naming the check that failed."""
        program = str(venv / "bin" / "supervise")
        out = self._run([program, "--version"], "the new version's `supervise --version`", CHECK_TIMEOUT)
        match = _VERSION_OUT.match(out.strip().splitlines()[-1] if out.strip() else "")
        if match is None:
            raise UpgradeError(f"the new version's `supervise --version` said {out.strip()[:100]!r}, "
                               "not `supervise VERSION`")
        self._run([program, "check", "--config", str(config_path)],
                  f"the new version's `supervise check --config {config_path}`", CHECK_TIMEOUT)
        return match.group(1)

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Remove installs beyond the ``keep`` newest, never those in ``protect`` (folder names),
        and the git checkouts they were installed from but the newest (pip copied them)."""
        removed = prune_versions(self.versions, keep, protect)
        if self.spec.kind == "git" and (self.root / "source" / "repo.git").exists():
            from .execute.sources.git import GitSource

            try:
                GitSource(self.spec, self.root / "source").prune(1, protect)
            except SourceError as exc:
                log.warning("cannot prune supervise's checkouts: %s", exc)
        return removed

    def _run(self, argv: list[str], what: str, timeout: float = INSTALL_TIMEOUT) -> str:
        """Run ``argv`` (no shell, stdin from /dev/null); return its stdout. Raises
        :class:`UpgradeError` with the last line it printed when it fails."""
        if self.cancelled:
            raise UpgradeError(f"{what}: cancelled, supervise is stopping")
        # pip's cache and temporary files stay in STATE_DIR/self too (nothing written outside it)
        cache, temp = safefs.ensure_dir(self.root / "cache"), safefs.ensure_dir(self.root / "tmp")
        env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_CACHE_DIR": str(cache), "TMPDIR": str(temp)}
        # (in our own process group, as git's children: the reaper leaves them to us)
        try:
            child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:
            raise UpgradeError(f"{what}: {exc.strerror or exc}") from None
        self.children.add(child)
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise UpgradeError(f"{what}: no result in {timeout:g}s") from None
        finally:
            self.children.discard(child)
        if self.cancelled:
            raise UpgradeError(f"{what}: cancelled, supervise is stopping")
        if child.returncode != 0:
            lines = [line.strip() for line in (stderr + "\n" + stdout).splitlines()
                     if line.strip() and "is ignored: it is neither a file nor a directory" not in line]
            errors = [line for line in lines if line.startswith("ERROR:") or "Error" in line]
            last = (errors or lines or [f"exit status {child.returncode}"])[-1]
            raise UpgradeError(f"{what} failed: {redact(last[:300])}")  # (an index URL may carry a token)
        return stdout


#: Revisions that failed their checks or their start, kept across restarts of supervise.
FAILED_FILE = "failed.json"


def load_failed(state_dir: Path) -> set[str]:
    """The revisions recorded by :func:`save_failed` (none when there is no readable record)."""
    try:
        data = json.loads(safefs.read_regular(state_dir / "self", FAILED_FILE))
    except (OSError, ValueError, safefs.UnsafeStateDir):
        return set()
    return {r for r in data if isinstance(r, str)} if isinstance(data, list) else set()


def save_failed(state_dir: Path, revisions: set[str]) -> None:
    """Record the revisions the poll must not try again (``STATE_DIR/self/failed.json``);
    a failure to write is logged, never raised."""
    try:
        folder = safefs.ensure_dirs(state_dir, "self")
        safefs.write_atomic(folder, FAILED_FILE, json.dumps(sorted(revisions)[-100:]).encode())
    except (OSError, safefs.UnsafeStateDir) as exc:
        log.warning("cannot record the supervise versions that failed: %s", exc)


def boot_file(state_dir: Path) -> Path:
    """The guard (:mod:`upgrade_boot`) of *this* version, copied to ``STATE_DIR/self`` (named
    by its hash: each version's own guard stays as it was)."""
    data = Path(__file__).with_name("upgrade_boot.py").read_bytes()  # read, not imported: it runs elsewhere
    folder = safefs.ensure_dirs(state_dir, "self")
    name = f"boot-{hashlib.sha256(data).hexdigest()[:12]}.py"
    safefs.write_atomic(folder, name, data)
    return folder / name


@dataclass
class Exec:
    """An upgrade decided: exec ``venv``'s python on the guard ``boot`` with our CLI arguments.
    ``handover`` is what the new supervise gets, ``fallback`` what the old one gets back if the
    new one fails (its ``failed.error`` filled in by the guard)."""

    venv: Path
    boot: Path
    version: str
    revision: str
    label: str
    handover: dict[str, Any]
    fallback: dict[str, Any]


def exec_new(plan: Exec, lock_fds: tuple[int, int] | None, control_fd: int | None = None,
             environ: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process (same pid) with the new supervise of ``plan``; ``lock_fds`` (the
    state lock) and ``control_fd`` (the control socket, listening) stay open across the exec.
    Never returns: if the new one cannot be exec'd, this version is exec'd again, told why."""
    env = dict((ORIGINAL_ENV or os.environ) if environ is None else environ)
    keep = list(lock_fds or ())
    for fd in [*keep, control_fd]:
        if fd is not None:
            os.set_inheritable(fd, True)
    handover = {**plan.handover, "lock": keep or None, "control": control_fd, "exec_at": time.monotonic()}
    fallback = {**plan.fallback, "lock": keep or None, "control": control_fd}
    old_argv = [sys.executable, *sys.orig_argv[1:]]
    env[ENV_HANDOVER] = json.dumps(handover)
    env[ENV_BOOT] = json.dumps({"fallback": old_argv, "handover": json.dumps(fallback),
                                "keep_fds": [*keep, *([control_fd] if control_fd is not None else [])],
                                "deadline": READY_DEADLINE})
    python = str(plan.venv / "bin" / "python")
    argv = [python, "-P", str(plan.boot), *sys.argv[1:]]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    try:
        os.execve(python, argv, env)
    except OSError as exc:  # nothing was replaced: the old one starts again and says why
        fallback.setdefault("failed", {})["error"] = f"cannot exec {python}: {exc.strerror or exc}"
        env[ENV_HANDOVER] = json.dumps(fallback)
        env.pop(ENV_BOOT, None)
        os.execve(old_argv[0], old_argv, env)
    raise AssertionError("unreachable")  # pragma: no cover
