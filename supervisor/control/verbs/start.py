"""``supervise start NAME...|--all``: start services a user stopped, or failed ones (the hold
is released and the start limit forgotten, as ``systemctl start`` after ``reset-failed``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ServiceCommand

if TYPE_CHECKING:
    from ...daemon import Daemon
    from ...execute.service import ServiceController


class Start(ServiceCommand):
    """Server: release each service, apply the desired state; reply with their status rows."""

    name = "start"
    help = "start services a user stopped, or failed ones"

    async def act(self, daemon: Daemon, controllers: list[ServiceController]) -> None:
        for controller in controllers:
            controller.release()
        await daemon.reconciler.apply(daemon.desired)
