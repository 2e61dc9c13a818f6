"""Where a service's code comes from: a local folder (``path``), a git repository (``git``) or
a package index (``pip``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ...observe import safefs


class SourceError(Exception):
    """A source cannot be read: unreachable remote, unknown ref, missing folder. The message
    is meant for the user and never contains credentials embedded in a URL."""


def prune_versions(versions: Path, keep: int, protect: set[str]) -> list[str]:
    """Remove the folders in ``versions`` beyond the ``keep`` newest (by mtime), never one whose
    name is in ``protect``; returns the names removed (``keep_versions``: git worktrees and pip
    venvs alike). Nothing is removed unless ``versions`` is a real folder of ours (safefs's
    check: a symlink planted there never makes us delete someone else's folders), and an entry
    that is not a real folder (a symlink, a file) is left alone."""
    try:
        safefs.check_own_dir(versions)
    except safefs.UnsafeStateDir:
        return []
    folders = []
    for entry in os.scandir(versions):
        if entry.is_dir(follow_symlinks=False):
            folders.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
    folders.sort(reverse=True)
    removed = []
    for _, name in folders[keep:]:
        if name in protect:
            continue
        shutil.rmtree(versions / name, ignore_errors=True)
        removed.append(name)
    return removed
