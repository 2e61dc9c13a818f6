"""Local folder sources: run in place; the revision is a content hash of the folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from stat import S_ISREG
from typing import Iterable

#: Folders never hashed or watched: VCS data, caches, virtual environments, our state.
IGNORED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv",
                          ".supervise", ".tox", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
#: Files larger than this are hashed by size and mtime instead of content.
LARGE_FILE = 8 * 1024 * 1024


def content_hash(root: Path, exclude: Iterable[Path] = ()) -> str:
    """40 hex digits (sha1) over the relative paths and contents of every file below ``root``.

    Skips IGNORED_DIRS and the folders in ``exclude`` (e.g. the state dir). Unreadable files,
    FIFOs, sockets and devices count by name only (never opened for reading, so never waited
    on). Symlinks are hashed as their target text, not followed.
    """
    excluded = {Path(p).resolve() for p in exclude}
    digest = hashlib.sha1()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS and (Path(folder) / d).resolve() not in excluded)
        for name in sorted(files):
            path = Path(folder) / name
            rel = os.path.relpath(path, root)
            digest.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            try:
                if path.is_symlink():
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
