"""``ping``: is a supervisor there, which one (no ``supervise ping``: programs send it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ... import __version__
from .base import Command

if TYPE_CHECKING:
    import asyncio

    from ...daemon import Daemon


class Ping(Command):
    """Reply ``{"pid", "version", "config"}``: the supervisor's pid, its version and its file."""

    name = "ping"

    async def handle(self, daemon: Daemon, request: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "config": str(daemon.path)}
