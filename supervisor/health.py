"""Readiness and liveness probes: ``tcp``, ``http``, ``exec`` (Kubernetes probe semantics).

A probe passes when a TCP connect succeeds, an HTTP GET answers 200-399, or a command exits 0,
each within ``timeout`` seconds. Probes run on the event loop; none blocks it.
"""

from __future__ import annotations

import asyncio
from typing import Mapping
from urllib.parse import urlsplit

from .environ import expand
from .model import Check


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
    from .procs import user_identity

    identity = user_identity(user) if user else {}
    process = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, **identity)  # same process group as us: our reaper leaves it alone
    try:
        return await asyncio.wait_for(process.wait(), timeout) == 0
    except asyncio.TimeoutError:
        try:
            process.kill()
        except ProcessLookupError:
            pass
        await process.wait()
        return False
