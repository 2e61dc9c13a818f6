"""Local folder sources: the revision is a content hash of the folder, and each revision a
service runs is an immutable snapshot of it under STATE_DIR (as a git worktree is of a commit).

Layout under ``STATE_DIR/sources/NAME/``: ``versions/REV12/`` (one copy of the folder per
content hash, REV12 its first 12 hex digits). A snapshot is copied into a temporary folder
beside the others, hashed, then renamed to its hash: a folder named ``REV12`` is always
complete and always holds exactly that content, so status names what runs and a rollback runs
the previous files. What is copied (README, "Local folders"):

- every regular file, folder and symlink (symlinks copied as links, never followed);
- not VCS data and caches (:data:`SKIPPED_DIRS`: ``.git``, ``__pycache__``, ...), nor the state
  dir, nor FIFOs, sockets and devices;
- not heavy dependency folders (:data:`LINKED_DIRS`: ``.venv``, ``venv``, ``node_modules``):
  the snapshot has a symlink to the live folder's one instead, so ``.venv/bin/python`` still
  runs; these are shared by every version (a rollback does not restore them).

``mode = "in-place"`` runs the live folder itself (edit-and-restart loops): no snapshot, and so
no rollback.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path
from stat import S_ISREG
from typing import Iterable

from . import SourceError, prune_versions
from ...observe import safefs

#: Folders never copied, hashed or watched: VCS data and caches, our state.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".supervise", ".tox", ".mypy_cache",
                          ".pytest_cache", ".ruff_cache"})
#: Dependency folders not copied into a snapshot but linked to the live folder's (shared).
LINKED_DIRS = frozenset({"node_modules", ".venv", "venv"})
#: Folders never hashed or watched: both of the above.
IGNORED_DIRS = SKIPPED_DIRS | LINKED_DIRS
#: The name of a snapshot folder: the first 12 hex digits of its content hash.
_SNAPSHOT_NAME = re.compile(r"^[0-9a-f]{12}$")
#: Files larger than this are hashed by size and mtime instead of content.
LARGE_FILE = 8 * 1024 * 1024


def content_hash(root: Path, exclude: Iterable[Path] = ()) -> str:
    """40 hex digits (sha1) over the relative paths and contents of every file below ``root``.

    Skips IGNORED_DIRS and the folders in ``exclude`` (e.g. the state dir), and FIFOs, sockets
    and devices (never opened, so never waited on; a snapshot does not copy them either, so a
    folder and its snapshot hash alike). Unreadable files count by name only. Symlinks are
    hashed as their target text, not followed.
    """
    excluded = {Path(p).resolve() for p in exclude}
    digest = hashlib.sha1()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS and (Path(folder) / d).resolve() not in excluded)
        for name in sorted(files):
            path = Path(folder) / name
            rel = os.path.relpath(path, root)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                continue
            digest.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            try:
                if stat.S_ISLNK(mode):
                    digest.update(os.readlink(path).encode("utf-8", "surrogateescape"))
                    continue
                # O_NONBLOCK and fstat: a FIFO or a socket a service made in its folder (or a
                # device) counts by name only; opening a FIFO blocking would wait for a writer
                # forever, and with it the build and supervise's own exit.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
                with open(fd, "rb") as f:
                    info = os.fstat(fd)
                    if not S_ISREG(info.st_mode):
                        continue
                    if info.st_size > LARGE_FILE:
                        digest.update(f"{info.st_size}:{info.st_mtime_ns}".encode())
                        continue
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError:
                continue
            digest.update(b"\0")
    return digest.hexdigest()


class FolderSource:
    """Snapshots of the local folder ``path`` under ``root`` (``STATE_DIR/sources/NAME``).
    Blocking: run in a thread. ``state_dir`` is never copied (it may live in the folder)."""

    def __init__(self, path: Path, root: Path, state_dir: Path):
        self.path = path
        self.root = root
        self.versions = root / "versions"
        self.state_dir = state_dir

    def folder(self, revision: str) -> Path:
        """The snapshot folder of ``revision`` (its first 12 digits). Raises SourceError for
        a revision that is not a hash (names are checked before they become paths)."""
        name = revision[:12]
        if not _SNAPSHOT_NAME.match(name):
            raise SourceError(f"bad snapshot name {name!r}")
        return self.versions / name

    def snapshot(self) -> tuple[Path, str]:
        """Copy the folder now: ``(snapshot folder, content hash)``. An identical snapshot
        already on disk is reused (its mtime refreshed: pruning keeps the newest). The copy is
        hashed again, so a file edited during the copy never gives a snapshot whose name is
        not its content. Raises SourceError (a missing folder, a full disk)."""
        if not self.path.is_dir():
            raise SourceError(f"source folder {self.path} does not exist")
        safefs.ensure_dirs(self.root.parent, self.root.name, "versions")
        # Unchanged content (a restart for a config change, a reload) reuses its snapshot
        # without copying: hashing reads the files, a copy also writes them.
        revision = content_hash(self.path, [self.state_dir])
        existing = self.folder(revision)
        if existing.is_dir() and not existing.is_symlink():
            os.utime(existing)
            return existing, revision
        temp = self.versions / f".new-{os.urandom(6).hex()}"
        try:
            copy_folder(self.path, temp, [self.state_dir])
            revision = content_hash(temp)
            final = self.folder(revision)
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
                os.utime(final)
            else:
                os.rename(temp, final)
        except (OSError, shutil.Error) as exc:
            shutil.rmtree(temp, ignore_errors=True)
            raise SourceError(f"cannot snapshot {self.path}: {_first_error(exc)}") from None
        return final, revision

    def on_disk(self) -> list[str]:
        """The snapshot names (REV12) on disk, newest first."""
        if not self.versions.is_dir():
            return []
        found = [p for p in self.versions.iterdir() if _SNAPSHOT_NAME.match(p.name) and not p.is_symlink()]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Remove snapshots beyond the ``keep`` newest, never those in ``protect`` (12-digit
        prefixes), and any copy an interrupted snapshot left. Returns the removed names."""
        try:  # only a real folder of ours: a symlink planted as versions/ is never pruned through
            safefs.check_own_dir(self.versions)
        except safefs.UnsafeStateDir:
            return []
        for leftover in self.versions.glob(".new-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a symlink entry: refused by rmtree, left
        return prune_versions(self.versions, keep, protect)


def copy_folder(source: Path, target: Path, exclude: Iterable[Path] = ()) -> None:
    """Copy ``source`` to the new folder ``target`` (shutil.copytree, symlinks copied as links):
    no :data:`SKIPPED_DIRS`, no folder in ``exclude``, no FIFO, socket or device; each of
    :data:`LINKED_DIRS` becomes an absolute symlink to the live one. Raises OSError or
    shutil.Error."""
    excluded = {Path(p).resolve() for p in exclude}
    links: list[tuple[Path, Path]] = []
    top = source.resolve()

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set()
        for name in names:
            path = Path(folder) / name
            try:
                info = os.lstat(path)
            except OSError:
                skipped.add(name)
                continue
            if stat.S_ISDIR(info.st_mode):
                if name in SKIPPED_DIRS or path.resolve() in excluded:
                    skipped.add(name)
                elif name in LINKED_DIRS:
                    skipped.add(name)
                    links.append((path, target / path.relative_to(top)))
            elif not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
                skipped.add(name)
        return skipped

    shutil.copytree(top, target, symlinks=True, ignore=ignore)
    for live, link in links:
        os.symlink(live, link)
    for folder, _dirs, _files in os.walk(target):  # folders in STATE_DIR are 0700 (safefs)
        os.chmod(folder, 0o700, follow_symlinks=False)


def _first_error(exc: BaseException) -> str:
    """One line for an OSError or shutil.Error (which holds a list of (src, dst, why))."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        src, _dst, why = exc.args[0][0]
        return f"{src}: {why}"
    return str(exc)
