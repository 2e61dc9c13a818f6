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
    """The supervisor answered with ``ok: false`` (the message is its ``error``, ``code`` its
    error code: see :mod:`supervisor.decide.errors`; None from an older supervisor), or did not
    answer usably: no reply within the timeout, a full accept backlog, a garbled reply."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class Client:
    """A connection to the supervisor of ``state_dir``. Raises NotRunning when none answers."""

    def __init__(self, state_dir: Path, timeout: float | None = 30.0):
        self.path = socket_path(state_dir)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            self.sock.close()
            raise NotRunning(f"no supervisor is running for {state_dir}") from exc
        except (BlockingIOError, TimeoutError) as exc:  # EAGAIN: its accept backlog is full
            self.sock.close()
            raise ControlError(f"the supervisor of {state_dir} is not accepting connections (busy); try again") from exc
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from exc
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
        """Send one request line ``{"verb": verb, ...args}``. Raises ControlError."""
        try:
            self.sock.sendall((json.dumps({"verb": verb, **args}) + "\n").encode())
        except TimeoutError:
            raise ControlError(f"the supervisor did not take the request within {self.timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"the supervisor closed the connection ({exc.strerror or exc})") from None

    def receive(self) -> dict[str, Any]:
        """Read one reply line. Raises ControlError for ``ok: false``, a closed connection, no
        reply within the timeout, or a reply that is not a JSON object."""
        try:
            line = self.reader.readline()
        except TimeoutError:
            raise ControlError(f"the supervisor did not answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"the supervisor closed the connection ({exc.strerror or exc})") from None
        if not line:
            raise ControlError("the supervisor closed the connection")
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            raise ControlError("the supervisor sent a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise ControlError("the supervisor sent a reply that is not a JSON object")
        if not reply.get("ok", False) and "error" in reply:
            code = reply.get("code")
            raise ControlError(str(reply["error"]), code if isinstance(code, str) else None)
        return reply

    def call(self, verb: str, **args: Any) -> dict[str, Any]:
        """One request, one reply."""
        self.send(verb, **args)
        return self.receive()

    def stream(self, verb: str, **args: Any) -> Iterator[dict[str, Any]]:
        """One request, then every further line until the server hangs up."""
        _reply, lines = self.subscribe(verb, **args)
        yield from lines

    def subscribe(self, verb: str, **args: Any) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
        """One request now: (its first reply, ``{"ok": true, ...}``; every further line until
        the server hangs up). Raises ControlError as :meth:`call`."""
        self.sock.settimeout(None)
        reply = self.call(verb, **args)

        def lines() -> Iterator[dict[str, Any]]:
            for line in self.reader:
                yield json.loads(line)
        return reply, lines()
