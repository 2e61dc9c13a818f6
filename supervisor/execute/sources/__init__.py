"""Where a service's code comes from: a local folder (``path``), a git repository (``git``) or
a package index (``pip``)."""

from __future__ import annotations

import shutil
from pathlib import Path


class SourceError(Exception):
    """A source cannot be read: unreachable remote, unknown ref, missing folder. The message
    is meant for the user and never contains credentials embedded in a URL."""


def prune_versions(versions: Path, keep: int, protect: set[str]) -> list[str]:
    """Remove the folders in ``versions`` beyond the ``keep`` newest (by mtime), never one whose
    name is in ``protect``; returns the names removed (``keep_versions``: git worktrees and pip
    venvs alike)."""
    if not versions.is_dir():
        return []
    folders = sorted(versions.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for folder in folders[keep:]:
        if folder.name in protect:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed
