"""``ping``: is a supervisor there, which one (no ``supervise ping``: programs send it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .base import Command

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Ping(Command):
    """Reply ``{"pid", "version", "revision", "config", "upgrade"}``: the supervisor's pid, its
    version (and the commit it was installed from by a self-update, else None), its file, and
    the outcome of the last self-update (``{"ok", "id", "from", "to"}`` or ``{"ok": false,
    "error"}``; None before any), which ``supervise upgrade`` waits for."""

    name = "ping"

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        from ... import __version__

        return {"pid": os.getpid(), "version": __version__, "revision": daemon.revision, "config": str(daemon.path),
                "upgrade": daemon.last_upgrade}
