"""Terminal facts, kept light (the CLI imports this on every call)."""

from __future__ import annotations

import os
from typing import IO


def use_colour(stream: IO[str]) -> bool:
    """Colour only on a terminal and without ``NO_COLOR`` (https://no-color.org)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
