"""The Runtime interface: the original runtime's shape (go-micro's ``runtime.Runtime``) in
Python terms, for programs that run their dependencies, or themselves, through supervise.

Go                                   Python
``Create(*Service, ...CreateOption)``  ``create(service, *, command, env, output, type)``
``Read(...ReadOption)``                ``read(*, service, version, type) -> list[Service]``
``Update(*Service)`` / ``Delete``      ``update(service)`` / ``delete(service)``
``List()``, ``Start()``, ``Stop()``    ``list()``, ``start()``, ``stop()``
``Notifier{Notify() <-chan Event}``    ``Notifier.notify() -> Iterator[Event]``, ``close()``
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import IO, Iterator, Mapping, Sequence

from ..events import Event


@dataclass
class Service:
    """A service as the Runtime API sees it.

    ``source`` is a git URL (or a path to a git repository ending in ``.git``, or with
    ``metadata["git"] = "true"``) or a local folder; ``version`` is the git ref to run on
    create and, from :meth:`Runtime.read`, the version that runs (``REVISION12-BUILDHASH8``).
    ``metadata`` carries the rest: on create ``build`` (a command string), ``cwd``,
    ``replicas``, ``poll`` (a duration), ``restart``; from read ``phase``, ``pids``,
    ``replicas``, ``type``.
    """

    name: str
    version: str = ""
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class Notifier(abc.ABC):
    """A stream of events: iterate :meth:`notify` until :meth:`close` (from any thread)."""

    @abc.abstractmethod
    def notify(self) -> Iterator[Event]:
        """Events as they happen; the iterator ends after :meth:`close`."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the stream."""


class Runtime(abc.ABC):
    """Runs services. Every method is synchronous and thread-safe; errors raise
    :class:`RuntimeError_` with a message for the user."""

    @abc.abstractmethod
    def create(self, service: Service, *, command: Sequence[str], env: Mapping[str, str] | None = None,
               output: IO[bytes] | IO[str] | None = None, type: str = "service") -> None:
        """Fetch, build and start ``service``. ``type`` is ``"service"`` (restarted always)
        or ``"job"`` (run to completion; restarted only on failure). ``output``, if given,
        also receives the service's output lines."""

    @abc.abstractmethod
    def read(self, *, service: str | None = None, version: str | None = None,
             type: str | None = None) -> list[Service]:
        """The services that match every filter given (all of them with none)."""

    @abc.abstractmethod
    def update(self, service: Service) -> None:
        """Deploy the newest commit of ``service``'s source now (build beside, then replace)."""

    @abc.abstractmethod
    def delete(self, service: Service) -> None:
        """Stop ``service`` (no process left behind) and forget it."""

    def list(self) -> list[Service]:
        """Every service."""
        return self.read()

    @abc.abstractmethod
    def start(self) -> None:
        """Start the runtime (idempotent)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every service and the runtime itself."""

    @abc.abstractmethod
    def notifier(self) -> Notifier:
        """A new event stream: create/update/delete and every life-cycle event."""


class RuntimeError_(Exception):
    """A Runtime call failed: bad arguments, unknown service, or a failed fetch or build."""
