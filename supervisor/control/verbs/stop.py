"""``supervise stop NAME...|--all``: stop services and hold them stopped until a ``start`` (a
reload or a new version does not start them again)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...decide.errors import Code
from .base import ServiceCommand

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Stop(ServiceCommand):
    """Server: cancel each service's fetch or build under way, hold it (its replicas stop:
    signal, stop_timeout, kill); reply with their status rows once they have stopped."""

    name = "stop"
    help = "stop services and hold them stopped until a start"

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        import asyncio

        try:
            controllers = self.controllers(daemon, request)
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0], "code": Code.UNKNOWN_SERVICE}
        # a fetch or build under way is part of the service: it ends too (its git processes, its
        # build's process group: signal, then SIGKILL after 5 s), and the reply waits for it
        cancelled = [t for c in controllers for t in daemon.reconciler.cancel_prepare(c.name)]
        await asyncio.gather(*(c.hold("stopped by user") for c in controllers))
        if cancelled:
            await asyncio.wait(cancelled, timeout=15)
        return {"services": daemon.status_rows([c.name for c in controllers])}
