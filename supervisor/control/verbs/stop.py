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
    """Server: hold each service (its replicas stop: signal, stop_timeout, kill); reply with
    their status rows once they have stopped."""

    name = "stop"
    help = "stop services and hold them stopped until a start"

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        import asyncio

        try:
            controllers = self.controllers(daemon, request)
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0], "code": Code.UNKNOWN_SERVICE}
        await asyncio.gather(*(c.hold("stopped by user") for c in controllers))
        return {"services": daemon.status_rows([c.name for c in controllers])}
