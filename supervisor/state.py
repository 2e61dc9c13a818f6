"""What runs, on disk: ``STATE_DIR/state/NAME.json``, so a restarted supervisor adopts it.

Each file records, per replica, the pid with psutil's ``create_time`` (a pid alone is not an
identity: pids are reused), the process group, the version and folder it runs, its output FIFO
and restart count; and for the service a fingerprint of what the processes were made of. No
environment value is written (they may be secrets): the fingerprint is a hash.

Writes are atomic (an O_EXCL temporary file with a random name + rename; nothing is
opened through a symlink: see safefs), so a supervisor killed mid-write leaves the last
complete record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import safefs
from .model import ServiceSpec
from .plan import RESTART_FIELDS


def state_dir_of(state_dir: Path) -> Path:
    """``STATE_DIR/state``, where the per-service records live."""
    return state_dir / "state"


def fingerprint(spec: ServiceSpec) -> str:
    """sha256 over the fields whose change means new processes (plan.RESTART_FIELDS)."""
    data = {}
    for name in RESTART_FIELDS:
        value = getattr(spec, name)
        if name == "environment":
            value = sorted(value.items())
        elif name == "source":  # the URL as written (a hash only): a changed token is a change
            value = f"git {value.url}@{value.ref}" if value.kind == "git" else str(value.path)
        data[name] = value
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def folder_of(state_dir: Path) -> Path:
    """``STATE_DIR/state``, created 0700 and checked (ours, not group/other writable).
    Raises safefs.UnsafeStateDir."""
    folder = state_dir_of(state_dir)
    safefs.ensure_dir(state_dir)
    return safefs.ensure_dir(folder)


def save(state_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Write the record of service ``name`` atomically (0600, O_EXCL temporary file, renamed
    within the folder's fd: a planted symlink is never followed)."""
    folder = folder_of(state_dir)
    safefs.write_atomic(folder, f"{name}.json", json.dumps(record, separators=(",", ":")).encode())


def remove(state_dir: Path, name: str) -> None:
    """Forget service ``name``'s record (a missing one is fine)."""
    safefs.unlink_in(state_dir_of(state_dir), f"{name}.json")


def _load_folder(folder: Path, unreadable: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    try:
        names = sorted(os.listdir(folder))
        safefs.check_own_dir(folder)
    except (OSError, safefs.UnsafeStateDir):
        return records
    for entry in names:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        try:
            record = json.loads(safefs.read_regular(folder, entry))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, safefs.UnsafeStateDir) as exc:
            if unreadable is not None:
                unreadable[entry[:-5]] = f"{folder / entry}: {exc}"
            continue
        records[entry[:-5]] = record
    return records


def load_all(state_dir: Path, unreadable: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Every readable record, by service name. A record that cannot be read or parsed (or is
    not a regular file of ours) is left out and, when ``unreadable`` is given, put there with
    the reason: callers must not take a missing record for "nothing runs"."""
    return _load_folder(state_dir_of(state_dir), unreadable)


def build_record_path(state_dir: Path, name: str) -> Path:
    """``STATE_DIR/state/builds/NAME.json``: a build under way (pid, pgid, create_time, instance)."""
    return state_dir_of(state_dir) / "builds" / f"{name}.json"


def save_build(state_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Record that a build of ``name`` runs, so a supervisor killed meanwhile is followed by
    one that stops it before building again in the same folder (0600, like :func:`save`)."""
    folder = safefs.ensure_dir(folder_of(state_dir) / "builds")
    safefs.write_atomic(folder, f"{name}.json", json.dumps(record).encode())


def remove_build(state_dir: Path, name: str) -> None:
    """Forget the build record of ``name``."""
    safefs.unlink_in(state_dir_of(state_dir) / "builds", f"{name}.json")


def load_builds(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Every build record left behind, by service name."""
    return _load_folder(state_dir_of(state_dir) / "builds")
