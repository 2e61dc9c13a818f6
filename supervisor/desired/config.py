"""services.toml (format v1, see services.toml(5)) -> :class:`~supervisor.desired.model.Desired`.

Parsing uses tomlkit; validation collects *every* mistake before raising, each located like a
compiler error: ``services.toml:12:5: services.api: unknown key "comand" (did you mean
"command"?)``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..decide.graph import find_cycle
# Re-exported: what the client verbs read without validating lives in peek (fast imports).
from .peek import (  # noqa: F401
    MAX_FILE_BYTES, ConfigError, default_config_path, escape, fast_data, read_regular_file, runtime_of, state_dir_of,
)
from .durations import parse_duration, parse_size
from .model import (
    Check,
    ImageBuild,
    Backoff,
    Condition,
    Dependency,
    Desired,
    LogPolicy,
    RestartPolicy,
    ServiceSpec,
    Settings,
    SourceSpec,
    StartLimit,
)

#: A service name becomes a file name (logs, checkouts, state): letters, digits, ``_ . -``.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
#: ``NAME[:TAG][@DIGEST]``, Docker's reference grammar in short (the engine checks the rest).
_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?$")
_INDEX_URL = re.compile(r"^(https?|file)://\S+$")
#: Linux limits a path may not pass (NAME_MAX, PATH_MAX - 1 for the final NUL), in bytes.
NAME_MAX, PATH_MAX = 255, 4095

TOP_KEYS = ("supervise", "env", "services")
SUPERVISE_KEYS = ("state_dir", "runtime", "poll", "keep_versions", "log", "kubernetes", "docker_host", "event_history", "self")
SERVICE_KEYS = (
    "source", "build", "command", "cwd", "env", "env_file", "replicas", "restart", "backoff",
    "start_limit", "stop_signal", "stop_timeout", "depends_on", "ready", "live", "update",
    "watch", "shell", "user", "log", "kubernetes", "runtime", "ports", "volumes", "good_after",
)
LOG_KEYS = ("max_size", "backups", "timestamps")
SOURCE_KEYS = ("git", "ref", "poll", "path", "mode", "pip", "index", "extra_index", "image")
#: The values of a local source's ``mode``.
SOURCE_MODES = ("snapshot", "in-place")
IMAGE_BUILD_KEYS = ("dockerfile", "context")
RUNTIMES = ("local", "container", "kubernetes")
#: Runtimes nothing in this version runs yet: checked in full (their keys too), then refused with
#: one located error. (Containers run since the engine routes them to executors/containers.py.)
UNAVAILABLE_RUNTIMES: tuple[str, ...] = ()
#: Runtimes the local supervisor (Daemon, LocalRuntime) runs. A "kubernetes" file is checked
#: (`check`), rendered (`render`) and run by supervisor.kube's own converge loop (`supervise run`
#: dispatches there before any Daemon exists); a running local supervisor refuses a reload to it.
AVAILABLE_RUNTIMES = ("local", "container")
CHECK_KINDS = ("tcp", "http", "exec")
CHECK_KEYS = CHECK_KINDS + ("interval", "timeout", "start_period", "retries")
#: Bounds on ``watch``: how many globs, how long each, how many wildcards each.
MAX_GLOBS, GLOB_LENGTH, GLOB_WILDCARDS = 64, 256, 16


#: ``${VAR}``, ``${VAR:-default}``: for keys where supervise expands nothing.
_UNEXPANDED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-[^}]*)?\}")


@dataclass(frozen=True)
class Diagnostic:
    """One located config mistake. ``line``/``col`` are 1-based (0 when unknown)."""

    path: str
    line: int
    col: int
    message: str
    service: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.col}" if self.line else self.path
        who = f" services.{self.service}:" if self.service else ""
        return escape(f"{where}:{who} {self.message}")


def load(path: str | os.PathLike[str], *, runtimes: tuple[str, ...] = AVAILABLE_RUNTIMES) -> Desired:
    """Read and validate the config file at ``path``.

    ``runtimes`` are the ``runtime`` values the caller can act on (``check`` and ``render``
    pass :data:`RUNTIMES`; running defaults to :data:`AVAILABLE_RUNTIMES`, so that a file asking
    for a cluster is refused rather than run as local processes).
    Raises ConfigError (with every diagnostic) for unreadable files (also a FIFO, a device or
    a file over :data:`MAX_FILE_BYTES`: never read), TOML syntax errors and invalid contents.
    Nothing else escapes: an unexpected failure is a ConfigError naming the file.
    """
    path = Path(path)
    try:
        data = read_regular_file(path)
    except (OSError, ValueError) as exc:
        raise ConfigError([Diagnostic(str(path), 0, 0, f"cannot read config: {exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # located: the line and column of the first bad byte
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
        raise ConfigError([Diagnostic(str(path), line, col, f"the file is not UTF-8 text: {exc.reason} "
                                      f"(byte 0x{data[exc.start]:02x})")]) from None
    return parse(text, path, runtimes=runtimes)


#: Larger config files are refused unread (:data:`supervisor.desired.peek.MAX_FILE_BYTES`): tomlkit
#: parses about 300 kB/s, and a reload must stay a matter of seconds. 1 MiB holds some 10,000
#: services.
#: At most this many diagnostics are listed (then one line says how many more there were).
MAX_DIAGNOSTICS = 200


def parse(text: str, path: str | os.PathLike[str] = "services.toml", *,
          runtimes: tuple[str, ...] = AVAILABLE_RUNTIMES) -> Desired:
    """Validate config ``text``; ``path`` names it in errors and anchors relative paths;
    ``runtimes`` as for :func:`load`.

    Raises ConfigError and nothing else: a failure the validation did not foresee (a bug) is
    reported as a ConfigError naming the file, so that a bad file can never stop a supervisor.
    """
    try:
        return _parse(text, Path(path), runtimes)
    except ConfigError:
        raise
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - the last line of defence
        message = f"cannot validate this file ({type(exc).__name__}: {str(exc)[:200]})"
        raise ConfigError([Diagnostic(str(path), 0, 0, message)]) from None


def _parse(text: str, path: Path, runtimes: tuple[str, ...]) -> Desired:
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError([Diagnostic(str(path), 0, 0, f"the file is larger than {MAX_FILE_BYTES} bytes")])
    if not text.strip():
        # An empty file is far more often a save in progress (or `: > file`) than a wish to
        # stop everything; that wish is written `[services]`.
        raise ConfigError([Diagnostic(str(path), 1, 1, "the file is empty; to run no service, write [services]")])
    # tomli (the stdlib's tomllib, mypyc-compiled) reads a 2,000-service file in ~15 ms where
    # tomlkit takes over a second; tomlkit only runs when tomllib refuses the file, to report the
    # syntax error exactly as before (tomlkit's message, line and column). Both implement
    # TOML 1.0 and give the same plain dicts, lists, strings, numbers and datetimes.
    data = fast_data(text)
    if data is None:
        data = _tomlkit_data(text, path)
    return _Validator(data, _LazyLocator(text), path, runtimes).run()


def _tomlkit_data(text: str, path: Path) -> dict[str, Any]:
    """The file's data by tomlkit; raises the located ConfigError of its syntax error."""
    import tomlkit  # imported here: only a file tomllib refused (and the writers) need it
    import tomlkit.exceptions

    try:
        document = tomlkit.parse(text)
        return document.unwrap()
    except tomlkit.exceptions.TOMLKitError as exc:
        # ParseError's col is a 0-based offset; KeyAlreadyPresent (a key repeated in one
        # table) carries no position at all, so find the repeated key ourselves.
        if isinstance(exc, tomlkit.exceptions.ParseError):
            line, col = exc.line, exc.col + 1
        else:
            line, col = _Locator(text).duplicate()
        message = str(exc).split(" at line ")[0]
        if "'\\x00'" in message or message.startswith("Unexpected end of file"):
            # tomlkit's end-of-input sentinel is a NUL: say "end of file", at the end of the
            # last line that has content (where the unclosed thing is), not past it
            lines = text.rstrip().split("\n")
            line, col = len(lines), len(lines[-1]) + 1
            message = "unexpected end of file (a value, or a closing ], } or quote, is missing)"
        raise ConfigError([Diagnostic(str(path), line, col, f"TOML syntax error: {message}")]) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a date tomlkit cannot hold
        raise ConfigError([Diagnostic(str(path), 0, 0, f"TOML syntax error: {exc}")]) from None


def located(path: str | os.PathLike[str], problems: list[tuple[tuple[str, ...], str]]) -> ConfigError:
    """A ConfigError whose diagnostics point at the keys of each ``(keys, message)`` in the file
    at ``path`` (for mistakes found after validation, such as ``supervise render``'s: the same
    file:line:col as ``check`` gives). A file that cannot be read again gives line 0."""
    try:
        locator: Any = _LazyLocator(read_regular_file(Path(path)).decode("utf-8", "replace"))
    except (OSError, ValueError):
        locator = None
    diagnostics = []
    for keys, message in problems:
        line, col = locator.find(keys) if locator is not None else (0, 0)
        service = keys[1] if len(keys) >= 2 and keys[0] == "services" else None
        diagnostics.append(Diagnostic(str(path), line, col, message, service))
    return ConfigError(diagnostics)


def validate(data: dict[str, Any], path: str | os.PathLike[str]) -> Desired:
    """Validate a config given as data (what ``tomllib`` would give for the file), with the
    same rules and messages as :func:`parse`; ``path`` names it in errors (no line numbers)
    and anchors relative paths. Raises :class:`ConfigError`."""
    return _Validator(data, _Locator(""), Path(path)).run()


#: The defaults every service without its own shares (frozen dataclasses).
_DEFAULT_BACKOFF = Backoff()
_DEFAULT_START_LIMIT = StartLimit()

#: "did you mean" compares a word with at most this many candidates, each at most
#: SUGGEST_LENGTH characters long: difflib's ratio is quadratic in length.
SUGGEST_CANDIDATES = 50
SUGGEST_LENGTH = 100


def suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean "x"?)`` for the closest of ``choices``, or ``""``.

    Bounded work: only the first :data:`SUGGEST_CANDIDATES` choices of a similar length are
    compared (difflib, cutoff 0.6), and a word longer than :data:`SUGGEST_LENGTH` gets none.
    """
    if len(word) > SUGGEST_LENGTH:
        return ""
    candidates = []
    for choice in choices:
        if isinstance(choice, str) and abs(len(choice) - len(word)) <= max(3, len(word) // 2):
            candidates.append(choice)
            if len(candidates) >= SUGGEST_CANDIDATES:
                break
    import difflib  # on the first mistake only: the daemon's start imports no difflib (0.2 MB)

    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _show(value: Any) -> str:
    """``repr(value)``, cut to 80 characters (a message quotes a value, never a megabyte)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Locator:
    """Finds the line and column of a key path in TOML text, best effort.

    Handles ``[table]`` headers, ``key = value`` lines, dotted keys and keys inside inline
    tables on the same line. Falls back to the nearest enclosing table or key. Lines that
    begin inside a multi-line string (``\"\"\"`` or ``\'\'\'``) are text, never headers or
    keys (:func:`_string_lines` tracks strings like a TOML tokenizer). Lookups are dictionary
    reads, so locating thousands of errors stays linear.
    """

    _HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^(\s*)((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")

    def __init__(self, text: str):
        # (key path, line number, column, line text, where the value starts)
        self.entries: list[tuple[tuple[str, ...], int, int, str, int]] = []
        table: tuple[str, ...] = ()
        lines = text.splitlines()
        inside = _string_lines(text)
        for number, line in enumerate(lines, start=1):
            if number in inside:
                continue
            line = line[:10_000]  # keys and headers start lines; a megabyte value is not looked at
            header = self._HEADER.match(line)
            if header:
                table = self._split(header.group(1))
                self.entries.append((table, number, line.index("[") + 1, line, len(line)))
                continue
            key = self._KEY.match(line)
            if key:
                full = table + self._split(key.group(2))
                self.entries.append((full, number, len(key.group(1)) + 1, line, key.end()))
        # key path -> indices of its entries (file order); any prefix -> its first entry
        self.exact: dict[tuple[str, ...], list[int]] = {}
        self.first_below: dict[tuple[str, ...], int] = {}
        for index, (path, *_rest) in enumerate(self.entries):
            self.exact.setdefault(path, []).append(index)
            for depth in range(1, len(path) + 1):
                self.first_below.setdefault(path[:depth], index)

    _PART = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^.\"'\s]+")

    @classmethod
    def _split(cls, dotted: str) -> tuple[str, ...]:
        """Dotted key -> parts; quoted parts may hold dots (``services."a.b"``) and escapes."""
        parts = []
        for part in cls._PART.findall(dotted):
            if part.startswith('"'):
                try:
                    part = json.loads(part)
                except ValueError:
                    part = part[1:-1]
            elif part.startswith("'"):
                part = part[1:-1]
            parts.append(part)
        return tuple(parts)

    def duplicate(self) -> tuple[int, int]:
        """(line, column) of the first key path defined a second time, or (0, 0)."""
        seen: set[tuple[str, ...]] = set()
        for path, line, col, _text, _start in self.entries:
            if path in seen:
                return line, col
            seen.add(path)
        return 0, 0

    def find(self, keys: tuple[str, ...]) -> tuple[int, int]:
        """1-based (line, column) of ``keys``, or of its closest located ancestor; (0, 0)."""
        if keys in self.exact:
            _path, line, col, _text, _start = self.entries[self.exact[keys][0]]
            return line, col
        for depth in range(len(keys) - 1, 0, -1):
            found = self.exact.get(keys[:depth])
            if not found:
                continue
            # maybe inside an inline table on this line
            inner = re.compile(r"[{,]\s*[\"']?" + re.escape(keys[-1]) + r"[\"']?\s*=")
            for index in found:
                _path, line, _col, text, value_start = self.entries[index]
                match = inner.search(text, value_start)
                if match:
                    return line, match.start() + 1 + len(match.group(0)) - len(match.group(0).lstrip("{, \t"))
            _path, line, col, _text, _start = self.entries[found[0]]
            return line, col
        if keys in self.first_below:  # only defined through sub-tables, e.g. ``[service.api]``
            _path, line, col, _text, _start = self.entries[self.first_below[keys]]
            return line, col
        return 0, 0


class _LazyLocator:
    """A :class:`_Locator` built on the first lookup: a valid file (the usual case, and every
    reload) never pays for locating keys."""

    def __init__(self, text: str):
        self._text = text
        self._locator: _Locator | None = None

    def find(self, keys: tuple[str, ...]) -> tuple[int, int]:
        if self._locator is None:
            self._locator = _Locator(self._text)
        return self._locator.find(keys)


def _string_lines(text: str) -> set[int]:
    """1-based numbers of the lines that *begin* inside a multi-line string.

    A small TOML tokenizer: comments, basic strings (with escapes), literal strings, and the
    multi-line forms of both; nothing else matters to where a line starts.
    """
    inside: set[int] = set()
    line, i, n = 1, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith('\"\"\"', i) or text.startswith("\'\'\'", i):
            quote = text[i:i + 3]
            i += 3
            while i < n:
                if quote[0] == '"' and text[i] == "\\":
                    if text[i + 1:i + 2] == "\n":
                        line += 1
                        inside.add(line)
                    i += 2
                    continue
                if text.startswith(quote, i):
                    i += 3
                    while i < n and text[i] == quote[0]:  # up to two quotes may end the string
                        i += 1
                    break
                if text[i] == "\n":
                    line += 1
                    inside.add(line)
                i += 1
        elif ch in "\"'":
            i += 1
            while i < n and text[i] != ch and text[i] != "\n":
                i += 2 if ch == '"' and text[i] == "\\" else 1
            if i < n and text[i] == ch:
                i += 1
        else:
            i += 1
    return inside


class _Validator:
    def __init__(self, data: dict[str, Any], locator: "_Locator | _LazyLocator", path: Path,
                 runtimes: tuple[str, ...] = AVAILABLE_RUNTIMES):
        self.data = data
        self.runtimes = runtimes
        self.locator = locator
        self.path = path
        self.base = path.resolve().parent if str(path) else Path.cwd()
        self.diagnostics: list[Diagnostic] = []
        self.dropped = 0  # diagnostics past MAX_DIAGNOSTICS, counted only
        self.suggestions = 100  # did-you-mean lookups left: bounded work for any file
        self.default_log = LogPolicy()

    # -- reporting -------------------------------------------------------------------------

    def error(self, keys: tuple[str, ...], message: str) -> None:
        if len(self.diagnostics) >= MAX_DIAGNOSTICS:
            self.dropped += 1
            return
        line, col = self.locator.find(keys)
        service = keys[1] if len(keys) >= 2 and keys[0] == "services" else None
        self.diagnostics.append(Diagnostic(str(self.path), line, col, message, service))

    def suggest(self, word: str, choices: tuple[str, ...] | list[str]) -> str:
        """:func:`suggest`, for the first 100 mistakes of a file only."""
        if self.suggestions <= 0:
            return ""
        self.suggestions -= 1
        return suggest(word, choices)

    def unknown_keys(self, keys: tuple[str, ...], table: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.error(keys + (key,), f'unknown key "{_cut(key)}"{self.suggest(key, allowed)}')

    # -- typed getters: return None after reporting an error --------------------------------

    def expect(self, keys: tuple[str, ...], value: Any, kind: type | tuple[type, ...], what: str) -> Any:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.error(keys, f'"{keys[-1]}" must be {what}, got a boolean')
            return None
        if not isinstance(value, kind):
            self.error(keys, f'"{keys[-1]}" must be {what}, got {_type_name(value)}')
            return None
        return value

    def duration(self, keys: tuple[str, ...], value: Any) -> float | None:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.error(keys, f'"{keys[-1]}": {exc}')
            return None

    def argv(self, keys: tuple[str, ...], value: Any) -> tuple[str, ...] | None:
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                self.error(keys, f'"{keys[-1]}": cannot split {_show(value)}: {exc}')
                return None
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            argv = list(value)
        else:
            got = _type_name(value)
            if isinstance(value, list):  # name the item that is not a string, not just "a list"
                index, item = next((i, item) for i, item in enumerate(value) if not isinstance(item, str))
                got = f"a list whose item {index + 1} is {_type_name(item)}"
            self.error(keys, f'"{keys[-1]}" must be a string or a list of strings, got {got}')
            return None
        if not argv or not argv[0]:
            self.error(keys, f'"{keys[-1]}" must not be empty')
            return None
        return tuple(argv)

    def env_table(self, keys: tuple[str, ...], value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            self.error(keys, f'"{keys[-1]}" must be a table of NAME = "value", got {_type_name(value)}')
            return {}
        env: dict[str, str] = {}
        for name, item in value.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                self.error(keys + (name,), f'bad environment variable name "{name}"')
            elif isinstance(item, bool):
                env[name] = "true" if item else "false"
            elif isinstance(item, float) and not math.isfinite(item):  # 1e400, inf, nan: TOML floats
                self.error(keys + (name,), f'env "{name}" is {item}, not a finite number: quote it if you mean "{item}"')
            elif isinstance(item, (str, int, float)):
                env[name] = str(item)
            else:
                self.error(keys + (name,), f'env "{name}" must be a string or a number, got {_type_name(item)}')
        return env

    def not_expanded(self, keys: tuple[str, ...], value: str | None) -> None:
        """An error for ``${VAR}`` in a key whose value is used as written (only ``command``,
        ``env`` and checks are expanded): caught by ``check`` instead of failing at start."""
        found = _UNEXPANDED.search(value or "")
        if found:
            self.error(keys, f'"{keys[-1]}" is used as written: {found.group(0)} is not expanded here '
                       "(${VAR} works in command, env and checks)")

    def relative_path(self, value: str) -> Path:
        return (self.base / os.path.expanduser(value)).resolve()

    def path_value(self, keys: tuple[str, ...], value: str, what: str = "path") -> Path | None:
        """``value`` resolved against the config folder, or None after reporting why it can
        never be a path: a NUL byte (reported by :meth:`strings`), a name over NAME_MAX (255
        bytes) or a whole over PATH_MAX (4095 bytes), text that is not UTF-8."""
        if "\0" in value:
            return None
        try:
            encoded = os.fsencode(value)
        except UnicodeError:
            self.error(keys, f'"{keys[-1]}": the {what} is not valid text')
            return None
        if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
            self.error(keys, f'"{keys[-1]}": a name in the {what} is longer than {NAME_MAX} bytes')
            return None
        try:
            path = self.relative_path(value)
        except (OSError, ValueError, RuntimeError) as exc:
            self.error(keys, f'"{keys[-1]}": bad {what}: {exc}')
            return None
        if len(os.fsencode(str(path))) > PATH_MAX:
            self.error(keys, f'"{keys[-1]}": the {what} is longer than {PATH_MAX} bytes')
            return None
        return path

    def strings(self, keys: tuple[str, ...], value: Any) -> None:
        """Report every string below ``value`` that holds a NUL byte: no path, argument,
        environment value or user name can (execve(2) and open(2) end strings there)."""
        if isinstance(value, str):
            if "\0" in value:
                self.error(keys, f'"{keys[-1] if keys else "value"}" holds a NUL character (\\0), '
                           'which no path, argument or environment value can hold')
            elif not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeError:  # a lone surrogate (only from parse(), never from a file)
                    self.error(keys, f'"{keys[-1] if keys else "value"}" is not valid Unicode text')
        elif isinstance(value, dict):
            for key, item in value.items():
                self.strings(keys + (key,), item)
        elif isinstance(value, list):
            for item in value:
                self.strings(keys, item)

    # -- the document ---------------------------------------------------------------------

    def run(self) -> Desired:
        data = self.data
        self.strings((), data)
        self.unknown_keys((), data, TOP_KEYS)
        settings = self.settings(data.get("supervise", {}))
        global_env = self.env_table(("env",), data.get("env", {})) if "env" in data else {}
        if not data:
            # Only comments: more likely half a save, or the wrong file, than a wish to stop
            # everything.
            self.error((), "the file has nothing but comments; to run no service, write [services]")
        services_table = data.get("services", {})
        services: dict[str, ServiceSpec] = {}
        if not isinstance(services_table, dict):
            self.error(("services",), '"services" must be a table of [services.NAME] tables')
            services_table = {}
        for name, table in services_table.items():
            spec = self.service(name, table, global_env)
            if spec is not None:
                services[name] = spec
        self.dependencies(services_table, services)
        kubernetes = None
        if settings.runtime == "kubernetes" or _mentions_kubernetes(data):
            from ..kube.schema import validate as validate_kubernetes  # its keys, located like ours

            kubernetes = validate_kubernetes(data, self.error)
            if settings.runtime != "kubernetes":  # services of a local file on a cluster
                services = {name: _on_cluster(spec, data, services_table) for name, spec in services.items()}
        if self.diagnostics:
            found = sorted(self.diagnostics, key=lambda d: (d.line, d.col))
            if self.dropped:
                found.append(Diagnostic(str(self.path), 0, 0, f"... and {self.dropped} more errors"))
            raise ConfigError(found)
        return Desired(settings=settings, services=MappingProxyType(services), path=self.path.resolve(),
                       kubernetes=kubernetes)

    def settings(self, table: Any) -> Settings:
        keys = ("supervise",)
        defaults = Settings(state_dir=self.relative_path(".supervise"))
        if not isinstance(table, dict):
            self.error(keys, '"supervise" must be a table')
            return defaults
        self.unknown_keys(keys, table, SUPERVISE_KEYS)
        state_dir, runtime, poll, keep = defaults.state_dir, defaults.runtime, defaults.poll, defaults.keep_versions
        if "state_dir" in table and self.expect(keys + ("state_dir",), table["state_dir"], str, "a path string"):
            state_dir = self.path_value(keys + ("state_dir",), table["state_dir"], "state_dir") or state_dir
        if "runtime" in table:
            runtime = table["runtime"]
            if runtime not in RUNTIMES:
                self.error(keys + ("runtime",), f'"runtime" must be one of {", ".join(RUNTIMES)}, got {_show(runtime)}{self.suggest(str(runtime), RUNTIMES)}')
                runtime = "local"
            elif runtime in UNAVAILABLE_RUNTIMES:
                self.error(keys + ("runtime",), "containers are not available in this version yet (runtime "
                           f'"{runtime}"): nothing runs from this file')
                runtime = "local"
            elif runtime not in self.runtimes:
                # Refused rather than quietly run here: a user asking for a cluster must not
                # get processes on this machine instead.
                self.error(keys + ("runtime",), f'runtime "{runtime}" is not run by a local supervisor '
                           f'(it runs: {", ".join(self.runtimes)}); start `supervise run` anew to converge the '
                           'cluster, or `supervise render` to print the manifests')
                runtime = "local"
        if "poll" in table:
            poll = self.duration(keys + ("poll",), table["poll"]) or poll
        if "keep_versions" in table:
            value = self.expect(keys + ("keep_versions",), table["keep_versions"], int, "a whole number")
            if value is not None and value < 1:
                self.error(keys + ("keep_versions",), '"keep_versions" must be at least 1')
            elif value is not None and value > 1000:
                self.error(keys + ("keep_versions",), '"keep_versions" must be at most 1000')
            elif value is not None:
                keep = value
        history = defaults.event_history
        if "event_history" in table:
            value = self.expect(keys + ("event_history",), table["event_history"], int, "a whole number of events")
            if value is not None and not 2 <= value <= 1_000_000:
                self.error(keys + ("event_history",), '"event_history" must be from 2 to 1000000 events')
            elif value is not None:
                history = value
        log = self.log_policy(keys + ("log",), table["log"], LogPolicy()) if "log" in table else LogPolicy()
        self.default_log = log
        docker_host = None
        if "docker_host" in table:
            docker_host = self.expect(keys + ("docker_host",), table["docker_host"], str,
                                      'an Engine API address ("unix:///run/podman/podman.sock", "tcp://host:2375")')
        self_source = self.self_source(keys + ("self",), table["self"]) if "self" in table else None
        self.global_runtime = runtime
        return Settings(state_dir=state_dir, runtime=runtime, poll=poll, keep_versions=keep, log=log,
                        docker_host=docker_host, event_history=history,
                        self_source=self_source)

    def self_source(self, keys: tuple[str, ...], value: Any) -> SourceSpec | None:
        """``self = { git = "URL-or-path", ref = "main", poll = "1h" }`` or ``self = { pip =
        "supervise>=0.2", index = URL, poll = "1h" }``: the source of supervise's own new
        versions, read by the same rules as a service's git or pip source."""
        if not isinstance(value, dict) or not ("git" in value or "pip" in value):
            self.error(keys, '"self" must be a table { git = "URL or path", ref = "main", poll = "1h" } '
                       'or { pip = "supervise>=0.2", poll = "1h" }')
            return None
        return self.source(keys, value)

    def service(self, name: str, table: Any, global_env: dict[str, str]) -> ServiceSpec | None:
        keys = ("services", name)
        errors_before = len(self.diagnostics)
        if not NAME_RE.match(name) or name in (".", ".."):
            self.error(keys, f'bad service name "{name}": use letters, digits, "_", "." and "-" (at most 100, not starting with "." or "-")')
        elif name.lower() == "supervise":
            self.error(keys, 'the service name "supervise" is reserved: the console and the logs label the '
                       "supervisor's own lines with it, so a service's output could pass for the supervisor's")
        if not isinstance(table, dict):
            self.error(keys, f'"services.{name}" must be a table')
            return None
        self.unknown_keys(keys, table, SERVICE_KEYS)
        get = lambda key: keys + (key,)  # noqa: E731

        shell = False
        if "shell" in table:
            shell = bool(self.expect(get("shell"), table["shell"], bool, "true or false"))

        command: tuple[str, ...] | None = None
        source_table = table.get("source")
        container = (table.get("runtime") == "container" or isinstance(table.get("build"), dict)
                     or (isinstance(source_table, dict) and "image" in source_table))
        if "command" not in table:
            if not container:  # a container may run its image's CMD
                self.error(keys, 'missing required key "command"')
        elif shell:
            if isinstance(table["command"], str) and table["command"].strip():
                command = (table["command"],)
            else:
                self.error(get("command"), '"command" must be a non-empty string when shell = true')
        else:
            command = self.argv(get("command"), table["command"])

        source = self.source(get("source"), table.get("source"))
        build = None
        image_build = None
        if isinstance(table.get("build"), dict):
            image_build = self.image_build(get("build"), table["build"])
        elif "build" in table:
            build = self.argv(get("build"), table["build"])
        container_runtime, ports, volumes = self.container(keys, table, source)
        if command is None and "command" not in table and (
                container_runtime == "container" or (container_runtime == "kubernetes" and image_build is not None)):
            command = ()  # the image's CMD

        cwd = "."
        if "cwd" in table and self.expect(get("cwd"), table["cwd"], str, "a path string") is not None:
            cwd = table["cwd"]
            self.not_expanded(get("cwd"), cwd)
            if (source is not None and source.kind == "path" and source.path is not None and "\0" not in cwd
                    and not _UNEXPANDED.search(cwd)
                    and build is None and not os.path.isabs(os.path.expanduser(cwd)) and _exists(source.path, folder=True)):
                # A local folder without a build runs as it is: a relative cwd missing from it
                # can never run. (A build may make it; a git checkout is not here yet; an
                # absolute cwd is this machine's business, e.g. a mount: start-failed says so.)
                folder = self.path_value(get("cwd"), str(source.path / cwd), "cwd")
                if folder is not None and not _exists(folder, folder=True):
                    self.error(get("cwd"), f'cwd "{_cut(cwd)}" does not exist in the source folder ({_cut(str(folder))})')

        env = dict(global_env)
        env_file = None
        if "env_file" in table and self.expect(get("env_file"), table["env_file"], str, "a path string") is not None:
            env_file = self.path_value(get("env_file"), table["env_file"], "env_file")
            if env_file is not None:
                env.update(self.env_file(get("env_file"), table["env_file"], env_file))
        if "env" in table:
            env.update(self.env_table(get("env"), table["env"]))

        replicas = 1
        if "replicas" in table:
            value = self.expect(get("replicas"), table["replicas"], int, "a whole number")
            if value is not None and not 0 <= value <= 1000:
                self.error(get("replicas"), '"replicas" must be between 0 and 1000')
            elif value is not None:
                replicas = value

        restart = RestartPolicy.ALWAYS
        if "restart" in table:
            choices = tuple(p.value for p in RestartPolicy)
            if table["restart"] in choices:
                restart = RestartPolicy(table["restart"])
            else:
                self.error(get("restart"), f'"restart" must be one of {", ".join(choices)}, got {_show(table["restart"])}{self.suggest(str(table["restart"]), choices)}')

        backoff = _DEFAULT_BACKOFF  # frozen: one shared default, not an object per service
        if "backoff" in table:
            backoff = self.backoff(get("backoff"), table["backoff"])
        start_limit = _DEFAULT_START_LIMIT
        if "start_limit" in table:
            start_limit = self.start_limit(get("start_limit"), table["start_limit"])

        stop_signal = signal.SIGTERM.value
        if "stop_signal" in table:
            stop_signal = self.signal(get("stop_signal"), table["stop_signal"]) or stop_signal
        stop_timeout = 10.0
        if "stop_timeout" in table:
            value = self.duration(get("stop_timeout"), table["stop_timeout"])
            stop_timeout = value if value is not None else stop_timeout

        ready = self.check(get("ready"), table["ready"]) if "ready" in table else None
        live = self.check(get("live"), table["live"]) if "live" in table else None
        good_after = self.duration(get("good_after"), table["good_after"]) if "good_after" in table else None

        update = "recreate"
        if "update" in table:
            if table["update"] in ("recreate", "start-first"):
                update = table["update"]
            else:
                self.error(get("update"), f'"update" must be "recreate" or "start-first", got {_show(table["update"])}')

        watch: tuple[str, ...] = ()
        if "watch" in table:
            value = table["watch"]
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                watch = self.globs(get("watch"), value)
            else:
                self.error(get("watch"), '"watch" must be a list of glob strings')

        user = None
        if "user" in table:
            user = self.expect(get("user"), table["user"], str, "a user name")
            self.not_expanded(get("user"), user)
            if user is not None and source is not None and source.kind == "pip":
                # The venv lives in the 0700 STATE_DIR, which the user cannot reach; installing
                # as root would run the index's code as root. Refused until venvs are handed over.
                self.error(get("user"), '"user" with a pip source is not supported yet: the venv is '
                                        'installed in STATE_DIR, which another user cannot reach')

        log = self.default_log
        if "log" in table:
            log = self.log_policy(get("log"), table["log"], self.default_log)

        # checked in self.container(): the service's own key, or implied by an image
        runtime = container_runtime if container_runtime in self.runtimes or container_runtime == "kubernetes" else None
        if runtime == getattr(self, "global_runtime", "local") and "runtime" not in table and image_build is None \
                and (source is None or source.kind != "image"):
            runtime = None
        if len(self.diagnostics) > errors_before or command is None or source is None:
            return None
        return ServiceSpec(
            name=name, command=command, source=source, build=build, cwd=cwd,
            environment=MappingProxyType(env), env_file=env_file, replicas=replicas,
            restart=restart, backoff=backoff, start_limit=start_limit, stop_signal=stop_signal,
            stop_timeout=stop_timeout, depends_on=(), shell=shell, ready=ready, live=live,
            update=update, watch=watch, user=user, log=log, runtime=runtime, ports=ports, volumes=volumes,
            image_build=image_build, good_after=good_after,
        )

    def env_file(self, keys: tuple[str, ...], value: str, path: Path) -> dict[str, str]:
        """The variables of the dotenv file at ``path`` (python-dotenv's syntax), "$" escaped.

        Read with :func:`read_regular_file`: a FIFO or a device is refused, never waited on.
        """
        import io

        from dotenv import dotenv_values

        if not _exists(path):
            self.error(keys, f'env_file "{_cut(value)}" does not exist ({_cut(str(path))})')
            return {}
        from dotenv.parser import parse_stream

        try:
            text = read_regular_file(path).decode("utf-8")
            # a line python-dotenv cannot parse would be skipped with a warning on stderr and
            # its variable (and those after an unclosed quote) silently missing: an error here,
            # naming the line but never its text (it may hold a secret)
            bad = [b.original.line for b in parse_stream(io.StringIO(text)) if b.error]
            if bad:
                lines = ", ".join(str(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
                self.error(keys, f'env_file "{_cut(value)}": cannot parse line{"s" if len(bad) > 1 else ""} {lines} '
                                 "(dotenv syntax: NAME=value, quotes closed on the same line or a later one)")
                return {}
            values = dotenv_values(stream=io.StringIO(text), interpolate=True)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.error(keys, f"cannot read env_file: {exc}")
            return {}
        env: dict[str, str] = {}
        for name, item in values.items():
            if "\0" in name or "\0" in (item or ""):
                self.error(keys, f'env_file "{_cut(value)}": variable {_show(name)} holds a NUL character')
                continue
            # python-dotenv has already applied its own ${VAR} rules: escape "$" so that
            # our expansion of env values leaves these alone (no second expansion).
            env[name] = (item or "").replace("$", "$$")
        return env

    def source(self, keys: tuple[str, ...], value: Any) -> SourceSpec | None:
        if value is None:  # the config's own folder: run in place (it holds the state dir)
            return SourceSpec(kind="path", path=self.base, mode="in-place")
        if isinstance(value, str):
            return self.local_source(keys, value)
        if not isinstance(value, dict):
            self.error(keys, f'"source" must be a path string or a table {{ git = "...", ref = "..." }}, got {_type_name(value)}')
            return None
        self.unknown_keys(keys, value, SOURCE_KEYS)
        kinds = [k for k in ("git", "path", "pip", "image") if k in value]
        if len(kinds) > 1:
            self.error(keys, f'source table takes one of "git", "path", "pip" or "image", got {", ".join(kinds)}')
            return None
        if "pip" in value:
            return self.pip_source(keys, value)
        if "image" in value:
            image = self.expect(keys + ("image",), value["image"], str, 'an image reference "NAME[:TAG]"')
            if image is not None and not _IMAGE_REF.match(image):
                self.error(keys + ("image",), f'bad image reference {image!r}: use "NAME[:TAG]" or "NAME@sha256:..."')
                return None
            misplaced = [k for k in value if k not in ("image",)]
            for key in misplaced:
                self.error(keys + (key,), f'"{key}" does not apply to an image source')
            return SourceSpec(kind="image", image=image) if image and not misplaced else None
        for key in ("index", "extra_index"):
            if key in value:
                self.error(keys + (key,), f'"{key}" applies to a pip source only')
        if "mode" in value and "path" not in value:
            self.error(keys + ("mode",), '"mode" applies to a local folder source only (source = { path = "...", mode = "in-place" })')
            return None
        if "path" in value and "git" not in value:
            if self.expect(keys + ("path",), value["path"], str, "a path string") is None:
                return None
            mode = "snapshot"
            if "mode" in value:
                mode = self.expect(keys + ("mode",), value["mode"], str, '"snapshot" or "in-place"') or "snapshot"
                if mode not in SOURCE_MODES:
                    self.error(keys + ("mode",), f'"mode" must be "snapshot" or "in-place", got {_show(mode)}')
                    return None
            found = self.local_source(keys + ("path",), value["path"])
            return replace(found, mode=mode) if found is not None else None
        if "git" not in value:
            self.error(keys, 'source table needs "git" (a repository URL or path), "path", "pip" or "image"')
            return None
        url = self.expect(keys + ("git",), value["git"], str, "a repository URL or path")
        ref = "HEAD"
        if "ref" in value:
            ref = self.expect(keys + ("ref",), value["ref"], str, "a branch, tag or commit") or "HEAD"
            if ref.startswith("-"):
                self.error(keys + ("ref",), f'bad ref {_show(ref)}')
        poll = self.duration(keys + ("poll",), value["poll"]) if "poll" in value else None
        if url is None:
            return None
        if url.startswith("-"):
            self.error(keys + ("git",), f"bad repository {_show(url)}")
            return None
        if _is_local_repository(url):
            resolved = self.path_value(keys + ("git",), url, "repository path")
            if resolved is None:
                return None
            if not _exists(resolved):
                self.error(keys + ("git",), f'git repository "{url}" does not exist ({resolved})')
                return None
            url = str(resolved)
        return SourceSpec(kind="git", url=url, ref=ref, poll=poll)

    # -- packages and containers (issue 13) ------------------------------------------------

    def pip_source(self, keys: tuple[str, ...], value: dict[str, Any]) -> SourceSpec | None:
        """``{ pip = "REQUIREMENT", index = URL, extra_index = [URL...], poll = "60s" }``."""
        from ..execute.sources.pip import parse_requirement

        for key in ("ref", "path"):
            if key in value:
                self.error(keys + (key,), f'"{key}" does not apply to a pip source')
        requirement = self.expect(keys + ("pip",), value["pip"], str, 'a requirement such as "name>=1.0"')
        if requirement is not None:
            try:
                parse_requirement(requirement)
            except ValueError as exc:
                self.error(keys + ("pip",), str(exc))
                requirement = None
        index = None
        if "index" in value:
            index = self.expect(keys + ("index",), value["index"], str, "an index URL")
            if index is not None and not _INDEX_URL.match(index):
                self.error(keys + ("index",), f'bad index URL {index!r}: use http://, https:// or file://')
                index = None
        extra: tuple[str, ...] = ()
        if "extra_index" in value:
            items = value["extra_index"]
            if not isinstance(items, list) or not all(isinstance(i, str) and _INDEX_URL.match(i) for i in items):
                self.error(keys + ("extra_index",), '"extra_index" must be a list of index URLs (http://, https://, file://)')
            else:
                extra = tuple(items)
        poll = self.duration(keys + ("poll",), value["poll"]) if "poll" in value else None
        if requirement is None:
            return None
        return SourceSpec(kind="pip", requirement=requirement, index=index, extra_index=extra, poll=poll)

    def image_build(self, keys: tuple[str, ...], value: dict[str, Any]) -> ImageBuild | None:
        """``build = { dockerfile = "Dockerfile", context = "." }``: both relative to the
        source folder or checkout, and inside it."""
        self.unknown_keys(keys, value, IMAGE_BUILD_KEYS)
        found: dict[str, str] = {}
        for key, default in (("dockerfile", "Dockerfile"), ("context", ".")):
            item = value.get(key, default)
            if self.expect(keys + (key,), item, str, "a relative path string") is None:
                continue
            if os.path.isabs(item) or ".." in Path(item).parts:
                self.error(keys + (key,), f'"{key}" must be a path inside the source, got {item!r}')
                continue
            found[key] = item
        if len(found) != 2:
            return None
        return ImageBuild(dockerfile=found["dockerfile"], context=found["context"])

    def container(self, keys: tuple[str, ...], table: dict[str, Any],
                  source: SourceSpec | None) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """``runtime``, ``ports``, ``volumes``, and whether the service is a container (an image
        source or a Dockerfile build implies it). Returns (runtime, ports, volumes with host
        folders made absolute). A runtime this version cannot run is refused with one located
        error (UNAVAILABLE_RUNTIMES)."""
        runtime, runtime_key = getattr(self, "global_runtime", "local"), None
        if "runtime" in table:
            value = table["runtime"]
            if value not in RUNTIMES:
                self.error(keys + ("runtime",), f'"runtime" must be one of {", ".join(RUNTIMES)}, got {value!r}'
                           f'{suggest(str(value), RUNTIMES)}')
            else:
                runtime, runtime_key = value, keys + ("runtime",)
        implied = None
        if source is not None and source.kind == "image":
            implied = keys + ("source", "image")
        elif isinstance(table.get("build"), dict):
            implied = keys + ("build",)
        found: dict[str, tuple[str, ...]] = {"ports": (), "volumes": ()}
        if implied is not None and implied[-1] == "build" and runtime == "kubernetes":
            # on a cluster a Dockerfile build makes the image pushed to kubernetes.registry
            implied = None
        if implied is not None and runtime_key is not None and runtime != "container":
            self.error(runtime_key, f'an image source or a Dockerfile build runs as a container: runtime = "{runtime}" contradicts it')
            return runtime, (), ()
        if implied is not None:
            runtime, runtime_key = "container", implied
        if source is not None and source.kind == "pip" and runtime == "container":
            self.error(keys + ("source", "pip"), 'a pip source installs into a venv and runs as a process, not as a container')
        for key in ("ports", "volumes"):
            if key not in table:
                continue
            # imported only now: executors.container imports the docker SDK (requests, urllib3:
            # 80 ms and megabytes of every supervisor's memory, for a file without a container)
            from ..execute.executors.container import parse_port, parse_volume

            items = table[key]
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                self.error(keys + (key,), f'"{key}" must be a list of strings')
                continue
            kept = []
            for item in items:
                if "\0" in item:  # reported once already, as for every string
                    continue
                try:
                    if key == "volumes":
                        host, bind = parse_volume(item, self.base)
                        item = f"{host}:{bind['bind']}:{bind['mode']}"  # a host folder made absolute
                    else:
                        parse_port(item)
                except ValueError as exc:
                    self.error(keys + (key,), str(exc))
                    continue
                kept.append(item)
            found[key] = tuple(kept)
            if runtime != "container":
                self.error(keys + (key,), f'"{key}" applies to containers: add runtime = "container" or use an image source')
        file_runtime = getattr(self, "global_runtime", "local")
        if runtime_key is not None and runtime in UNAVAILABLE_RUNTIMES:
            # Refused rather than run wrongly: this version cannot start containers yet, and a
            # user asking for a container must not get a process on this machine instead.
            self.error(runtime_key, 'containers are not available in this version yet (runtime "container"): '
                       "nothing of this service runs")
        elif runtime_key is not None and file_runtime == "kubernetes" and runtime != "kubernetes":
            # `supervise run` of a kubernetes file converges a cluster and starts nothing here;
            # the other way round works: runtime = "kubernetes" on services of a local file
            self.error(runtime_key, f'runtime "{runtime}" in a file whose runtime is "kubernetes": put the file on '
                       'this machine ([supervise] runtime = "local") and runtime = "kubernetes" on the services '
                       "that go to the cluster")
        return runtime, found["ports"], found["volumes"]

    def local_source(self, keys: tuple[str, ...], value: str) -> SourceSpec | None:
        path = self.path_value(keys, value, "source folder")
        if path is None:
            return None
        if not _exists(path, folder=True):
            self.error(keys, f'source folder "{value}" does not exist ({path})')
            return None
        return SourceSpec(kind="path", path=path)

    def globs(self, keys: tuple[str, ...], value: list[str]) -> tuple[str, ...]:
        """``watch`` globs, bounded: at most MAX_GLOBS, each non-empty, at most GLOB_LENGTH
        characters and GLOB_WILDCARDS wildcards (every edit is matched against all of them)."""
        if len(value) > MAX_GLOBS:
            self.error(keys, f'"watch" holds {len(value)} globs; at most {MAX_GLOBS} are allowed')
            return ()
        for glob in value:
            if not glob.strip():
                self.error(keys, '"watch" globs must not be empty (to follow every file, write "**")')
                return ()
            if len(glob) > GLOB_LENGTH or sum(glob.count(c) for c in "*?[") > GLOB_WILDCARDS:
                self.error(keys, f'"watch" glob {_show(glob)} is too complex: at most {GLOB_LENGTH} '
                           f'characters and {GLOB_WILDCARDS} wildcards (*, ?, [)')
                return ()
        return tuple(value)

    def log_policy(self, keys: tuple[str, ...], value: Any, default: LogPolicy) -> LogPolicy:
        if not isinstance(value, dict):
            self.error(keys, f'"log" must be a table {{ max_size = "10MiB", backups = 5, timestamps = false }}, got {_type_name(value)}')
            return default
        self.unknown_keys(keys, value, LOG_KEYS)
        max_bytes, backups, timestamps = default.max_bytes, default.backups, default.timestamps
        if "max_size" in value:
            try:
                max_bytes = parse_size(value["max_size"])
            except ValueError as exc:
                self.error(keys + ("max_size",), f'"max_size": {exc}')
            else:
                if max_bytes < 1024:
                    self.error(keys + ("max_size",), '"max_size" must be at least 1KiB')
        if "backups" in value:
            got = self.expect(keys + ("backups",), value["backups"], int, "a whole number")
            if got is not None and not 0 <= got <= 1000:
                self.error(keys + ("backups",), '"backups" must be between 0 and 1000')
            elif got is not None:
                backups = got
        if "timestamps" in value:
            got = self.expect(keys + ("timestamps",), value["timestamps"], bool, "true or false")
            if got is not None:
                timestamps = got
        return LogPolicy(max_bytes=max_bytes, backups=backups, timestamps=timestamps)

    def backoff(self, keys: tuple[str, ...], value: Any) -> Backoff:
        if not isinstance(value, dict):
            self.error(keys, f'"backoff" must be a table {{ initial = "1s", max = "1m" }}, got {_type_name(value)}')
            return Backoff()
        self.unknown_keys(keys, value, ("initial", "max", "reset"))
        default = Backoff()
        initial = self.duration(keys + ("initial",), value["initial"]) if "initial" in value else default.initial
        maximum = self.duration(keys + ("max",), value["max"]) if "max" in value else default.max
        reset = self.duration(keys + ("reset",), value["reset"]) if "reset" in value else None
        if initial is None or maximum is None:
            return default
        if initial > maximum:
            self.error(keys, f'backoff "initial" ({initial}s) is larger than "max" ({maximum}s)')
        return Backoff(initial=initial, max=maximum, reset=reset)

    def start_limit(self, keys: tuple[str, ...], value: Any) -> StartLimit:
        if not isinstance(value, dict):
            self.error(keys, f'"start_limit" must be a table {{ burst = 10, interval = "1m" }}, got {_type_name(value)}')
            return StartLimit()
        self.unknown_keys(keys, value, ("burst", "interval"))
        burst = StartLimit.burst
        if "burst" in value:
            got = self.expect(keys + ("burst",), value["burst"], int, "a whole number")
            if got is not None and got < 1:
                self.error(keys + ("burst",), '"burst" must be at least 1')
            elif got is not None and got > 100_000:
                self.error(keys + ("burst",), '"burst" must be at most 100000')
            elif got is not None:
                burst = got
        interval = self.duration(keys + ("interval",), value["interval"]) if "interval" in value else None
        return StartLimit(burst=burst, interval=interval if interval is not None else StartLimit.interval)

    def signal(self, keys: tuple[str, ...], value: Any) -> int | None:
        names = [s.name for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_")]
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return signal.Signals(value).value
            except ValueError:
                self.error(keys, f"unknown signal number {_cut(str(value), 40)}")
                return None
        if isinstance(value, str):
            name = value.upper()
            name = name if name.startswith("SIG") else "SIG" + name
            if name in names:
                return signal.Signals[name].value
            self.error(keys, f'unknown signal "{value}"{self.suggest(name, names)}')
            return None
        self.error(keys, f'"{keys[-1]}" must be a signal name like "SIGTERM", got {_type_name(value)}')
        return None

    def check(self, keys: tuple[str, ...], value: Any) -> Check | None:
        if not isinstance(value, dict):
            self.error(keys, f'"{keys[-1]}" must be a table like {{ tcp = "127.0.0.1:8000" }}, got {_type_name(value)}')
            return None
        self.unknown_keys(keys, value, CHECK_KEYS)
        kinds = [kind for kind in CHECK_KINDS if kind in value]
        if len(kinds) != 1:
            self.error(keys, f'"{keys[-1]}" needs exactly one of tcp, http, exec')
            return None
        kind = kinds[0]
        check: dict[str, Any] = {"kind": kind}
        target = value[kind]
        if kind == "exec":
            check["exec"] = self.argv(keys + ("exec",), target)
        elif kind == "tcp":
            if not isinstance(target, str) or not re.match(r"^\[?[^\s\]]*\]?:(\d{1,6}|\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\})$", target):
                self.error(keys + ("tcp",), f'"tcp" must be "host:port", got {_show(target)}')
            elif target.rsplit(":", 1)[1].isdigit() and not 0 < int(target.rsplit(":", 1)[1]) < 65536:
                self.error(keys + ("tcp",), f'"tcp": port must be 1-65535, got {target.rsplit(":", 1)[1]}')
            check["tcp"] = target
        else:
            if not isinstance(target, str) or not target.startswith(("http://", "https://")):
                self.error(keys + ("http",), f'"http" must be an http:// or https:// URL, got {_show(target)}')
            else:
                port = re.match(r"^https?://[^/]*:(\d+)(/|$)", target[:300])
                if port and (len(port.group(1)) > 5 or not 0 < int(port.group(1)) < 65536):
                    self.error(keys + ("http",), f'"http": port must be 1-65535, got {_cut(port.group(1), 20)}')
            check["http"] = target
        for key, default in (("interval", 1.0), ("timeout", 1.0), ("start_period", 0.0)):
            check[key] = self.duration(keys + (key,), value[key]) if key in value else default
            if key in ("interval", "timeout") and check[key] is not None and check[key] < 0.01:
                self.error(keys + (key,), f'"{key}" must be at least 10ms')
        check["retries"] = 3
        if "retries" in value:
            retries = self.expect(keys + ("retries",), value["retries"], int, "a whole number")
            if retries is not None and retries < 1:
                self.error(keys + ("retries",), '"retries" must be at least 1')
            elif retries is not None and retries > 100_000:
                self.error(keys + ("retries",), '"retries" must be at most 100000')
            check["retries"] = retries if retries and 1 <= retries <= 100_000 else 3
        try:
            return Check.of(check)
        except ValueError:  # an error is already reported for it
            return None

    def dependencies(self, tables: dict[str, Any], services: dict[str, ServiceSpec]) -> None:
        graph: dict[str, tuple[Dependency, ...]] = {}
        for name, table in tables.items():
            if not isinstance(table, dict) or "depends_on" not in table:
                continue
            keys = ("services", name, "depends_on")
            deps = self.depends_on(keys, table["depends_on"], name, tables)
            graph[name] = deps
            if name in services:
                spec = services[name]
                object.__setattr__(spec, "depends_on", deps)
        cycle = _find_cycle({n: [d.service for d in deps] for n, deps in graph.items()})
        if cycle:
            self.error(("services", cycle[0], "depends_on"), "dependency cycle: " + " -> ".join(cycle))

    def depends_on(self, keys: tuple[str, ...], value: Any, name: str, tables: dict[str, Any]) -> tuple[Dependency, ...]:
        entries: list[tuple[str, Any]]
        if isinstance(value, list):
            entries = [(item, "started") if isinstance(item, str) else (None, item) for item in value]  # type: ignore[misc]
        elif isinstance(value, dict):
            entries = list(value.items())
        else:
            self.error(keys, f'"depends_on" must be a list of names or a table NAME = "started"|"ready"|"completed", got {_type_name(value)}')
            return ()
        conditions = tuple(c.value for c in Condition)
        deps: list[Dependency] = []
        for dep, how in entries:
            if dep is None:
                self.error(keys, f'"depends_on" entries must be service names, got {_type_name(how)}')
                continue
            restart = False
            if isinstance(how, dict):
                self.unknown_keys(keys + (dep,), how, ("condition", "restart"))
                restart = self.expect(keys + (dep, "restart"), how.get("restart", False), bool, "true or false")
                if restart is None:
                    continue
                how = how.get("condition", "started")
            if how not in conditions:
                self.error(keys + (dep,), f'dependency condition must be one of {", ".join(conditions)}, got {_show(how)}{self.suggest(str(how), conditions)}')
                continue
            if dep == name:
                self.error(keys, f'service "{name}" depends on itself')
                continue
            if dep not in tables:
                self.error(keys, f'unknown dependency "{dep}"{self.suggest(dep, list(tables))}')
                continue
            deps.append(Dependency(service=dep, condition=Condition(how), restart=restart))
        return tuple(deps)


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``graph`` as ``[a, b, ..., a]``, or None (:func:`supervisor.decide.graph.find_cycle`)."""
    return find_cycle(graph)



def _exists(path: Path, folder: bool = False) -> bool:
    """``path`` exists (is a folder, with ``folder``); False where the system cannot say."""
    try:
        return path.is_dir() if folder else path.exists()
    except (OSError, ValueError):
        return False


def _cut(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, for messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _on_cluster(spec: ServiceSpec, data: dict[str, Any], services_table: dict[str, Any]) -> ServiceSpec:
    """``spec`` with ``cluster`` set when it runs on Kubernetes from a local file: its
    ``kubernetes`` table and ``[supervise] kubernetes`` as canonical JSON (see
    :attr:`supervisor.model.ServiceSpec.cluster`)."""
    if spec.runtime != "kubernetes":
        return spec
    import dataclasses
    import json

    raw_supervise, raw_table = data.get("supervise"), services_table.get(spec.name)
    supervise: dict[str, Any] = raw_supervise if isinstance(raw_supervise, dict) else {}
    table: dict[str, Any] = raw_table if isinstance(raw_table, dict) else {}
    cluster = json.dumps({"service": table.get("kubernetes", {}), "settings": supervise.get("kubernetes", {})},
                         sort_keys=True, default=str)
    return dataclasses.replace(spec, cluster=cluster)


def _mentions_kubernetes(data: dict[str, Any]) -> bool:
    """Whether the file has a ``kubernetes`` table anywhere (then it is checked on any runtime)."""
    supervise, services = data.get("supervise"), data.get("services")
    if isinstance(supervise, dict) and "kubernetes" in supervise:
        return True
    return isinstance(services, dict) and any(isinstance(t, dict) and ("kubernetes" in t or t.get("runtime") == "kubernetes")
                                              for t in services.values())


def _is_local_repository(url: str) -> bool:
    if "://" in url:
        return False
    if re.match(r"^[\w.-]+@[\w.-]+:", url):  # scp-like git@host:org/repo
        return False
    return True


def _type_name(value: Any) -> str:
    names: dict[type, str] = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
                              list: "a list", dict: "a table"}
    for kind, text in names.items():
        if type(value) is kind:
            return text
    return type(value).__name__

