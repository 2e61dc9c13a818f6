"""``supervise restart NAME...|--all``: restart services (not counted towards the start limit);
dependents whose ``depends_on`` says ``restart = true`` restart with them, in compose's order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ServiceCommand

if TYPE_CHECKING:
    from ...daemon import Daemon
    from ...execute.service import ServiceController


class Restart(ServiceCommand):
    """Server: dependents that asked for it stop first (deepest first), the services asked for
    restart level by level, then the plan starts the dependents again, each after its
    dependencies; reply with the status rows of the services asked for."""

    name = "restart"
    help = "restart services (not counted towards the start limit)"

    async def act(self, daemon: Daemon, controllers: list[ServiceController]) -> None:
        import asyncio

        from ...reconciler import dependency_levels

        reconciler = daemon.reconciler
        # dependents that asked for it (depends_on ... restart = true) restart too, after
        names = {c.name for c in controllers}
        specs = {n: c.spec for n, c in reconciler.controllers.items()}
        for level in dependency_levels(specs):
            for name in level:
                if name not in names and any(d.restart and d.service in names for d in specs[name].depends_on):
                    names.add(name)
        roots = {c.name for c in controllers}
        # dependents stop first (deepest first), then the asked-for services restart, then the
        # plan starts the dependents again, each after its dependencies (compose's order)
        for level in reversed(dependency_levels(specs)):
            await asyncio.gather(*(reconciler.controllers[n].stop_all("dependency restarts")
                                   for n in level if n in names - roots))
        for level in dependency_levels(specs):
            await asyncio.gather(*(reconciler.controllers[n].user_restart() for n in level if n in roots))
        await reconciler.apply(daemon.desired)
