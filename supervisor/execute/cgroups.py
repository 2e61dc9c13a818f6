"""cgroup v2 groups for services, where the machine lets us make them.

Rules followed (kernel Documentation/admin-guide/cgroup-v2.rst): a cgroup is made under the
supervisor's own cgroup (from ``/proc/self/cgroup``, line ``0::PATH``) on the cgroup2 mount
found in ``/proc/self/mounts``; ``cgroup.kill`` SIGKILLs every process inside (Linux >= 5.14);
``cgroup.events`` says ``populated 0`` once it is empty; an empty cgroup is removed with rmdir.
Every function here returns None/False instead of raising when cgroups cannot be used, and
callers then rely on process groups alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("supervise")


def mount_point() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (``/sys/fs/cgroup`` or ``.../unified``), or None."""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return Path(parts[1])
    except OSError:
        pass
    return None


def own_path() -> Path | None:
    """This process's cgroup v2 folder, or None without a cgroup2 hierarchy."""
    mount = mount_point()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return mount / line[3:].strip().lstrip("/")
    except OSError:
        pass
    return None


def make_parent(name: str) -> Path | None:
    """Create (or reuse) ``name`` under our own cgroup for the services; None if not allowed."""
    base = own_path()
    if base is None:
        return None
    path = base / name
    try:
        path.mkdir(exist_ok=True)
        if not (path / "cgroup.kill").exists():
            return None  # kernel < 5.14: nothing to gain over process groups
        return path
    except OSError as exc:
        log.debug("no cgroup for services (%s); using process groups alone", exc)
        return None


def create(parent: Path, name: str) -> Path | None:
    """A fresh child cgroup ``parent/name`` (an existing empty one is reused)."""
    path = parent / name
    try:
        path.mkdir(exist_ok=True)
        return path
    except OSError:
        return None


def move(group: Path, pid: int) -> bool:
    """Put ``pid`` into ``group``; False if the kernel refused."""
    try:
        with open(group / "cgroup.procs", "w") as f:
            f.write(str(pid))
        return True
    except OSError:
        return False


def kill(group: Path) -> bool:
    """SIGKILL everything in ``group`` at once (``cgroup.kill``)."""
    try:
        with open(group / "cgroup.kill", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def read_small(path: str | os.PathLike[str]) -> bytes:
    """The whole of a small kernel file (/proc, /sys/fs/cgroup) with open, read and close
    alone: Python's ``open`` adds fstat, ioctl and two lseeks, and a stop of 2,000 replicas
    reads a few such files for each. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def populated(group: Path) -> bool:
    """True while any process is in ``group`` (or its children)."""
    try:
        text = read_small(os.path.join(group, "cgroup.events"))
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(b"populated "):
            return line.split()[1] == b"1"
    return False


def remove(group: Path) -> None:
    """rmdir ``group``; left in place (and logged at debug) while it is busy."""
    try:
        os.rmdir(group)
    except OSError as exc:
        log.debug("cannot remove cgroup %s: %s", group, exc)


def of_pid(pid: int) -> Path | None:
    """The cgroup v2 folder of ``pid``, or None."""
    mount = mount_point()
    if mount is None:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    path = mount / line[3:].strip().lstrip("/")
                    return path if path != own_path() else None
    except OSError:
        pass
    return None


def pids(group: Path) -> list[int]:
    """The processes in ``group`` (``cgroup.procs``); empty when it cannot be read."""
    try:
        return [int(pid) for pid in read_small(os.path.join(group, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def remove_empty_children(parent: Path) -> int:
    """rmdir every child cgroup of ``parent`` that is empty (a busy one refuses); returns how
    many went."""
    removed = 0
    try:
        children = [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return 0
    for child in children:
        try:
            os.rmdir(child)
            removed += 1
        except OSError:
            continue
    return removed


def children(parent: Path) -> list[Path]:
    """The child cgroups of ``parent`` (empty when it cannot be read)."""
    try:
        return [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return []
