"""What runs, on disk: ``STATE_DIR/state/NAME.json``, so a restarted supervisor adopts it.

Each file records, per replica, the pid with psutil's ``create_time`` (a pid alone is not an
identity: pids are reused), the process group, the version and folder it runs, its output FIFO
and restart count; and for the service a fingerprint of what the processes were made of. No
environment value is written (they may be secrets): the fingerprint is a hash. A service with
no replica running and no hold has no file: a missing record reads as exactly that.

Writes are atomic (an O_EXCL temporary file with a random name + rename; nothing is
opened through a symlink: see safefs), so a supervisor killed mid-write leaves the last
complete record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import safefs
from ..desired.model import ServiceSpec
from ..decide.plan import RESTART_FIELDS


class RecordError(ValueError):
    """A state record (or one replica entry of it) does not have the shape a supervisor
    writes; the message says which field is wrong."""


#: The replica fields the engine writes; every other key of a replica entry belongs to the
#: executor that ran it (pid/pgid/create_time/fifo/cgroup/instance for a process, the
#: container id for a container).
REPLICA_FIELDS = ("version", "revision", "workdir", "started_at", "restarts", "fingerprint", "runtime")


def _text(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RecordError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _number(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{key}: expected a number, got {type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class ReplicaRecord:
    """One running replica as a later supervisor needs it to adopt it.

    ``version`` is the artifact's version string, ``revision`` its source revision (derived
    from ``version`` when an older record lacks it), ``workdir`` the folder it runs in,
    ``started_at`` seconds since the epoch (None: unknown), ``restarts`` its restart count,
    ``fingerprint`` :func:`fingerprint` of the spec it was started from, ``runtime`` the
    executor that runs it (``"local"`` in records written before there was a choice) and
    ``handle`` that executor's own fields (what :meth:`Executor.record` returned).
    """

    version: str
    workdir: Path
    revision: str = ""
    started_at: float | None = None
    restarts: int = 0
    fingerprint: str = ""
    runtime: str = "local"
    handle: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: object) -> "ReplicaRecord":
        """Parse one replica entry as written by :meth:`to_dict` (or by an older supervise,
        whose entries have the same flat shape). Raises :class:`RecordError`."""
        if not isinstance(data, dict):
            raise RecordError(f"a replica entry must be a JSON object, got {type(data).__name__}")
        version = _text(data, "version")
        workdir = _text(data, "workdir")
        if not workdir or "\0" in workdir:
            raise RecordError("workdir: empty or holds a NUL character")
        revision = data.get("revision") or ""
        if not isinstance(revision, str):
            raise RecordError("revision: expected a string")
        started = data.get("started_at")
        if started is not None:
            started = _number(data, "started_at", 0.0)
        restarts = data.get("restarts", 0)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
            raise RecordError("restarts: expected a count")
        fingerprint = data.get("fingerprint") or ""
        runtime = data.get("runtime") or "local"
        if not isinstance(fingerprint, str) or not isinstance(runtime, str):
            raise RecordError("fingerprint/runtime: expected strings")
        handle = {k: v for k, v in data.items() if k not in REPLICA_FIELDS}
        return cls(version=version, workdir=Path(workdir), revision=revision, started_at=started,
                   restarts=restarts, fingerprint=fingerprint, runtime=runtime, handle=handle)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object on disk: the executor's fields beside the engine's."""
        out: dict[str, Any] = dict(self.handle)
        out.update(version=self.version, revision=self.revision, workdir=str(self.workdir),
                   started_at=self.started_at, restarts=self.restarts, fingerprint=self.fingerprint)
        if self.runtime != "local":  # older supervise wrote none: the on-disk format stays theirs
            out["runtime"] = self.runtime
        return out


@dataclass(frozen=True)
class Failure:
    """What failed, kept so that a later supervisor does not try it again: a replica that hit
    its start limit (phase ``failed``), or a new version (or config) rolled back. ``fingerprint``
    is the key of the spec it failed with (:func:`failed_key` for a start limit,
    :func:`fingerprint` for a rollback; a changed spec tries again, as a changed unit clears
    systemd's ``failed``), ``version``, ``revision`` and ``workdir`` what it ran, ``message`` why."""

    fingerprint: str
    version: str = ""
    revision: str = ""
    workdir: str = ""
    message: str = ""

    @classmethod
    def from_dict(cls, data: object) -> "Failure":
        """Parse one entry of a record's ``failed``. Raises :class:`RecordError`."""
        if not isinstance(data, dict):
            raise RecordError(f"a failed entry must be a JSON object, got {type(data).__name__}")
        fields = {key: _text(data, key, "") for key in ("fingerprint", "version", "revision", "workdir", "message")}
        if not fields["fingerprint"] or "\0" in fields["workdir"]:
            raise RecordError("failed: no fingerprint, or a NUL in workdir")
        return cls(**fields)

    def to_dict(self) -> dict[str, str]:
        return {"fingerprint": self.fingerprint, "version": self.version, "revision": self.revision,
                "workdir": self.workdir, "message": self.message[:500]}


@dataclass(frozen=True)
class CompletedReplica:
    """A replica whose process exited and whose restart policy says not to start it again
    (phase ``exited``: a one-shot job such as a migration), as a later supervisor needs it to
    keep it exited instead of running the job again. ``key`` is :func:`completed_key` of the
    spec it ran with (a changed spec runs it again, as while the supervisor runs), ``code`` /
    ``signal`` its exit status (both None: unknown), ``at`` when it exited (seconds since the
    epoch), ``version``/``revision``/``workdir`` what it ran."""

    key: str
    code: int | None = None
    signal: int | None = None
    at: float | None = None
    version: str = ""
    revision: str = ""
    workdir: str = ""

    @classmethod
    def from_dict(cls, data: object) -> "CompletedReplica":
        """Parse one entry of a record's ``completed``. Raises :class:`RecordError`."""
        if not isinstance(data, dict):
            raise RecordError(f"a completed entry must be a JSON object, got {type(data).__name__}")
        texts = {key: _text(data, key, "") for key in ("key", "version", "revision", "workdir")}
        if not texts["key"] or "\0" in texts["workdir"]:
            raise RecordError("completed: no key, or a NUL in workdir")
        status: dict[str, int | None] = {}
        for name in ("code", "signal"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RecordError(f"completed: {name}: expected a number")
            status[name] = value
        at = data.get("at")
        return cls(key=texts["key"], code=status["code"], signal=status["signal"],
                   at=_number(data, "at", 0.0) if at is not None else None,
                   version=texts["version"], revision=texts["revision"], workdir=texts["workdir"])

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "code": self.code, "signal": self.signal, "at": self.at,
                "version": self.version, "revision": self.revision, "workdir": self.workdir}


@dataclass(frozen=True)
class ServiceRecord:
    """``STATE_DIR/state/NAME.json``: a service's replicas (by index), whether a user stop
    holds it, and what is needed to stop replicas of a service no longer in the file
    (``command`` for display, ``stop_signal`` a signal number, ``stop_timeout`` seconds).
    ``invalid`` lists the replica entries that could not be parsed (index: reason); they are
    never adopted. ``good`` holds the versions that proved good (oldest first), each as
    ``(version, revision, workdir)``, so a later supervisor still knows what to roll back to;
    ``pinned`` the version ``supervise rollback`` pinned ("" when none) and ``pinned_over`` the
    newest revision the source showed then (not deployed again while the pin holds);
    ``failed`` the replicas (by index) that hit their start limit, so that they stay failed
    across a supervisor restart while the spec is unchanged (:meth:`still_failed`);
    ``rolled_back`` the version an automatic rollback took back (not deployed again until the
    file or the source changes: :meth:`still_rolled_back`);
    ``completed`` the replicas (by index) that exited for good (:class:`CompletedReplica`), so
    that a one-shot job is not run again by the next supervisor while its spec is unchanged."""

    service: str
    held: bool = False
    replicas: Mapping[int, ReplicaRecord] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    stop_signal: int = 15
    stop_timeout: float = 10.0
    invalid: Mapping[str, str] = field(default_factory=dict)
    good: tuple[tuple[str, str, str], ...] = ()
    pinned: str = ""
    pinned_over: str = ""
    failed: Mapping[int, Failure] = field(default_factory=dict)
    rolled_back: Failure | None = None

    def still_rolled_back(self, fingerprint: str) -> Failure | None:
        """The rolled-back version, if the service's spec (:func:`fingerprint`) is still the
        one it failed with: a changed service in the file deploys again, as while running."""
        mark = self.rolled_back
        return mark if mark is not None and mark.fingerprint == fingerprint else None

    def still_failed(self, fingerprint: str, slots: int) -> dict[int, Failure]:
        """The replicas that stay failed for a service whose spec now has ``fingerprint``
        (:func:`failed_key`) and
        ``slots`` replicas: those that failed with that very spec (systemd keeps a unit
        ``failed`` until ``reset-failed`` or a changed unit), within the replica count."""
        return {i: f for i, f in self.failed.items() if f.fingerprint == fingerprint and i < slots}
    completed: Mapping[int, CompletedReplica] = field(default_factory=dict)

    def still_completed(self, key: str, slots: int) -> dict[int, CompletedReplica]:
        """The replicas that stay exited for a service whose spec now has ``key``
        (:func:`completed_key`) and ``slots`` replicas: those that exited with that very spec."""
        return {i: c for i, c in self.completed.items() if c.key == key and i < slots}

    @classmethod
    def from_dict(cls, data: object, name: str = "") -> "ServiceRecord":
        """Parse a record; a bad replica entry is set aside in ``invalid``, a bad record as a
        whole raises :class:`RecordError`."""
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        service = data.get("service", name)
        if not isinstance(service, str):
            raise RecordError("service: expected a string")
        held = data.get("held", False)
        if not isinstance(held, bool):
            raise RecordError("held: expected true or false")
        raw = data.get("replicas", {})
        if not isinstance(raw, dict):
            raise RecordError("replicas: expected a JSON object")
        replicas: dict[int, ReplicaRecord] = {}
        invalid: dict[str, str] = {}
        for key, item in raw.items():
            try:
                if not (isinstance(key, str) and key.isdigit() and len(key) < 7):
                    raise RecordError("the replica index must be a number")
                replicas[int(key)] = ReplicaRecord.from_dict(item)
            except RecordError as exc:
                invalid[str(key)[:20]] = str(exc)
        command = data.get("command") or []
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            command = ["?"]
        signal_ = data.get("stop_signal", 15)
        stop_signal = signal_ if isinstance(signal_, int) and not isinstance(signal_, bool) and 0 < signal_ < 65 else 15
        try:
            stop_timeout = _number(data, "stop_timeout", 10.0)
        except RecordError:
            stop_timeout = 10.0
        good = []
        raw_good = data.get("good") or []
        for item in raw_good if isinstance(raw_good, list) else []:  # older records have none
            if (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) and x and "\0" not in x
                                                                   for x in item)):
                good.append((item[0], item[1], item[2]))
        pinned = data.get("pinned") or ""
        pinned_over = data.get("pinned_over") or ""
        failed: dict[int, Failure] = {}
        raw_failed = data.get("failed") or {}
        for key, item in raw_failed.items() if isinstance(raw_failed, dict) else ():  # older records have none
            try:
                if isinstance(key, str) and key.isdigit() and len(key) < 7:
                    failed[int(key)] = Failure.from_dict(item)
            except RecordError:
                continue  # (a bad entry: that replica starts, as before failures were recorded)
        rolled_back: Failure | None = None
        if data.get("rolled_back") is not None:
            try:
                rolled_back = Failure.from_dict(data["rolled_back"])
            except RecordError:
                pass  # (a bad entry: the newest version may be tried again, as before it was recorded)
        completed: dict[int, CompletedReplica] = {}
        raw_completed = data.get("completed") or {}
        for key, item in raw_completed.items() if isinstance(raw_completed, dict) else ():  # older records have none
            try:
                if isinstance(key, str) and key.isdigit() and len(key) < 7:
                    completed[int(key)] = CompletedReplica.from_dict(item)
            except RecordError:
                continue  # (a bad entry: that job runs again, as before exits were recorded)
        return cls(service=service, held=held, replicas=replicas, command=tuple(command), stop_signal=stop_signal,
                   stop_timeout=stop_timeout, invalid=invalid, good=tuple(good), failed=failed, rolled_back=rolled_back,
                   completed=completed,
                   pinned=pinned if isinstance(pinned, str) else "",
                   pinned_over=pinned_over if isinstance(pinned_over, str) and isinstance(pinned, str) else "")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object on disk (the format older supervise versions wrote and read)."""
        return {"service": self.service, "held": self.held,
                "replicas": {str(i): r.to_dict() for i, r in sorted(self.replicas.items())},
                "command": list(self.command), "stop_signal": self.stop_signal, "stop_timeout": self.stop_timeout,
                **({"good": [list(g) for g in self.good]} if self.good else {}),
                **({"pinned": self.pinned, "pinned_over": self.pinned_over} if self.pinned else {}),
                **({"failed": {str(i): f.to_dict() for i, f in sorted(self.failed.items())}} if self.failed else {}),
                **({"rolled_back": self.rolled_back.to_dict()} if self.rolled_back is not None else {}),
                **({"completed": {str(i): c.to_dict() for i, c in sorted(self.completed.items())}}
                   if self.completed else {})}


#: Fingerprinted only when set (they came after the format; see :func:`fingerprint`).
CONTAINER_FIELDS = ("ports", "volumes", "image_build", "runtime")


def state_dir_of(state_dir: Path) -> Path:
    """``STATE_DIR/state``, where the per-service records live."""
    return state_dir / "state"


def fingerprint(spec: ServiceSpec) -> str:
    """sha256 over the fields whose change means new processes (plan.RESTART_FIELDS)."""
    data = {}
    for name in RESTART_FIELDS:
        value = getattr(spec, name)
        if name in CONTAINER_FIELDS:
            if not value:  # left out when unset: records older versions wrote keep their hash
                continue
            value = str(value)
        if name == "environment":
            value = sorted(value.items())
        elif name == "source":  # the URL as written (a hash only): a changed token is a change
            value = (f"git {value.url}@{value.ref}" if value.kind == "git" else f"image {value.image}"
                     if value.kind == "image" else str(value.path))
        data[name] = value
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def failed_key(launched: str, spec: ServiceSpec) -> str:
    """What a start-limit failure is kept for: ``launched`` (:func:`fingerprint` of the spec
    the processes were made of) with the restart policy, backoff and start limit of ``spec``.
    A change of any of them starts the service again, as it does while the supervisor runs
    (the plan retries a failed service on any change of its spec)."""
    pacing = repr((spec.restart.value, spec.backoff, spec.start_limit))
    return hashlib.sha256(f"{launched} {pacing}".encode()).hexdigest()


#: STATE_DIR -> its checked record folder, while :func:`batch` runs
_checked: dict[Path, Path] = {}


@contextlib.contextmanager
def batch(state_dir: Path) -> Iterator[None]:
    """Writes of many records in a row (:class:`supervisor.execute.service.RecordWriter`):
    the folder is made and checked once for all of them, not twice per record (two mkdirs and
    a stat of every parent each time). For synchronous code only: nothing else runs between
    the check and the writes. Raises safefs.UnsafeStateDir (from the check) or OSError."""
    _checked[state_dir] = folder_of(state_dir)
    try:
        yield
    finally:
        _checked.pop(state_dir, None)
def completed_key(launched: str, spec: ServiceSpec) -> str:
    """What a finished job is kept exited for: ``launched`` (:func:`fingerprint` of the spec its
    process was made of) with the restart policy of ``spec`` (a job changed to ``restart =
    "always"`` starts again, as a changed unit does under systemd)."""
    return hashlib.sha256(f"{launched} {spec.restart.value}".encode()).hexdigest()


def folder_of(state_dir: Path) -> Path:
    """``STATE_DIR/state``, created 0700 and checked (ours, not group/other writable).
    Raises safefs.UnsafeStateDir."""
    checked = _checked.get(state_dir)
    if checked is not None:
        return checked
    folder = state_dir_of(state_dir)
    safefs.ensure_dir(state_dir)
    return safefs.ensure_dir(folder)


def save(state_dir: Path, name: str, record: ServiceRecord | Mapping[str, Any]) -> None:
    """Write the record of service ``name`` atomically (0600, O_EXCL temporary file, renamed
    within the folder's fd: a planted symlink is never followed). A plain mapping is written
    as it is (tests plant hostile records that way)."""
    folder = folder_of(state_dir)
    data = record.to_dict() if isinstance(record, ServiceRecord) else dict(record)
    safefs.write_atomic(folder, f"{name}.json", json.dumps(data, separators=(",", ":")).encode())


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


def load_all(state_dir: Path, unreadable: dict[str, str] | None = None) -> dict[str, ServiceRecord]:
    """Every readable record, by service name, typed. A record that cannot be read or parsed
    (or is not a regular file of ours, or not of the shape :class:`ServiceRecord` accepts) is
    left out and, when ``unreadable`` is given, put there with the reason: callers must not
    take a missing record for "nothing runs"."""
    folder = state_dir_of(state_dir)
    records = {}
    for name, data in _load_folder(folder, unreadable).items():
        try:
            records[name] = ServiceRecord.from_dict(data, name)
        except RecordError as exc:
            if unreadable is not None:
                unreadable[name] = f"{folder / (name + '.json')}: {exc}"
    return records


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
