"""Readiness and liveness probes: ``tcp``, ``http``, ``exec`` (Kubernetes probe semantics).

A probe passes when a TCP connect succeeds, an HTTP GET answers 200-399, or a command exits 0,
each within ``timeout`` seconds. Probes run on the event loop; none blocks it.
"""

from __future__ import annotations

import asyncio
from typing import Mapping
from urllib.parse import urlsplit

from ..desired.environ import expand
from ..desired.model import Check


async def probe(check: Check | Mapping[str, object], env: Mapping[str, str], cwd: str | None = None,
                user: str | None = None) -> bool:
    """Run ``check`` (a validated ``ready``/``live`` table) once; True if it passed.

    ``exec`` checks run in ``cwd`` (the replica's working directory) with the replica's env,
    and as the service's ``user`` (uid, gid and groups, like the replica itself: Kubernetes
    runs exec probes inside the container, as its user).
    """
    check = Check.of(check)
    timeout = check.timeout
    try:
        if check.kind == "tcp":
            return await asyncio.wait_for(_tcp(expand(check.target, env)), timeout)
        if check.kind == "http":
            return await asyncio.wait_for(_http(expand(check.target, env)), timeout)
        if check.kind == "exec":
            return await _exec([expand(a, env) for a in check.argv], env, timeout, cwd, user)
    except asyncio.CancelledError:
        raise
    except Exception:  # any failure of a probe is a failed probe, never a crashed checker
        return False
    return False


def local_port(check: Check | Mapping[str, object], env: Mapping[str, str]) -> int | None:
    """The TCP port a ``tcp``/``http`` check connects to when it connects to this machine (a
    loopback or unspecified address, ``localhost``, or an address of one of its interfaces),
    else None (an ``exec`` check, a remote host, a target that does not parse): then who
    answers cannot be looked up here. Reads the interface list (psutil)."""
    import ipaddress

    import psutil

    check = Check.of(check)
    try:
        if check.kind == "tcp":
            host, port = _split_host_port(expand(check.target, env))
        elif check.kind == "http":
            parts = urlsplit(expand(check.target, env))
            host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
        else:
            return None
    except ValueError:
        return None
    if host.lower() == "localhost":
        return port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: resolving it on every probe is not worth it
    if address.is_loopback or address.is_unspecified:
        return port
    try:
        ours = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except OSError:
        return None
    return port if str(address) in ours else None


def _split_host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _tcp(target: str) -> bool:
    host, port = _split_host_port(target)
    reader, writer = await asyncio.open_connection(host, port)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def _http(url: str) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", port,
                                                   ssl=parts.scheme == "https" or None)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = parts.netloc.rsplit("@", 1)[-1]
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: supervise\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        fields = status.split()
        return len(fields) >= 2 and fields[1].isdigit() and 200 <= int(fields[1]) < 400
    finally:
        writer.close()


async def _exec(argv: list[str], env: Mapping[str, str], timeout: float, cwd: str | None,
                user: str | None = None) -> bool:
    """Run an exec check as the leader of its own process group (session), like a replica.

    Whatever way it ends — exit, ``timeout`` seconds passing, or the caller cancelling (a stop)
    — the whole group is SIGKILLed while the leader's zombie still holds the group id (so the
    id cannot have been reused), the leader is reaped here, and what was left of the group is
    reaped too (a subreaper gets those orphans; without one, init does). Processes that left
    the group with ``setsid`` are killed from a snapshot of the leader's descendants.
    """
    import subprocess

    from . import procs

    identity = procs.user_identity(user) if user else {}
    proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True, **identity)
    procs.private_groups.add(proc.pid)  # the daemon's stray reaper leaves its zombies to us
    try:
        try:
            await asyncio.wait_for(procs.wait_exit(proc.pid), timeout)
        except asyncio.TimeoutError:
            procs.end_group(proc.pid)
            return False
        return procs.end_group(proc.pid, running=False) == 0
    except BaseException:  # cancelled (the replica stops): leave nothing behind either
        procs.end_group(proc.pid)
        raise
    finally:
        proc.returncode = -1  # reaped by end_group: Popen must never wait on the pid again
        procs.private_groups.discard(proc.pid)
