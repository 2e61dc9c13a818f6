"""What runs, on disk: ``STATE_DIR/state/NAME.json``, so a restarted supervisor adopts it.

Each file records, per replica, the pid with psutil's ``create_time`` (a pid alone is not an
identity: pids are reused), the process group, the version and folder it runs, its output FIFO
and restart count; and for the service a fingerprint of what the processes were made of. No
environment value is written (they may be secrets): the fingerprint is a hash.

Writes are atomic (temporary file + rename), so a supervisor killed mid-write leaves the last
complete record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

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
        elif name == "source":
            value = value.describe()
        data[name] = value
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def save(state_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Write the record of service ``name`` atomically (0600)."""
    folder = state_dir_of(state_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, separators=(",", ":"))
    os.replace(tmp, path)


def remove(state_dir: Path, name: str) -> None:
    """Forget service ``name``'s record (a missing one is fine)."""
    try:
        (state_dir_of(state_dir) / f"{name}.json").unlink()
    except FileNotFoundError:
        pass


def load_all(state_dir: Path, unreadable: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Every readable record, by service name. A record that cannot be read or parsed is
    left out and, when ``unreadable`` is given, put there with the reason (callers must not
    take a missing record for "nothing runs")."""
    records: dict[str, dict[str, Any]] = {}
    folder = state_dir_of(state_dir)
    if not folder.is_dir():
        return records
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            records[path.stem] = record
        except (OSError, ValueError) as exc:
            if unreadable is not None:
                unreadable[path.stem] = f"{path}: {exc}"
    return records


def build_record_path(state_dir: Path, name: str) -> Path:
    """``STATE_DIR/state/builds/NAME.json``: a build under way (pid, pgid, create_time)."""
    return state_dir_of(state_dir) / "builds" / f"{name}.json"


def save_build(state_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Record that a build of ``name`` runs, so a supervisor killed meanwhile is followed by
    one that stops it before building again in the same folder."""
    path = build_record_path(state_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def remove_build(state_dir: Path, name: str) -> None:
    """Forget the build record of ``name``."""
    try:
        build_record_path(state_dir, name).unlink()
    except FileNotFoundError:
        pass


def load_builds(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Every build record left behind, by service name."""
    folder = state_dir_of(state_dir) / "builds"
    out: dict[str, dict[str, Any]] = {}
    if folder.is_dir():
        for path in folder.glob("*.json"):
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return out
