"""services.toml (format v1, see DESIGN.md) -> :class:`~supervisor.model.Desired`.

Parsing uses tomlkit; validation collects *every* mistake before raising, each located like a
compiler error: ``services.toml:12:5: services.api: unknown key "comand" (did you mean
"command"?)``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .graph import find_cycle
from .durations import parse_duration, parse_size
from .model import (
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

TOP_KEYS = ("supervise", "env", "services")
SUPERVISE_KEYS = ("state_dir", "runtime", "poll", "keep_versions", "log")
SERVICE_KEYS = (
    "source", "build", "command", "cwd", "env", "env_file", "replicas", "restart", "backoff",
    "start_limit", "stop_signal", "stop_timeout", "depends_on", "ready", "live", "update",
    "watch", "shell", "user", "log", "runtime",
)
LOG_KEYS = ("max_size", "backups", "timestamps")
RUNTIMES = ("local", "container", "kubernetes")
#: Runtimes this version has an executor for (supervisor.executors); "container" and
#: "kubernetes" are part of the file format, not yet built.
AVAILABLE_RUNTIMES = ("local",)
CHECK_KINDS = ("tcp", "http", "exec")
CHECK_KEYS = CHECK_KINDS + ("interval", "timeout", "start_period", "retries")


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
        return f"{where}:{who} {self.message}"


class ConfigError(Exception):
    """The config file cannot be used. ``diagnostics`` holds every mistake found, in order."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


def default_config_path() -> Path:
    """``$SUPERVISE_CONFIG`` if set, else ``./services.toml``."""
    return Path(os.environ.get("SUPERVISE_CONFIG") or "services.toml")


def load(path: str | os.PathLike[str]) -> Desired:
    """Read and validate the config file at ``path``.

    Raises ConfigError (with every diagnostic) for unreadable files, TOML syntax errors and
    invalid contents.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Diagnostic(str(path), 0, 0, f"cannot read config: {exc}")]) from None
    return parse(text, path)


def parse(text: str, path: str | os.PathLike[str] = "services.toml") -> Desired:
    """Validate config ``text``; ``path`` names it in errors and anchors relative paths."""
    import tomlkit  # imported here: the CLI's client verbs never need it (see state_dir_of)
    import tomlkit.exceptions

    path = Path(path)
    if not text.strip():
        # An empty file is far more often a save in progress (or `: > file`) than a wish to
        # stop everything; that wish is written `[services]`.
        raise ConfigError([Diagnostic(str(path), 1, 1, "the file is empty; to run no service, write [services]")])
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as exc:
        # ParseError's col is a 0-based offset; KeyAlreadyPresent (a key repeated in one
        # table) carries no position at all, so find the repeated key ourselves.
        if isinstance(exc, tomlkit.exceptions.ParseError):
            line, col = exc.line, exc.col + 1
        else:
            line, col = _Locator(text).duplicate()
        message = str(exc).split(" at line ")[0]
        raise ConfigError([Diagnostic(str(path), line, col, f"TOML syntax error: {message}")]) from None
    return _Validator(document.unwrap(), _Locator(text), path).run()


def validate(data: dict[str, Any], path: str | os.PathLike[str]) -> Desired:
    """Validate a config given as data (what ``tomllib`` would give for the file), with the
    same rules and messages as :func:`parse`; ``path`` names it in errors (no line numbers)
    and anchors relative paths. Raises :class:`ConfigError`."""
    return _Validator(data, _Locator(""), Path(path)).run()


def state_dir_of(path: str | os.PathLike[str]) -> Path:
    """Only ``[supervise].state_dir`` of the file at ``path``, quickly (stdlib tomllib, no
    validation): what the CLI's client verbs need to find the control socket. Falls back to a
    full :func:`load` (and its ConfigError) when the file cannot be read that way."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        value = data.get("supervise", {}).get("state_dir", ".supervise")
        if isinstance(value, str):
            return (path.resolve().parent / os.path.expanduser(value)).resolve()
    except (OSError, UnicodeDecodeError, AttributeError):
        pass
    except tomllib.TOMLDecodeError:
        # The file is broken (a save under way, a typo): exactly when `supervise status` is
        # wanted. Find state_dir by its line, or use the default.
        match = re.search(r"(?m)^\s*state_dir\s*=\s*[\"']([^\"'\n]*)[\"']", path.read_text(errors="replace"))
        value = match.group(1) if match else ".supervise"
        return (path.resolve().parent / os.path.expanduser(value)).resolve()
    return load(path).settings.state_dir


def suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean "x"?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _Locator:
    """Finds the line and column of a key path in TOML text, best effort, without a parser.

    Handles ``[table]`` headers, ``key = value`` lines, dotted keys and keys inside inline
    tables on the same line. Falls back to the nearest enclosing table or key.
    """

    _HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^(\s*)((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")

    def __init__(self, text: str):
        # (key path, line number, column, line text, where the value starts)
        self.entries: list[tuple[tuple[str, ...], int, int, str, int]] = []
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                table = self._split(header.group(1))
                self.entries.append((table, number, line.index("[") + 1, line, len(line)))
                continue
            key = self._KEY.match(line)
            if key:
                full = table + self._split(key.group(2))
                self.entries.append((full, number, len(key.group(1)) + 1, line, key.end()))

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
        best = (0, 0, 0)  # (matched depth, line, col)
        for path, line, col, text, value_start in self.entries:
            if path == keys:
                return line, col
            if keys[: len(path)] != path or len(path) <= best[0]:
                continue
            best = (len(path), line, col)
            if len(keys) > len(path):  # maybe inside an inline table on this line
                inner = re.compile(r"[{,]\s*[\"']?" + re.escape(keys[-1]) + r"[\"']?\s*=")
                match = inner.search(text, value_start)
                if match:
                    return line, match.start() + 1 + len(match.group(0)) - len(match.group(0).lstrip("{, \t"))
        if not best[0]:  # only defined through sub-tables, e.g. ``[service.api]`` for "service"
            for path, line, col, _text, _start in self.entries:
                if path[: len(keys)] == keys:
                    return line, col
        return best[1], best[2]


class _Validator:
    def __init__(self, data: dict[str, Any], locator: _Locator, path: Path):
        self.data = data
        self.locator = locator
        self.path = path
        self.base = path.resolve().parent if str(path) else Path.cwd()
        self.diagnostics: list[Diagnostic] = []
        self.default_log = LogPolicy()

    # -- reporting -------------------------------------------------------------------------

    def error(self, keys: tuple[str, ...], message: str) -> None:
        line, col = self.locator.find(keys)
        service = keys[1] if len(keys) >= 2 and keys[0] == "services" else None
        self.diagnostics.append(Diagnostic(str(self.path), line, col, message, service))

    def unknown_keys(self, keys: tuple[str, ...], table: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.error(keys + (key,), f'unknown key "{key}"{suggest(key, allowed)}')

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
                self.error(keys, f'"{keys[-1]}": cannot split {value!r}: {exc}')
                return None
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            argv = list(value)
        else:
            self.error(keys, f'"{keys[-1]}" must be a string or a list of strings, got {_type_name(value)}')
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

    # -- the document ---------------------------------------------------------------------

    def run(self) -> Desired:
        data = self.data
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
        if self.diagnostics:
            raise ConfigError(sorted(self.diagnostics, key=lambda d: (d.line, d.col)))
        return Desired(settings=settings, services=MappingProxyType(services), path=self.path.resolve())

    def settings(self, table: Any) -> Settings:
        keys = ("supervise",)
        defaults = Settings(state_dir=self.relative_path(".supervise"))
        if not isinstance(table, dict):
            self.error(keys, '"supervise" must be a table')
            return defaults
        self.unknown_keys(keys, table, SUPERVISE_KEYS)
        state_dir, runtime, poll, keep = defaults.state_dir, defaults.runtime, defaults.poll, defaults.keep_versions
        if "state_dir" in table and self.expect(keys + ("state_dir",), table["state_dir"], str, "a path string"):
            state_dir = self.relative_path(table["state_dir"])
        if "runtime" in table:
            runtime = self.runtime(keys + ("runtime",), table["runtime"]) or "local"
        if "poll" in table:
            poll = self.duration(keys + ("poll",), table["poll"]) or poll
        if "keep_versions" in table:
            value = self.expect(keys + ("keep_versions",), table["keep_versions"], int, "a whole number")
            if value is not None and value < 1:
                self.error(keys + ("keep_versions",), '"keep_versions" must be at least 1')
            elif value is not None:
                keep = value
        log = self.log_policy(keys + ("log",), table["log"], LogPolicy()) if "log" in table else LogPolicy()
        self.default_log = log
        return Settings(state_dir=state_dir, runtime=runtime, poll=poll, keep_versions=keep, log=log)

    def service(self, name: str, table: Any, global_env: dict[str, str]) -> ServiceSpec | None:
        keys = ("services", name)
        errors_before = len(self.diagnostics)
        if not NAME_RE.match(name) or name in (".", ".."):
            self.error(keys, f'bad service name "{name}": use letters, digits, "_", "." and "-" (at most 100, not starting with "." or "-")')
        if not isinstance(table, dict):
            self.error(keys, f'"services.{name}" must be a table')
            return None
        self.unknown_keys(keys, table, SERVICE_KEYS)
        get = lambda key: keys + (key,)  # noqa: E731

        shell = False
        if "shell" in table:
            shell = bool(self.expect(get("shell"), table["shell"], bool, "true or false"))

        command: tuple[str, ...] | None = None
        if "command" not in table:
            self.error(keys, 'missing required key "command"')
        elif shell:
            if isinstance(table["command"], str) and table["command"].strip():
                command = (table["command"],)
            else:
                self.error(get("command"), '"command" must be a non-empty string when shell = true')
        else:
            command = self.argv(get("command"), table["command"])

        source = self.source(get("source"), table.get("source"))
        build = self.argv(get("build"), table["build"]) if "build" in table else None

        cwd = "."
        if "cwd" in table and self.expect(get("cwd"), table["cwd"], str, "a path string") is not None:
            cwd = table["cwd"]
            self.not_expanded(get("cwd"), cwd)

        env = dict(global_env)
        env_file = None
        if "env_file" in table and self.expect(get("env_file"), table["env_file"], str, "a path string") is not None:
            env_file = self.relative_path(table["env_file"])
            if not env_file.is_file():
                self.error(get("env_file"), f'env_file "{table["env_file"]}" does not exist ({env_file})')
            else:
                from dotenv import dotenv_values

                try:
                    values = dotenv_values(env_file, interpolate=True)
                except (OSError, UnicodeDecodeError) as exc:
                    self.error(get("env_file"), f"cannot read env_file: {exc}")
                    values = {}
                # python-dotenv has already applied its own ${VAR} rules: escape "$" so that
                # our expansion of env values leaves these alone (no second expansion).
                env.update({k: (v or "").replace("$", "$$") for k, v in values.items()})
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
                self.error(get("restart"), f'"restart" must be one of {", ".join(choices)}, got {table["restart"]!r}{suggest(str(table["restart"]), choices)}')

        backoff = Backoff()
        if "backoff" in table:
            backoff = self.backoff(get("backoff"), table["backoff"])
        start_limit = StartLimit()
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

        update = "recreate"
        if "update" in table:
            if table["update"] in ("recreate", "start-first"):
                update = table["update"]
            else:
                self.error(get("update"), f'"update" must be "recreate" or "start-first", got {table["update"]!r}')

        watch: tuple[str, ...] = ()
        if "watch" in table:
            value = table["watch"]
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                watch = tuple(value)
            else:
                self.error(get("watch"), '"watch" must be a list of glob strings')

        user = None
        if "user" in table:
            user = self.expect(get("user"), table["user"], str, "a user name")
            self.not_expanded(get("user"), user)

        log = self.default_log
        if "log" in table:
            log = self.log_policy(get("log"), table["log"], self.default_log)

        runtime = self.runtime(get("runtime"), table["runtime"]) if "runtime" in table else None
        if len(self.diagnostics) > errors_before or command is None or source is None:
            return None
        return ServiceSpec(
            name=name, command=command, source=source, build=build, cwd=cwd,
            environment=MappingProxyType(env), env_file=env_file, replicas=replicas,
            restart=restart, backoff=backoff, start_limit=start_limit, stop_signal=stop_signal,
            stop_timeout=stop_timeout, depends_on=(), shell=shell, ready=ready, live=live,
            update=update, watch=watch, user=user, log=log, runtime=runtime,
        )

    def runtime(self, keys: tuple[str, ...], value: Any) -> str | None:
        """A ``runtime`` name (``[supervise]`` or a service's): one this version has an
        executor for, else an error and None."""
        if value not in RUNTIMES:
            self.error(keys, f'"runtime" must be one of {", ".join(RUNTIMES)}, got {value!r}{suggest(str(value), RUNTIMES)}')
            return None
        if value not in AVAILABLE_RUNTIMES:
            # Refused rather than quietly run here: a user asking for a cluster or a container
            # must not get processes on this machine instead.
            self.error(keys, f'runtime "{value}" is not available in this version '
                       f'(available: {", ".join(AVAILABLE_RUNTIMES)})')
            return None
        return str(value)

    def source(self, keys: tuple[str, ...], value: Any) -> SourceSpec | None:
        if value is None:
            return SourceSpec(kind="path", path=self.base)
        if isinstance(value, str):
            return self.local_source(keys, value)
        if not isinstance(value, dict):
            self.error(keys, f'"source" must be a path string or a table {{ git = "...", ref = "..." }}, got {_type_name(value)}')
            return None
        self.unknown_keys(keys, value, ("git", "ref", "poll", "path"))
        if "path" in value and "git" not in value:
            if self.expect(keys + ("path",), value["path"], str, "a path string") is None:
                return None
            return self.local_source(keys + ("path",), value["path"])
        if "git" not in value:
            self.error(keys, 'source table needs "git" (a repository URL or path) or "path"')
            return None
        url = self.expect(keys + ("git",), value["git"], str, "a repository URL or path")
        ref = "HEAD"
        if "ref" in value:
            ref = self.expect(keys + ("ref",), value["ref"], str, "a branch, tag or commit") or "HEAD"
            if ref.startswith("-"):
                self.error(keys + ("ref",), f'bad ref {ref!r}')
        poll = self.duration(keys + ("poll",), value["poll"]) if "poll" in value else None
        if url is None:
            return None
        if url.startswith("-"):
            self.error(keys + ("git",), f"bad repository {url!r}")
            return None
        if _is_local_repository(url):
            resolved = self.relative_path(url)
            if not resolved.exists():
                self.error(keys + ("git",), f'git repository "{url}" does not exist ({resolved})')
                return None
            url = str(resolved)
        return SourceSpec(kind="git", url=url, ref=ref, poll=poll)

    def local_source(self, keys: tuple[str, ...], value: str) -> SourceSpec | None:
        path = self.relative_path(value)
        if not path.is_dir():
            self.error(keys, f'source folder "{value}" does not exist ({path})')
            return None
        return SourceSpec(kind="path", path=path)

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
                self.error(keys, f"unknown signal number {value}")
                return None
        if isinstance(value, str):
            name = value.upper()
            name = name if name.startswith("SIG") else "SIG" + name
            if name in names:
                return signal.Signals[name].value
            self.error(keys, f'unknown signal "{value}"{suggest(name, names)}')
            return None
        self.error(keys, f'"{keys[-1]}" must be a signal name like "SIGTERM", got {_type_name(value)}')
        return None

    def check(self, keys: tuple[str, ...], value: Any) -> dict[str, Any] | None:
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
            if not isinstance(target, str) or not re.match(r"^\[?[^\s\]]*\]?:(\d+|\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\})$", target):
                self.error(keys + ("tcp",), f'"tcp" must be "host:port", got {target!r}')
            elif target.rsplit(":", 1)[1].isdigit() and not 0 < int(target.rsplit(":", 1)[1]) < 65536:
                self.error(keys + ("tcp",), f'"tcp": port must be 1-65535, got {target.rsplit(":", 1)[1]}')
            check["tcp"] = target
        else:
            if not isinstance(target, str) or not target.startswith(("http://", "https://")):
                self.error(keys + ("http",), f'"http" must be an http:// or https:// URL, got {target!r}')
            else:
                port = re.match(r"^https?://[^/]*:(\d+)(/|$)", target)
                if port and not 0 < int(port.group(1)) < 65536:
                    self.error(keys + ("http",), f'"http": port must be 1-65535, got {port.group(1)}')
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
            check["retries"] = retries if retries and retries >= 1 else 3
        return MappingProxyType(check)  # type: ignore[return-value]

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
                self.error(keys + (dep,), f'dependency condition must be one of {", ".join(conditions)}, got {how!r}{suggest(str(how), conditions)}')
                continue
            if dep == name:
                self.error(keys, f'service "{name}" depends on itself')
                continue
            if dep not in tables:
                self.error(keys, f'unknown dependency "{dep}"{suggest(dep, list(tables))}')
                continue
            deps.append(Dependency(service=dep, condition=Condition(how), restart=restart))
        return tuple(deps)


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``graph`` as ``[a, b, ..., a]``, or None (:func:`supervisor.graph.find_cycle`)."""
    return find_cycle(graph)



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

