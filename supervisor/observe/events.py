"""Events: every create/update/delete and life-cycle change, as data users can stream.

``create``, ``update`` and ``delete`` are the original runtime's notifier types; the
life-cycle types (``started``, ``exited``, ``ready``, ``build-failed``, ...) go beyond it.
An :class:`Event` serialises to one JSON object per line.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import json
import queue as _queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..redaction import redact_value

class EventType(str, enum.Enum):
    """Event types: ``create``/``update``/``delete`` (the original notifier's) and life-cycle ones."""
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    FETCH_FAILED = "fetch-failed"
    FORCE_PUSHED = "force-pushed"
    BUILDING = "building"
    BUILT = "built"
    BUILD_FAILED = "build-failed"
    STARTED = "started"
    ADOPTED = "adopted"
    START_FAILED = "start-failed"
    READY = "ready"
    EXITED = "exited"
    RESTARTING = "restarting"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    RELOADED = "reloaded"
    CONFIG_ERROR = "config-error"
    DRIFT = "drift"                              # Kubernetes: an object edited by another field manager
    CLUSTER_UNREACHABLE = "cluster-unreachable"  # Kubernetes: reported once per outage
    CLUSTER_REACHABLE = "cluster-reachable"
    CLUSTER_EVENT = "cluster-event"              # Kubernetes: an Event with no supervise equivalent

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


@dataclass(frozen=True)
class Event:
    """``{type, timestamp, service, version, ...}``; ``timestamp`` is seconds since the epoch.

    ``data`` holds the type's own fields (``replica``, ``pid``, ``exit``, ``reason``, ...),
    flattened into the JSON object. Never put environment values here: they may be secrets.
    """

    type: EventType
    service: str | None = None
    version: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    #: Its number on the bus that published it: one more than the event before (the daemon
    #: continues the numbers of the history it keeps, so they grow across its restarts).
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as one flat JSON-able object (``seq`` only once a bus numbered it)."""
        numbered = {"seq": self.seq} if self.seq is not None else {}
        return {"type": self.type.value, "timestamp": self.timestamp, "service": self.service,
                "version": self.version, **numbered, **self.data}

    def to_json(self) -> str:
        """One compact JSON line (no newline)."""
        return json.dumps(self.to_dict(), default=str, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Event":
        """The inverse of :meth:`to_dict`. Raises ValueError for an unknown type."""
        raw = dict(raw)
        return cls(type=EventType(raw.pop("type")), service=raw.pop("service", None),
                   version=raw.pop("version", None), timestamp=raw.pop("timestamp", time.time()),
                   seq=raw.pop("seq", None), data=raw)


class Notifier:
    """An in-process event bus: ``notify(event)`` fans out to subscribers; ``close()`` ends them.

    Subscribers are plain callables (called in the notifying thread's loop) or asyncio queues
    from :meth:`subscribe`. Each event published is numbered (``seq``), one more each time. A slow queue subscriber loses nothing but is bounded: past
    ``maxsize`` events the oldest are dropped and a ``dropped`` count is attached to the next.
    """

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Event], None]] = []
        self._queues: list[asyncio.Queue[Event | None]] = []
        self.closed = False
        #: The ``seq`` of the last event published (the next one gets one more).
        self.seq = 0

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` for every event, on the notifying thread."""
        self._callbacks.append(callback)

    def subscribe(self, maxsize: int = 10000) -> asyncio.Queue[Event | None]:
        """A queue that receives every event, then None at :meth:`close` (loop thread only)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        """Stop feeding ``queue``."""
        if queue in self._queues:
            self._queues.remove(queue)

    def notify(self, event: Event) -> None:
        """Publish ``event`` to every listener and subscriber (a no-op once closed)."""
        if self.closed:
            return
        clean = redact_value(event.data)  # a git URL with credentials in it: never published
        self.seq += 1
        event = Event(type=event.type, service=event.service, version=event.version,
                      timestamp=event.timestamp, data=clean, seq=self.seq)
        for callback in list(self._callbacks):
            callback(event)
        for queue in list(self._queues):
            if queue.full():
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:  # pragma: no cover
                    pass
            queue.put_nowait(event)

    def emit(self, type: EventType, service: str | None = None, version: str | None = None, **data: Any) -> Event:
        """Build an :class:`Event` from the arguments, publish it, and return it."""
        event = Event(type=type, service=service, version=version, data=data)
        self.notify(event)
        return event

    def close(self) -> None:
        """End every subscription (each queue gets None) and drop the listeners."""
        self.closed = True
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        self._queues.clear()
        self._callbacks.clear()


class UpdateNotifier(abc.ABC):
    """go-micro's runtime ``Notifier``, "a notifier for updates": a stream of events that a
    runtime *reads* and acts on. An ``update`` event (:attr:`EventType.UPDATE`) for a service
    deploys the version it names (its ``version``: a ref or tag to resolve, or the revision
    itself when ``data["revision"]`` is set; None: what the source holds now); one without a
    service means every service. The built-in git poller and folder watcher are notifiers of
    this shape, and so is a caller's own (a webhook, a CI hook); the engine reads them all
    through ``Engine.listen``, the one way in for new versions.
    """

    @abc.abstractmethod
    def notify(self) -> Iterator[Event]:
        """Events as they happen (blocking); the iterator ends after :meth:`close`."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the stream (from any thread)."""


class Updates(UpdateNotifier):
    """An :class:`UpdateNotifier` fed from code: :meth:`put` from any thread, read once."""

    def __init__(self) -> None:
        self._queue: _queue.SimpleQueue[Event | None] = _queue.SimpleQueue()
        self._closed = False

    def put(self, event: Event) -> None:
        """Publish ``event`` to the reader (dropped once closed)."""
        if not self._closed:
            self._queue.put(event)

    def update(self, service: str, version: str | None = None, **data: Any) -> None:
        """Publish an ``update`` event for ``service`` (``data``: ``revision``, ``trigger``...)."""
        self.put(Event(EventType.UPDATE, service, version, data))

    def notify(self) -> Iterator[Event]:
        while True:
            event = self._queue.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
