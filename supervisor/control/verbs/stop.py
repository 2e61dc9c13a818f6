"""``supervise stop NAME...|--all``: stop services and hold them stopped until a ``start`` (a
reload or a new version does not start them again)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ServiceCommand

if TYPE_CHECKING:
    from ...daemon import Daemon
    from ...execute.service import ServiceController


class Stop(ServiceCommand):
    """Server: cancel each service's fetch or build under way, hold it (its replicas stop:
    signal, stop_timeout, kill); reply with their status rows once they have stopped."""

    name = "stop"
    help = "stop services and hold them stopped until a start"

    async def act(self, daemon: Daemon, controllers: list[ServiceController]) -> None:
        import asyncio

        # a fetch or build under way is part of the service: it ends too (its git processes, its
        # build's process group: signal, then SIGKILL after 5 s), and the reply waits for it
        cancelled = [t for c in controllers for t in daemon.reconciler.cancel_prepare(c.name)]
        await asyncio.gather(*(c.hold("stopped by user") for c in controllers))
        if cancelled:
            await asyncio.wait(cancelled, timeout=15)
