"""From a source to a versioned artifact: fetch (git), resolve and install (pip) or hash
(folder), then run the build.

An :class:`Artifact` is a folder the replicas run in plus its version,
``REVISION12-BUILDHASH8``. A git source builds in a fresh worktree per commit, so a build never
disturbs the folder the running version uses; a successful build of a version is remembered
(``STATE_DIR/sources/NAME/built/VERSION``) and not repeated. A local folder is copied
into a snapshot per content hash (``sources/path.py``) and builds there; one with
``mode = "in-place"`` builds in place. A
pip source's revision is the package version pip resolves (kept whole: ``1.10-BUILDHASH8``), and
each version is installed into its own venv (``sources/pip.py``), the folder its replicas run in.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .. import logs, procs
from ...observe import safefs, state
from ...desired.environ import replica_env
from ...desired.model import ServiceSpec, Version
from ..sources import SourceError
from ..sources.git import GitSource
from ..sources.path import FolderSource, content_hash
from ..sources.pip import PipSource, venv_env

log = logging.getLogger("supervise")

#: How many of the build's last output lines a build-failed report carries.
TAIL_LINES = 10


@dataclass(frozen=True)
class Artifact:
    """A ready-to-run version: ``workdir`` (absolute) and ``version``."""

    workdir: Path
    version: str
    revision: str


class PrepareError(Exception):
    """Fetching or building failed. ``stage`` is ``"fetch"`` or ``"build"``; ``tail`` holds the
    build's last output lines (bytes decoded with replacement)."""

    def __init__(self, stage: str, message: str, version: str | None = None, tail: list[str] | None = None):
        super().__init__(message)
        self.stage = stage
        self.version = version
        self.tail = tail or []


def make_version(revision: str, spec: ServiceSpec) -> str:
    """``REVISION12-BUILDHASH8``: what a build is of (see :class:`~supervisor.desired.model.Version`). A
    package version (pip source) is kept whole: ``1.0.10`` and ``1.0.1`` must not fold into one."""
    if spec.source.kind == "pip":
        return str(Version(revision, spec.build_hash[:8]))
    return str(Version.of(revision, spec.build_hash))


def source_root(state_dir: Path, service: str) -> Path:
    """``STATE_DIR/sources/NAME``: the bare repository and version worktrees of a git source."""
    return state_dir / "sources" / service


async def fast_forward(state_dir: Path, spec: ServiceSpec, old: str, new: str) -> bool:
    """For a git source: is commit ``old`` an ancestor of ``new`` in the service's fetched
    repository (git's ``merge-base --is-ancestor``)? False means ``new`` was force-pushed.
    True for other sources, and when git cannot tell (a timeout is not a force push)."""
    if spec.source.kind != "git":
        return True
    source = GitSource(spec.source, source_root(state_dir, spec.name))
    try:
        return await asyncio.to_thread(source.is_ancestor, old, new)
    except SourceError as exc:
        log.warning("%s: %s", spec.name, exc)
        return True


class Preparer:
    """Turns a ServiceSpec into an Artifact. Git and hashing run in threads; builds run as
    process groups through the supervisor's reaper (so a shutdown can stop them)."""

    def __init__(self, state_dir: Path, reaper: procs.Reaper | None, logs_: logs.LogRegistry,
                 keep_versions: int = 3):
        self.state_dir = state_dir
        self.logs = logs_
        self.reaper = reaper
        self.keep_versions = keep_versions
        self.builds: dict[str, procs.ProcessHandle] = {}
        self.last_build_end: dict[str, float] = {}  # monotonic seconds, by service

    async def resolve(self, spec: ServiceSpec) -> tuple[Path, str]:
        """Fetch/hash the source: (folder to build and run in, revision). Raises PrepareError."""
        source = spec.source
        if source.kind == "git":
            git_source = GitSource(source, source_root(self.state_dir, spec.name))
            try:
                commit = await asyncio.to_thread(git_source.fetch)
                workdir = await asyncio.to_thread(git_source.checkout, commit)
            except SourceError as exc:
                raise PrepareError("fetch", str(exc)) from None
            return workdir, commit
        if source.kind == "pip":
            try:
                pip = PipSource(source, source_root(self.state_dir, spec.name))
                version = await asyncio.to_thread(pip.latest)
                return pip.venv(version), version
            except (SourceError, ValueError) as exc:
                raise PrepareError("fetch", str(exc)) from None
        if source.kind != "path":
            raise PrepareError("fetch", f"{source.describe()}: this source runs as a container, which this "
                               "supervisor cannot run yet")
        assert source.path is not None
        if not source.path.is_dir():
            raise PrepareError("fetch", f"source folder {source.path} does not exist")
        if not source.in_place:  # an immutable copy per content hash (sources/path.py)
            folder = FolderSource(source.path, source_root(self.state_dir, spec.name), self.state_dir)
            try:
                return await asyncio.to_thread(folder.snapshot)
            except (SourceError, safefs.UnsafeStateDir) as exc:
                raise PrepareError("fetch", str(exc)) from None
        if not spec.watch:
            # Without watch globs nothing follows the folder's contents, and hashing a large
            # folder (often the config's own) costs seconds: name the version by the folder.
            return source.path, hashlib.sha1(str(source.path).encode()).hexdigest()
        revision = await asyncio.to_thread(content_hash, source.path, [self.state_dir])
        return source.path, revision

    async def prepare(self, spec: ServiceSpec, protect: set[str] = frozenset()) -> Artifact:  # type: ignore[assignment]
        """Fetch and build ``spec``; raises PrepareError. ``protect``: versions to keep on disk."""
        workdir, revision = await self.resolve(spec)
        version = make_version(revision, spec)
        if spec.user and (spec.source.kind == "git" or (spec.source.kind == "path" and not spec.source.in_place)):
            # a checkout or snapshot is ours, in STATE_DIR: hand it to the service's user, as a
            # checkout by that user would be, so its build and replicas may write there
            await asyncio.to_thread(_give_to, workdir, spec.user)
        versioned = spec.source.kind in ("git", "pip") or (spec.source.kind == "path" and not spec.source.in_place)
        if spec.source.kind == "pip":
            await self.install(spec, revision, version)
        marker = source_root(self.state_dir, spec.name) / "built" / version if spec.build else Path()
        if spec.build and not (versioned and marker.exists()):
            await self.build(spec, workdir, version)
            if versioned:
                safefs.ensure_dirs(marker.parent.parent, "built")
                safefs.write_atomic(marker.parent, marker.name, b"")
        if spec.source.in_place and spec.watch and spec.build:
            # A watched folder's revision is its content *after* the build: the build's own
            # output (a stamp, a bundle) then never looks like an edit to rebuild for.
            revision = await asyncio.to_thread(content_hash, workdir, [self.state_dir])
            version = make_version(revision, spec)
        if versioned:  # (a folder run in place keeps no versions: nothing to prune, no thread)
            await asyncio.to_thread(self.prune, spec, protect | {version})
        return Artifact(workdir=workdir, version=version, revision=revision)

    def prune(self, spec: ServiceSpec, protect: set[str]) -> list[str]:
        """Keep ``keep_versions`` versions of ``spec``'s source on disk (git worktrees, pip
        venvs, folder snapshots), never one of the versions in ``protect`` (what runs, what
        is good, what is pinned); the build markers of removed ones go too (a version checked
        out again is built again). Blocking. Returns the removed folder names."""
        root = source_root(self.state_dir, spec.name)
        source = spec.source
        removed: list[str] = []
        if source.kind == "git":
            keep = {Version.parse(v).revision for v in protect}
            removed = GitSource(source, root).prune(self.keep_versions, keep)
        elif source.kind == "pip":
            keep = {v.rsplit("-", 1)[0] for v in protect}
            removed = PipSource(source, root).prune(self.keep_versions, keep)
        elif source.kind == "path" and source.path is not None and not source.in_place:
            keep = {Version.parse(v).revision for v in protect}
            removed = FolderSource(source.path, root, self.state_dir).prune(self.keep_versions, keep)
        built = root / "built"
        for name in removed:
            for marker in built.glob(f"{glob.escape(name)}-*") if built.is_dir() else ():
                safefs.unlink_in(built, marker.name)
        return removed

    async def install(self, spec: ServiceSpec, package_version: str, version: str) -> None:
        """Make the venv of ``package_version`` (a pip source) unless it is complete; pip's
        output goes to the service log. Raises PrepareError (stage "fetch")."""
        pip = PipSource(spec.source, source_root(self.state_dir, spec.name))
        if pip.installed(package_version):
            return
        try:  # the venv's folder, pip's cache and temp: made and checked in STATE_DIR (safefs)
            steps, env = pip.install_steps(package_version), pip.pip_env()
        except OSError as exc:
            raise PrepareError("fetch", str(exc)) from None
        for argv in steps:
            await self.build(spec, self.state_dir, version, argv=argv, stage="fetch", what="install", extra_env=env)
        try:
            pip.mark_installed(package_version)
        except OSError as exc:
            raise PrepareError("fetch", f"cannot mark {package_version} installed: {exc}") from None

    async def build(self, spec: ServiceSpec, workdir: Path, version: str, argv: list[str] | None = None,
                    stage: str = "build", what: str = "build", extra_env: Mapping[str, str] | None = None) -> None:
        """Run the build argv (or ``argv``) in ``workdir``, output appended to the service log;
        ``extra_env`` is added to its environment (pip's cache and temp folders for an install).
        A failure raises PrepareError(``stage``) with the last output lines."""
        argv = argv or list(spec.build or ())
        assert argv
        sink = self.logs.sink(spec.name)
        sink.note(f"{what} {version}: {' '.join(argv)}")
        env = replica_env(spec.name, spec.environment, 0, user=spec.user)
        env.pop("REPLICA", None)
        if spec.source.kind == "pip" and stage == "build":  # a build step sees the version's venv
            env.update(venv_env(workdir, env))
        env.update(extra_env or {})
        cwd = workdir  # builds run at the top of the checkout (or the local folder)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        tail = _Tail(sink)
        sink.last_build_line = ""
        try:
            if self.reaper is None:
                raise PrepareError("build", "no process reaper")
            if spec.user:  # the build runs as the service's user, like its replicas
                safefs.check_not_writable_by(self.state_dir, spec.user)
            handle = procs.spawn(self.reaper, argv, env=env, cwd=cwd, output=write_fd, user=spec.user,
                                 tag=procs.state_tag(self.state_dir))
        except (procs.SpawnError, OSError) as exc:
            os.close(read_fd)
            raise PrepareError(stage, str(exc), version) from None
        finally:
            os.close(write_fd)
        pump = logs.Pump(asyncio.get_running_loop(), read_fd, tail)
        self.builds[spec.name] = handle
        try:
            state.save_build(self.state_dir, spec.name, {"pid": handle.pid, "pgid": handle.pgid, "instance": handle.instance,
                                                         "create_time": handle.create_time, "version": version})
        except OSError as exc:  # a full disk must not orphan the build: it still runs, tracked here
            sink.note(f"cannot record the build: {exc}")
        try:
            exit = await asyncio.shield(handle.exited)
        except asyncio.CancelledError:
            await procs.stop(handle, spec.stop_signal, 5.0, self.reaper)
            pump.close()
            raise
        finally:
            self.builds.pop(spec.name, None)
            self.last_build_end[spec.name] = time.monotonic()
            state.remove_build(self.state_dir, spec.name)
        if procs.group_alive(handle.pgid):  # background processes a build left behind
            await procs.stop(handle, spec.stop_signal, 5.0, self.reaper)
        elif self.reaper is not None:
            self.reaper.untrack_group(handle.pgid)
        try:
            await asyncio.wait_for(asyncio.shield(pump.done), 5.0)
        except asyncio.TimeoutError:  # something still holds the pipe: stop reading it
            pump.close()
        if not exit.success:
            sink.note(f"{what} {version} failed: {exit}")
            raise PrepareError(stage, f"{what} failed ({exit})", version, tail.last())
        sink.note(f"{what} {version} succeeded")


def _give_to(workdir: Path, user: str) -> None:
    """Hand a fresh git worktree (ours, in STATE_DIR) to the service's ``user`` so its build
    can write there, as a checkout by that user would be. Symlinks are changed themselves,
    never followed; done once (the top folder's owner says it was)."""
    uid, gids = safefs.user_ids(user)
    entry_gid = procs.user_identity(user)["group"]
    if os.lstat(workdir).st_uid == uid:
        return
    for root, dirs, files in os.walk(workdir, followlinks=False):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, entry_gid, follow_symlinks=False)
    os.chown(workdir, uid, entry_gid, follow_symlinks=False)


class _Tail:
    """A sink wrapper that remembers the build's last non-empty output lines."""

    def __init__(self, sink: logs.LogSink):
        self.sink = sink
        self.policy = sink.policy
        self.lines: deque[bytes] = deque(maxlen=TAIL_LINES)

    def write(self, data: bytes, source: int | None = None, label: str | None = None) -> None:
        self.sink.write(data, label=label)
        self.lines.extend(line for line in data.split(b"\n") if line.strip())
        if self.lines:
            self.sink.last_build_line = self.lines[-1][:200].decode("utf-8", "replace").strip()

    def last(self) -> list[str]:
        return [line.decode("utf-8", "replace") for line in self.lines]
