"""The Runtime interface: the original runtime's contract (go-micro ``runtime`` v1.17-1.18,
``runtime/runtime.go``, ``options.go``, ``default.go``) in Python terms, for programs that run
their dependencies, or themselves, through supervise.

Go                                          Python
``NewRuntime(opts...)``, ``Init(opts...)``    ``LocalRuntime(..., *opts, **options)``, ``init(*opts, **options)``
``WithNotifier(n)``, ``WithType(t)``          ``with_notifier(n)``, ``with_type(t)`` (or ``notifier=``, ``type=``)
``Create(*Service, ...CreateOption)``         ``create(service, *opts, command=, args=, env=, output=, type=)``
``WithCommand``, ``WithEnv``, ``WithOutput``  ``with_command(*argv)``, ``with_env(["K=V"])``, ``with_output(f)``
``Read(...ReadOption)``                       ``read(*opts, service=, version=, type=)``
``ReadService``, ``ReadVersion``, ``ReadType`` ``read_service(n)``, ``read_version(v)``, ``read_type(t)``
``Update(*Service)`` / ``Delete``             ``update(service)`` / ``delete(service)``
``List()``, ``Start()``, ``Stop()``           ``list()``, ``start()``, ``stop()``; ``str(runtime)`` is ``"local"``
``Notifier{Notify(), Close()}``               :class:`Notifier`: an *input*, "a notifier for updates"

The runtime's own life-cycle events are :meth:`Runtime.events` (a name that does not clash
with the notifier option).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

from ..observe.events import Event, UpdateNotifier

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


class Notifier(UpdateNotifier):
    """A stream of events: iterate :meth:`notify` until :meth:`close` (from any thread).

    Given to a runtime (``with_notifier``) it is an *input*: the runtime reads it and acts on
    each ``update`` event (an :class:`~supervisor.observe.events.Event` of type ``UPDATE``) by deploying
    the version it names for its service (every service when it names none), as go-micro's
    runtime does. A webhook or a CI hook is one; so are the git poller and the folder watcher.
    """

    @abc.abstractmethod
    def notify(self) -> Iterator[Event]:
        """Events as they happen; the iterator ends after :meth:`close`."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the stream."""


@dataclass
class Options:
    """The runtime's options: ``notifier`` (an input: a notifier for updates) and ``type``
    (the one service type the runtime manages; None: any)."""

    notifier: Notifier | None = None
    type: str | None = None


@dataclass
class CreateOptions:
    """What :meth:`Runtime.create` is given: ``command`` and ``args`` (appended to it), ``env``
    (``["K=V"]`` as in Go, or a mapping), ``output`` (also receives the service's output
    lines) and ``type`` (``"service"`` or ``"job"``)."""

    command: Sequence[str] = ()
    args: Sequence[str] = ()
    env: Sequence[str] | Mapping[str, str] = ()
    output: IO[Any] | None = None
    type: str = "service"


@dataclass
class ReadOptions:
    """The filters of :meth:`Runtime.read`; each given one must match."""

    service: str | None = None
    version: str | None = None
    type: str | None = None


Option = Callable[[Options], None]
CreateOption = Callable[[CreateOptions], None]
ReadOption = Callable[[ReadOptions], None]


def with_notifier(notifier: Notifier) -> Option:
    """go-micro ``WithNotifier``: a notifier for updates the runtime reads and acts on."""
    return lambda o: setattr(o, "notifier", notifier)


def with_type(type: str) -> Option:
    """go-micro ``WithType``: the service type the runtime manages."""
    return lambda o: setattr(o, "type", type)


def with_command(*argv: str) -> CreateOption:
    """go-micro ``WithCommand``: the command to run, with its arguments."""
    return lambda o: setattr(o, "command", argv)


def with_args(*args: str) -> CreateOption:
    """Arguments appended to the command."""
    return lambda o: setattr(o, "args", args)


def with_env(env: Sequence[str] | Mapping[str, str]) -> CreateOption:
    """go-micro ``WithEnv``: ``["K=V", ...]`` (or a mapping)."""
    return lambda o: setattr(o, "env", env)


def with_output(output: IO[Any]) -> CreateOption:
    """go-micro ``WithOutput``: where the service's output lines also go."""
    return lambda o: setattr(o, "output", output)


def create_type(type: str) -> CreateOption:
    """The type of the service created (``"service"`` or ``"job"``)."""
    return lambda o: setattr(o, "type", type)


def read_service(service: str) -> ReadOption:
    """go-micro ``ReadService``: services of this name."""
    return lambda o: setattr(o, "service", service)


def read_version(version: str) -> ReadOption:
    """go-micro ``ReadVersion``: services created with this version (a ref or tag)."""
    return lambda o: setattr(o, "version", version)


def read_type(type: str) -> ReadOption:
    """go-micro ``ReadType``: services of this type."""
    return lambda o: setattr(o, "type", type)


def env_mapping(env: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``["K=V", ...]`` (Go's form) or a mapping, as a dict. Raises :class:`RuntimeError_`
    for an entry without ``=``."""
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items()}
    out = {}
    for item in env:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise RuntimeError_(f'env entries are "KEY=VALUE", got {item!r}')
        out[key] = value
    return out


class Runtime(abc.ABC):
    """Runs services. Every method is synchronous and thread-safe; errors raise
    :class:`RuntimeError_` with a message for the user."""

    @abc.abstractmethod
    def init(self, *opts: Option, notifier: Notifier | None = None, type: str | None = None) -> None:
        """Set options (go-micro ``Init``): option functions and/or keywords."""

    @abc.abstractmethod
    def create(self, service: Service, *opts: CreateOption, command: Sequence[str] = (), args: Sequence[str] = (),
               env: Sequence[str] | Mapping[str, str] = (), output: IO[Any] | None = None,
               type: str = "service") -> None:
        """Register ``service`` and fetch, build and start it. Raises if the name exists (see
        :meth:`apply` for an upsert) or has no command. ``type`` is ``"service"`` (restarted
        always) or ``"job"`` (run to completion; restarted only on failure)."""

    def apply(self, service: Service, *opts: CreateOption, **options: Any) -> None:
        """Create ``service``, or replace its definition when the name exists (an upsert)."""
        self.delete(service)
        self.create(service, *opts, **options)

    @abc.abstractmethod
    def read(self, *opts: ReadOption, service: str | None = None, version: str | None = None,
             type: str | None = None) -> list[Service]:
        """The services that match every filter given (all of them with none)."""

    @abc.abstractmethod
    def update(self, service: Service) -> None:
        """Apply ``service`` as given: a new ``version`` pins it, changed metadata applies,
        the same version deploys its newest commit; emits an ``update`` event with it."""

    @abc.abstractmethod
    def delete(self, service: Service) -> None:
        """Stop ``service`` (no process left behind) and forget it; an unknown name is not an
        error."""

    def list(self) -> list[Service]:
        """Every service."""
        return self.read()

    @abc.abstractmethod
    def start(self) -> None:
        """Start the runtime (idempotent); services created before a :meth:`stop` start again."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every service and the runtime itself; :meth:`start` may follow."""

    @abc.abstractmethod
    def events(self, timeout: float | None = None) -> Notifier:
        """A new stream of the runtime's own events (create/update/delete and every
        life-cycle event). It ends when the runtime stops, or after ``timeout`` s without
        an event."""


class RuntimeError_(Exception):
    """A Runtime call failed: bad arguments, unknown service, or a failed fetch or build."""
