"""An in-process supervisor for integration tests: real processes, real files, one event loop.

Use inside ``asyncio.run`` (the reaper needs the main thread for SIGCHLD)::

    async with Stack(tmp_path) as stack:
        await stack.apply(CONFIG)
        await stack.until(lambda: stack.pid("api"))
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from supervisor.clock import SYSTEM, Clock
from supervisor.desired import config
from supervisor.observe.events import Event, Notifier
from supervisor.desired.model import Phase
from supervisor.reconciler import Reconciler

T = TypeVar("T")
PY = sys.executable


class Stack:
    def __init__(self, folder: Path, clock: Clock = SYSTEM):
        self.folder = folder
        self.clock = clock
        self.path = folder / "services.toml"
        self.notifier = Notifier()
        self.events: list[Event] = []
        self.notifier.add_listener(self.events.append)
        self.reconciler: Reconciler | None = None

    def load(self, text: str):
        self.path.write_text(text)
        return config.load(self.path)

    async def __aenter__(self) -> "Stack":
        return self

    async def __aexit__(self, *exc) -> None:
        if self.reconciler is not None:
            await self.reconciler.shutdown()

    async def apply(self, text: str):
        desired = self.load(text)
        if self.reconciler is None:
            self.reconciler = Reconciler(desired, self.notifier, clock=self.clock)
            await self.reconciler.start()
        return await self.reconciler.apply(desired)

    @property
    def r(self) -> Reconciler:
        assert self.reconciler is not None
        return self.reconciler

    def replica(self, service: str, index: int = 0):
        controller = self.r.controllers.get(service)
        return controller.replicas.get(index) if controller else None

    def pid(self, service: str, index: int = 0) -> int | None:
        replica = self.replica(service, index)
        return replica.pid if replica else None

    def phase(self, service: str, index: int = 0) -> Phase | None:
        replica = self.replica(service, index)
        return replica.phase if replica else None

    def log(self, service: str) -> str:
        path = self.r.state_dir / "logs" / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def of_type(self, kind: str, service: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type.value == kind and (service is None or e.service == service)]

    @staticmethod
    async def until(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition") -> T:
        """Await until ``predicate()`` is truthy (bounded); the loop keeps running meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            await asyncio.sleep(0.01)


def run(coro):
    """Run a test coroutine on a fresh loop."""
    return asyncio.run(asyncio.wait_for(coro, 60))


class DaemonRun:
    """``supervise --config PATH`` in-process (real watchers, socket, lock), for tests that need
    saves and the poller; ``stop()`` is its SIGTERM."""

    def __init__(self, path: Path):
        from supervisor.daemon import Daemon

        self.path = path
        self.daemon = Daemon(path, config.load(path), console=False)
        self.events: list[Event] = []
        self.daemon.notifier.add_listener(self.events.append)
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "DaemonRun":
        self.task = asyncio.get_running_loop().create_task(self.daemon.run())
        await Stack.until(lambda: self.daemon.stop_event is not None and self.daemon.reconciler.controllers
                          or (self.task.done() and self.task.result()), message="the daemon to start")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            assert self.daemon.stop_event is not None
            self.daemon.stop_event.set()
            await asyncio.wait_for(self.task, 30)

    @property
    def controllers(self):
        return self.daemon.reconciler.controllers

    def pid(self, service: str, index: int = 0) -> int | None:
        controller = self.controllers.get(service)
        replica = controller.replicas.get(index) if controller else None
        return replica.pid if replica else None

    def of_type(self, kind: str, service: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type.value == kind and (service is None or e.service == service)]

    until = staticmethod(Stack.until)
