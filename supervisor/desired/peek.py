"""What the client verbs read of ``services.toml`` without validating it: the file's bytes
(regular files only), its ``[supervise]`` table, ``state_dir`` and ``runtime``.

Kept apart from :mod:`supervisor.desired.config` so that ``supervise status`` imports neither the
validator nor the model (dataclasses, inspect, the graph): the whole status command must stay
under 100 ms with 2,000 services (issue 17), and imports were half of it. Only the standard
library and tomli are imported here; a file that cannot be read this way falls back to
:func:`supervisor.desired.config.load`, imported then, for its located error.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Diagnostic

#: Files larger than this (bytes) are refused, never read whole (a config is a few KB).
MAX_FILE_BYTES = 1 << 20


def default_config_path() -> Path:
    """``$SUPERVISE_CONFIG`` if set, else ``./services.toml``."""
    return Path(os.environ.get("SUPERVISE_CONFIG") or "services.toml")


def escape(text: str) -> str:
    """``text`` with every control, format (bidi overrides, zero-width), separator, surrogate
    and unassigned character written as a Python escape (``\\x1b``, ``\\u202e``), so that a
    diagnostic is one line that shows what the file holds and cannot restyle a terminal
    (CVE-2021-42574, "Trojan Source")."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class ConfigError(Exception):
    """The config file cannot be used. ``diagnostics`` holds every mistake found, in order
    (:class:`supervisor.desired.config.Diagnostic`; defined here so that the client verbs can catch
    it without importing the validator)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Opened with O_NONBLOCK and checked with fstat before reading, so a FIFO or a device under
    a regular-looking name raises (never blocks). Raises OSError, or ValueError for a file
    that is not regular or is larger than ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{path} is {info.st_size} bytes, more than the {limit} allowed")
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ValueError(f"{path} is more than the {limit} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def fast_data(text: str) -> dict[str, Any] | None:
    """The file's data by tomli (the stdlib's tomllib, compiled with mypyc: twice as fast), or
    None when it refuses the file (tomlkit then reports why: see :mod:`supervisor.desired.config`)."""
    try:
        import tomli as toml_reader
    except ImportError:  # pragma: no cover - tomli is a dependency; tomllib is the same parser
        import tomllib as toml_reader  # type: ignore[no-redef]
    try:
        return toml_reader.loads(text)
    except (ValueError, OverflowError, RecursionError, TypeError):  # TOMLDecodeError is a ValueError
        return None


#: the last file the client helpers parsed: ((length, hash) of its bytes, its [supervise]
#: table ({} when missing, None when it is not TOML)); small on purpose: a daemon keeps it
_peeked: tuple[tuple[int, int], Any] | None = None


def peek(path: Path) -> tuple[bytes, Any]:
    """``(bytes, [supervise] table)`` of the file at ``path`` by tomli, no validation (the
    table is None when the file is not TOML). The file is read at each call, but bytes equal to
    the last ones are not parsed again: state_dir_of and runtime_of both ask for every client
    verb, and parsing a 2,000-service file twice cost a third of a `supervise status`.
    Raises OSError or ValueError (read_regular_file)."""
    global _peeked
    raw = read_regular_file(path)
    key = (len(raw), hash(raw))
    if _peeked is not None and _peeked[0] == key:
        return raw, _peeked[1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        section = None
    else:
        section = supervise_table(text)
    _peeked = (key, section)
    return raw, section


#: A line that may open a table (``[name]``, ``[[name]]``); also a line of a multi-line array
#: or string that starts with ``[``: see :func:`supervise_table` for why that is harmless.
_HEADER = re.compile(r"^[ \t]*\[", re.MULTILINE)
#: A header line whose first key may be ``supervise``: bare ``supervise...``, or any quoted key
#: (``["supervise"]``, ``['\u0073upervise']``), so that no spelling of it is missed.
_MAYBE_SUPERVISE = re.compile(r"^[ \t]*\[\[?[ \t]*(?:supervise|[\"'])", re.MULTILINE)
_MISSING = object()


def supervise_table(text: str) -> Any:
    """The ``[supervise]`` table of the TOML ``text`` ({} when it has none; None when the
    file is not TOML), by tomli; when it can, without parsing the services (a 2,000-service
    file took tomli 6-12 ms, a tenth of a `supervise status`: issue 17).

    The file is cut at the first table header that cannot name ``supervise`` (``[services.a]``);
    only the part before it is parsed, and only when no header after the cut may name
    ``supervise`` in any spelling (else the whole file is). That part holds every way TOML has to
    write the table: the top-level keys (``supervise.state_dir = ...``, ``supervise = {...}``)
    come before the first header, and the rest of the file is under headers that are not
    ``supervise``'s. A cut inside a multi-line string or array (a line of it starting with ``[``)
    leaves that value open at the end of the part: tomli refuses the part, and the whole file is
    parsed. So the answer is the whole file's whenever the whole file is TOML; a broken file
    whose part before the cut is TOML still gives its ``[supervise]`` table (``state_dir``
    is what `status` needs to reach the supervisor while a save is under way).
    """
    cut = len(text)
    for header in _HEADER.finditer(text):
        if not _MAYBE_SUPERVISE.match(text, header.start()):
            cut = header.start()
            break
    if cut < len(text) and _MAYBE_SUPERVISE.search(text, cut) is None:
        part = fast_data(text[:cut])
        if part is not None:
            return part.get("supervise", {})
    data = fast_data(text)
    return None if data is None else data.get("supervise", {})


def runtime_of(path: str | os.PathLike[str]) -> str:
    """``[supervise] runtime`` of the file, quickly (tomli, no validation; "local" when the
    file cannot be read that way): which way the client verbs go.

    A file whose bytes do not hold the word ``runtime`` (nor a ``\\u`` escape, which could
    spell it in a quoted key) cannot set it: "local" without parsing, which spares
    ``supervise run`` a whole parse of the file before its own (~40 ms at 2,000 services)."""
    try:
        raw = read_regular_file(Path(path))
    except (OSError, ValueError):
        return "local"
    if b"runtime" not in raw and b"\\u" not in raw and b"\\U" not in raw:
        return "local"
    try:
        _raw, section = peek(Path(path))
    except (OSError, ValueError):
        return "local"
    value = section.get("runtime", "local") if isinstance(section, dict) else "local"
    return value if isinstance(value, str) else "local"


def state_dir_of(path: str | os.PathLike[str]) -> Path:
    """Only ``[supervise].state_dir`` of the file at ``path``, quickly (tomli, no
    validation): what the CLI's client verbs need to find the control socket. Falls back to a
    full :func:`supervisor.desired.config.load` (and its ConfigError) when the file cannot be read
    that way."""
    path = Path(path)
    try:
        text, section = peek(path)
    except (OSError, ValueError):
        return _load_state_dir(path)  # raises the located ConfigError
    if section is not None:
        try:
            value = section.get("state_dir", ".supervise") if isinstance(section, dict) else None
            if isinstance(value, str):
                return (path.resolve().parent / os.path.expanduser(value)).resolve()
        except (OSError, ValueError, RuntimeError):
            pass
    elif fast_data(text.decode("utf-8", "replace")) is None:
        # The file is broken (a save under way, a typo): exactly when `supervise status` is
        # wanted. Find state_dir by its line, or use the default.
        import re

        match = re.search(r"(?m)^\s*state_dir\s*=\s*[\"']([^\"'\n\0]*)[\"']", text.decode(errors="replace"))
        value = match.group(1) if match else ".supervise"
        try:
            return (path.resolve().parent / os.path.expanduser(value)).resolve()
        except (OSError, ValueError, RuntimeError):
            pass
    return _load_state_dir(path)


def _load_state_dir(path: Path) -> Path:
    from .config import load

    return load(path).settings.state_dir
