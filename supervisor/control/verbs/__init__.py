"""The control verbs, one file each with its client half (``supervise VERB``: arguments, the
request, what is printed, the exit code) and its server half (the supervisor's handler); the
shape is :class:`.base.Command`. A new verb is a new file here and a line in :data:`COMMANDS`.
"""

from __future__ import annotations

from .base import Command
from .events import Events
from .ping import Ping
from .plan import Plan
from .reload import Reload
from .restart import Restart
from .start import Start
from .status import Status
from .stop import Stop

#: Every verb the control socket answers, by name.
COMMANDS: dict[str, Command] = {c.name: c for c in (Ping(), Status(), Plan(), Reload(), Start(), Stop(), Restart(), Events())}
