"""``supervise start NAME...|--all``: start services a user stopped, or failed ones (the hold
is released and the start limit forgotten, as ``systemctl start`` after ``reset-failed``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...decide.errors import Code
from .base import ServiceCommand

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Start(ServiceCommand):
    """Server: release each service, apply the desired state; reply with their status rows."""

    name = "start"
    help = "start services a user stopped, or failed ones"

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        try:
            controllers = self.controllers(daemon, request)
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0], "code": Code.UNKNOWN_SERVICE}
        for controller in controllers:
            controller.release()
        await daemon.reconciler.apply(daemon.desired)
        return {"services": daemon.status_rows([c.name for c in controllers])}
