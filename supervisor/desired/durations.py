"""Duration strings as used in services.toml: ``"500ms"``, ``"10s"``, ``"1m30s"``, ``"2h"``.

A bare number (int or float) is seconds. The unit letters follow Go's ``time.ParseDuration``
and systemd.time(7): ``ms``, ``s``, ``m``, ``h``, ``d`` (``us`` too).
"""

from __future__ import annotations

import math
import re

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)")
#: The longest duration accepted, in seconds (about 10 years): anything longer is a typo, and
#: timers, thread waits and ``time.monotonic() + d`` all stay well inside their ranges.
MAX_DURATION = 10 * 365 * 86400.0
#: The largest size accepted, in bytes (1 PiB).
MAX_SIZE = 1 << 50


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds (float, 0 <= seconds <= :data:`MAX_DURATION`).

    Raises ValueError with a human message for anything else (negative numbers, unknown units,
    empty strings, booleans, nan, inf, numbers past MAX_DURATION).
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"10s\", got a boolean")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):  # TOML has nan and inf
            raise ValueError(f"duration must be a finite number of seconds, got {value}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {_short(value)}")
        if value > MAX_DURATION:
            raise ValueError(f"duration must be at most {MAX_DURATION:.0f} seconds (10 years), got {_short(value)}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"10s\", got {type(value).__name__}")
    text = value.strip().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if not match or len(match.group(1)) > 30:
            raise ValueError(
                f"bad duration {_short(value)}: use a number with a unit ms, s, m, h or d, e.g. \"1m30s\"")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not total <= MAX_DURATION:
        raise ValueError(f"duration must be at most {MAX_DURATION:.0f} seconds (10 years), got {_short(value)}")
    return total


def _short(value: object) -> str:
    """``repr(value)`` cut to 60 characters, for messages (a 400-digit number stays readable)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(value: object) -> int:
    """Bytes from ``"10MiB"``, ``"500kB"``, ``"1G"`` or a whole number of bytes (IEC and SI
    units, as systemd.resource-control(5) reads them, except that a bare ``K`` is 1000).

    Raises ValueError for anything else.
    """
    if isinstance(value, bool):
        raise ValueError('expected a size like "10MiB", got a boolean')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {_short(value)}")
        if value > MAX_SIZE:
            raise ValueError(f"size must be at most {MAX_SIZE} bytes (1 PiB), got {_short(value)}")
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a size like "10MiB", got {type(value).__name__}')
    match = re.fullmatch(r"\s*(\d{1,30}(?:\.\d{1,30})?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f'bad size {_short(value)}: use a number with a unit B, kB, KiB, MB, MiB, GB or GiB')
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not size <= MAX_SIZE:
        raise ValueError(f"size must be at most {MAX_SIZE} bytes (1 PiB), got {_short(value)}")
    return int(size)


def parse_since(value: str) -> float:
    """A ``--since`` value as seconds back from now: a duration, ``"10m"``, or the same with a
    minus, ``"-10m"``, as ``journalctl --since -10m`` writes "ten minutes ago" (both mean the
    past; a since in the future means nothing). Raises ValueError (one line) as
    :func:`parse_duration` does."""
    text = value.strip()
    inner = text[1:] if text.startswith("-") and len(text) > 1 else text
    try:
        return parse_duration(inner)
    except ValueError as exc:
        if inner is text:
            raise
        raise ValueError(str(exc).replace(_short(inner), _short(value))) from None
