"""``supervise stop NAME...|--all``: stop services and hold them stopped until a ``start`` (a
reload or a new version does not start them again)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ServiceCommand

if TYPE_CHECKING:
    from ...daemon import Daemon
    from ...execute.service import ServiceController


class Stop(ServiceCommand):
    """Server: hold each service (its replicas stop: signal, stop_timeout, kill); reply with
    their status rows once they have stopped."""

    name = "stop"
    help = "stop services and hold them stopped until a start"

    async def act(self, daemon: Daemon, controllers: list[ServiceController]) -> None:
        import asyncio

        await asyncio.gather(*(c.hold("stopped by user") for c in controllers))
