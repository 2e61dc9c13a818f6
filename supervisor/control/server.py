"""Server side of the control socket: owner-only, peer uid checked, JSON lines.

The socket is created 0600 inside the 0700 state dir, and every connection's peer uid is read
with ``SO_PEERCRED``: only our own uid (and root) may drive the supervisor, even if the file
modes are loosened by hand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..observe import safefs
from ..redaction import redact_value

log = logging.getLogger("supervise")

#: The longest request line read, in bytes; a longer one is answered with an error, then the
#: connection closes.
MAX_LINE = 1 << 20

Handler = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[dict[str, Any] | None]]


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    """Serves ``handlers[verb](request, writer)`` on ``path``. A handler returns the reply
    object (``ok`` is added), or None when it wrote its own replies (streams)."""

    def __init__(self, path: Path, handlers: dict[str, Handler], inherited: int | None = None,
                 settle: Callable[[], None] | None = None):
        self.path = path
        self.handlers = handlers
        #: called before each reply is sent (the daemon writes its waiting state records: what
        #: a reply says runs is on disk, where a next supervisor would adopt it from)
        self.settle = settle
        self.server: asyncio.AbstractServer | None = None
        self.allowed = {os.geteuid(), 0}
        self.clients: set[asyncio.Task] = set()
        #: The listening socket's fd, left open across a self-update's exec by the previous
        #: supervise of this pid: connections made meanwhile wait in its backlog, none is refused.
        self.inherited = inherited
        self.took: int | None = None  # the fd number it was inherited at (handed over at the same)

    def _take_inherited(self) -> socket.socket | None:
        """The inherited listening socket, if it is the one bound to our path (else None, and
        the fd is left alone)."""
        fd, self.inherited = self.inherited, None
        if fd is None:
            return None
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return None
        try:
            if (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or sock.getsockname() != str(self.path)
                    or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                sock.detach()
                return None
        except OSError:
            sock.detach()
            return None
        sock.set_inheritable(False)
        self.took = fd
        return sock

    async def start(self) -> None:
        """Listen on the socket (0600 in a 0700 folder; a stale socket file is replaced), or
        go on listening on the one the previous supervise of this pid handed over."""
        inherited = self._take_inherited()
        if inherited is not None:
            self.server = await asyncio.start_unix_server(self._serve, sock=inherited, limit=MAX_LINE)
            return
        safefs.ensure_dir(self.path.parent)
        try:
            self.path.unlink()  # stale, from a supervisor that died; we hold the lock
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def restart(self) -> None:
        """Listen again on a new socket file (ours was removed with the state dir); open
        connections stay."""
        if self.server is not None:
            self.server.close()
            self.server = None
        await self.start()

    async def hand_over(self, grace: float = 1.0) -> int | None:
        """Stop serving but keep the listening socket for the next supervise of this pid (a
        self-update's exec): returns a duplicate of its fd, inheritable (None when not
        listening). Open connections get ``grace`` seconds to end (an events stream ends once
        the bus is closed), then are cut."""
        sockets = getattr(self.server, "sockets", None) or ()
        if self.server is None or not sockets:
            await self.close()
            return None
        fd = os.dup(sockets[0].fileno())
        os.set_inheritable(fd, True)
        self.server.close()
        if self.took is not None:  # at the number it came at: a guard that goes back names that one
            os.dup2(fd, self.took, inheritable=True)
            os.close(fd)
            fd = self.took
        if self.clients:
            await asyncio.wait(list(self.clients), timeout=grace)
        for task in list(self.clients):
            task.cancel()
        await asyncio.gather(*self.clients, return_exceptions=True)
        await self.server.wait_closed()
        self.server = None
        return fd

    async def close(self) -> None:
        """Stop listening, end open connections, remove the socket file."""
        if self.server is not None:
            self.server.close()
            for task in list(self.clients):
                task.cancel()
            await asyncio.gather(*self.clients, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.clients.add(task)
        try:
            uid = peer_uid(writer)
            if uid not in self.allowed:
                log.warning("control: refused a connection from uid %s", uid)
                await send(writer, {"ok": False, "error": f"permission denied for uid {uid}"})
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):  # no newline within the limit
                    await send(writer, {"ok": False, "error": f"bad request: longer than {MAX_LINE} bytes"})
                    return  # the rest of that line cannot be told from a next request
                if not line:
                    return
                try:
                    request = json.loads(line)
                    verb = request["verb"]
                    handler = self.handlers[verb]
                except RecursionError:  # nested too deep for the decoder
                    await send(writer, {"ok": False, "error": "bad request: JSON nested too deep"})
                    return
                except (ValueError, KeyError, TypeError, IndexError):
                    await send(writer, {"ok": False, "error": f"bad request: {line[:200]!r}"})
                    continue
                try:
                    reply = await handler(request, writer)
                except ConnectionError:  # the client hung up (Ctrl-C on `events`, `q` in top)
                    return
                except Exception as exc:  # a bad request must not take the supervisor down
                    log.exception("control: %s failed", verb)
                    reply = {"ok": False, "error": f"{verb} failed: {exc}", "code": "failed"}
                if reply is None:
                    return
                if self.settle is not None:
                    self.settle()
                await send(writer, {"ok": True, **reply})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one client's failure never reaches the loop
            log.exception("control: a connection failed")
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self.clients.discard(task)
            writer.close()


async def send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    """Write ``obj`` as one JSON line and wait until it is sent."""
    text = json.dumps(obj, default=str)
    if "@" in text:  # redaction only ever changes a string with an @ (never escaped by json)
        text = json.dumps(redact_value(obj), default=str)
    writer.write((text + "\n").encode())
    await writer.drain()
