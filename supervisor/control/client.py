"""Client side of the control socket (used by the CLI verbs)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterator

from . import socket_path


class NotRunning(Exception):
    """No supervisor answers on the state dir's control socket."""


class ControlError(Exception):
    """The supervisor answered with ``ok: false``; the message is its ``error``, ``code``
    its error code (see :mod:`supervisor.errors`; None from an older supervisor)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class Client:
    """A connection to the supervisor of ``state_dir``. Raises NotRunning when none answers."""

    def __init__(self, state_dir: Path, timeout: float | None = 30.0):
        self.path = socket_path(state_dir)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise NotRunning(f"no supervisor is running for {state_dir}") from exc
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        """Close the connection."""
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, verb: str, **args: Any) -> None:
        """Send one request line ``{"verb": verb, ...args}``."""
        self.sock.sendall((json.dumps({"verb": verb, **args}) + "\n").encode())

    def receive(self) -> dict[str, Any]:
        """Read one reply line. Raises ControlError for ``ok: false`` or a closed connection."""
        line = self.reader.readline()
        if not line:
            raise ControlError("the supervisor closed the connection")
        reply = json.loads(line)
        if not reply.get("ok", False) and "error" in reply:
            raise ControlError(reply["error"], reply.get("code"))
        return reply

    def call(self, verb: str, **args: Any) -> dict[str, Any]:
        """One request, one reply."""
        self.send(verb, **args)
        return self.receive()

    def stream(self, verb: str, **args: Any) -> Iterator[dict[str, Any]]:
        """One request, then every further line until the server hangs up."""
        self.sock.settimeout(None)
        self.call(verb, **args)
        for line in self.reader:
            yield json.loads(line)
