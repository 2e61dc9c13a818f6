"""Duration strings as used in services.toml: ``"500ms"``, ``"10s"``, ``"1m30s"``, ``"2h"``.

A bare number (int or float) is seconds. The unit letters follow Go's ``time.ParseDuration``
and systemd.time(7): ``ms``, ``s``, ``m``, ``h``, ``d`` (``us`` too).
"""

from __future__ import annotations

import math
import re

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds (float >= 0).

    Raises ValueError with a human message for anything else (negative numbers, unknown units,
    empty strings, booleans).
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"10s\", got a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):  # TOML has nan and inf
            raise ValueError(f"duration must be a finite number of seconds, got {value}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"10s\", got {type(value).__name__}")
    text = value.strip().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if not match:
            raise ValueError(
                f"bad duration {value!r}: use a number with a unit ms, s, m, h or d, e.g. \"1m30s\"")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """Short human form of a number of seconds: ``"850ms"``, ``"12s"``, ``"3m4s"``, ``"2h5m"``."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
