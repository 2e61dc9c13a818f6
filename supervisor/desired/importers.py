"""``supervise import``: a Procfile or a supervisord.conf -> an equivalent services.toml.

Both converters are functions of text (plus, for supervisord's ``[include]``, a reader of the
included files, and the environment the import runs in) that return TOML text built with
tomlkit. The rules are the source tools' own: honcho's and foreman's for a Procfile,
supervisord's ``options.py``/``datatypes.py`` for a supervisord.conf. So an import

- refuses (:class:`ImportFailed`, ``FILE:LINE: message``) what the source tool itself refuses
  (duplicate Procfile names, merge-conflict markers, every configuration supervisord would not
  start with), and
- reports what it cannot carry over: each such key or section becomes a :class:`Finding`
  (``FILE:LINE: message``, printed on stderr by the CLI) and a ``NOT CARRIED OVER`` comment
  in the output, which always passes ``supervise check`` when saved where the input was.
"""

from __future__ import annotations

import configparser
import glob
import io
import os
import platform
import re
import shlex
import signal
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import tomlkit
from dotenv import dotenv_values
from tomlkit.items import Table

from .config import NAME_RE, suggest


class ImportFailed(Exception):
    """The input cannot be converted: the source tool would refuse it too, or it is not the
    format it claims to be. The message is one line, ``FILE:LINE: what`` where a line is known."""


@dataclass(frozen=True)
class Finding:
    """Something the import could not carry over, or carried over differently: where it is
    (``file``, 1-based ``line``; 0 when unknown) and what happened."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {clean(self.message)}"


def import_file(path: Path, *, env: Path | None = None, format: str | None = None,
                findings: list[Finding] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """services.toml text for the Procfile or supervisord.conf at ``path``.

    ``format`` is ``"procfile"`` or ``"supervisord"`` (None: :func:`guess_format`). For a
    Procfile, ``env`` is the dotenv file (None: ``.env`` beside it, if any), named relative to
    the Procfile's folder when inside it. What is not carried over is appended to ``findings``.
    ``environ`` (default ``os.environ``) is the environment supervisord or honcho would have
    started in: it gives ``%(ENV_X)s`` values that must be fixed at import. Raises
    ImportFailed for unreadable files, an unknown format or input the source tool refuses.
    """
    text = _read(path)
    format = format or guess_format(str(path), text)
    if format == "supervisord":
        if env is not None:
            raise ImportFailed("--env is for a Procfile; supervisord.conf has environment= lines")
        return supervisord_to_toml(text, path=str(path), findings=findings, environ=environ)
    if format != "procfile":
        raise ImportFailed(f"cannot tell whether {path} is a Procfile or a supervisord.conf; say --from")
    if env is None and (path.parent / ".env").is_file():
        env = path.parent / ".env"
    if env is None:
        return procfile_to_toml(text, source_name=str(path), findings=findings, environ=environ)
    named = os.path.relpath(env.resolve(), path.resolve().parent)
    if named.startswith(".."):
        named = str(env.resolve())
    return procfile_to_toml(text, env_text=_read(env), env_file=named, source_name=str(path),
                            findings=findings, environ=environ)


def _read(path: Path) -> str:
    """The text of ``path`` as Python's text mode reads it (the way honcho and supervisord
    read their files): CRLF and CR become LF; a UTF-8 byte-order mark is skipped."""
    try:
        return normalise(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFailed(f"cannot read {path}: {exc}") from None


def normalise(text: str) -> str:
    """Text as a file opened in text mode gives it: no byte-order mark, LF line ends only."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def clean(text: str) -> str:
    """``text`` safe for a one-line message or a TOML comment: control characters (and line
    or paragraph separators) from the input are shown escaped, never written raw."""
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in "\ufeff":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


_CONFLICT = re.compile(r"^(<{7}(?: .*)?|={7}|>{7}(?: .*)?|\|{7}(?: .*)?)$")


def refuse_conflict_markers(text: str, name: str) -> None:
    """Raise ImportFailed at the first git merge-conflict marker line (``<<<<<<<``,
    ``|||||||``, ``=======``, ``>>>>>>>``): the file is half of two versions."""
    for number, line in enumerate(text.split("\n"), start=1):
        if _CONFLICT.match(line.rstrip()):
            raise ImportFailed(f"{name}:{number}: merge-conflict marker {clean(line.strip()[:40])!r}: "
                               "resolve the conflict first")


# -- shared ---------------------------------------------------------------------------------

def _document(header: Iterable[str]) -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    for line in header:
        doc.add(tomlkit.comment(clean(line)))
    doc.add(tomlkit.nl())
    return doc


def _env_item(values: Mapping[str, str]):
    """An inline table when short, else a sub-table."""
    inline = tomlkit.inline_table()
    inline.update(dict(values))
    if len(inline.as_string()) <= 70:
        return inline
    table = tomlkit.table()
    table.update(dict(values))
    return table


def _service_name(raw: str, notes: list[str]) -> str:
    """``raw`` if it is a valid service name, else a cleaned-up one (noted)."""
    if NAME_RE.match(raw):
        return raw
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", raw).lstrip(".-")[:100] or "service"
    notes.append(f'note: "{raw}" renamed "{name}" (service names are letters, digits, _ . -)')
    return name


def _escape_dollars(text: str) -> str:
    """Keep a literal ``$`` literal under our ``${VAR}``/``$$`` expansion."""
    return re.sub(r"\$(?=[${])", "$$", text)


# -- Procfile -------------------------------------------------------------------------------

#: honcho's and foreman's Procfile line (both: ``^([A-Za-z0-9_-]+):\s*(.+)$``); any other line
#: is skipped by both, silently.
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
#: What a command may hold to run without a shell: plain words, quoted strings without shell
#: syntax inside, and ``$VAR``/``${VAR}``/``${VAR:-default}`` references (which we expand).
_PLAIN = re.compile(r"""
    \s+
  | [A-Za-z0-9_@%+=:,./-]+
  | '[^'$\\]*'
  | "(?:[^"\\`$]|\$[A-Za-z_][A-Za-z0-9_]*|\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-[^}"$`\\]*)?\})*"
  | \$[A-Za-z_][A-Za-z0-9_]*
  | \$\{[A-Za-z_][A-Za-z0-9_]*(?::?-[^}"'$`\\\s]*)?\}
""", re.VERBOSE)
_BARE_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_ANY_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
#: First words that only a shell understands (``exec`` alone is dropped instead).
_SHELL_WORDS = {"cd", "source", ".", "export", "set", "unset", "ulimit", "umask", "trap", "eval", "if",
                "for", "while", "until", "case", "test", "[", "{", "!", "time", "alias", "read", "wait"}
#: honcho and foreman give process type i the port base + 100 * i, and instance n (from 0) of
#: a type + n more; the base is $PORT (from .env, else the environment) or 5000.
PORT_BASE, PORT_STEP = 5000, 100
#: Variables only a platform sets (Heroku's dyno manager and runtime metadata); a Procfile
#: that reads them gets nothing from foreman, honcho or supervise unless .env sets them.
PLATFORM_VARIABLES = frozenset({
    "DYNO", "DYNO_RAM", "HEROKU_APP_ID", "HEROKU_APP_NAME", "HEROKU_DYNO_ID", "HEROKU_RELEASE_CREATED_AT",
    "HEROKU_RELEASE_VERSION", "HEROKU_SLUG_COMMIT", "HEROKU_SLUG_DESCRIPTION", "HEROKU_BUILD_COMMIT",
    "HEROKU_BUILD_DESCRIPTION", "SOURCE_VERSION", "STACK", "WEB_CONCURRENCY", "WEB_MEMORY", "MEMORY_AVAILABLE",
})


def needs_shell(command: str) -> bool:
    """True when ``command`` uses shell syntax beyond words, quotes and ``$VAR`` references
    (pipes, ``&&``, redirections, globs, ``$(...)``, a leading ``VAR=value``, ...)."""
    pos = 0
    while pos < len(command):
        match = _PLAIN.match(command, pos)
        if not match:
            return True
        pos = match.end()
    words = shlex.split(command)
    if words[:1] == ["exec"]:
        words = words[1:]
    if not words:
        return True
    return words[0] in _SHELL_WORDS or bool(re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]))


def shell_to_argv(command: str) -> list[str]:
    """Split a command for which :func:`needs_shell` is False; ``$VAR`` becomes ``${VAR}`` and
    a leading ``exec`` goes (without a shell, the command is exec'd anyway)."""
    words = [_BARE_VAR.sub(r"${\1}", word) for word in shlex.split(command)]
    return words[1:] if words[:1] == ["exec"] else words


def _variables(command: str) -> set[str]:
    """The variables a shell command reads: ``$X``, ``${X...}``, and names in ``$((...))``."""
    names = {a or b for a, b in _ANY_VAR.findall(command)}
    for arithmetic in re.findall(r"\$\(\((.*?)\)\)", command):
        names |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", arithmetic))
    return names


def guess_format(name: str, text: str) -> str | None:
    """``"procfile"`` or ``"supervisord"`` from a file name and its text; None if unsure."""
    base = Path(name).name.lower()
    if "procfile" in base:
        return "procfile"
    if re.search(r"^\s*\[(program|supervisord|include)(:|\])", text, re.MULTILINE) or base.endswith((".conf", ".ini")):
        return "supervisord"
    lines = [l for l in normalise(text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if lines and all(_PROCFILE_LINE.match(l) for l in lines):
        return "procfile"
    return None


def procfile_to_toml(text: str, *, env_text: str | None = None, env_file: str | None = None,
                     source_name: str = "Procfile", findings: list[Finding] | None = None,
                     environ: Mapping[str, str] | None = None) -> str:
    """Convert a Procfile (``name: command`` lines) to services.toml text, by honcho's rules.

    ``env_text`` is the dotenv file (read with python-dotenv) and ``env_file`` the path the
    output should name for it (relative to where the output is saved). Each process type gets
    ``PORT`` as honcho and foreman assign it (base from .env, else ``environ``, else 5000;
    + 100 per type in file order). A ``release`` process becomes a one-shot every other
    service depends on (``completed``). Lines honcho skips, and variables only a platform
    sets, are appended to ``findings``. Raises ImportFailed (``NAME:LINE: ...``) for a
    merge-conflict marker, a process name given twice (honcho refuses it), a PORT that is not
    a number (honcho refuses it) or a file without processes.
    """
    environ = os.environ if environ is None else environ
    found: list[Finding] = [] if findings is None else findings
    text = normalise(text)
    refuse_conflict_markers(text, source_name)
    env_values: dict[str, str | None] = {}
    if env_text is not None:
        env_values = dict(dotenv_values(stream=io.StringIO(normalise(env_text)), interpolate=False))
    port_from = ".env" if env_values.get("PORT") is not None else "the environment" if environ.get("PORT") else None
    raw_port = env_values.get("PORT") if port_from == ".env" else environ.get("PORT") if port_from else str(PORT_BASE)
    try:
        base_port = int(str(raw_port))
    except ValueError:
        raise ImportFailed(f"{env_file if port_from == '.env' else source_name}: PORT={clean(str(raw_port))!r} "
                           "is not a port number (honcho refuses it too)") from None

    entries: list[tuple[int, str, str]] = []
    first_line: dict[str, int] = {}
    skipped: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):  # honcho splits with str.splitlines
        match = _PROCFILE_LINE.match(line)
        if not match or not match.group(2).strip():  # `web:   `: honcho would run an empty command
            if line.strip() and not line.lstrip().startswith("#"):
                message = f"line not understood, skipped (as honcho and foreman skip it): {line.strip()[:80]}"
                found.append(Finding(source_name, number, message))
                skipped.append(f"{source_name}:{number}: {message}")
            continue
        name = match.group(1)
        if name in first_line:
            raise ImportFailed(f"{source_name}:{number}: process name {name!r} is also on line {first_line[name]}: "
                               "process names must be unique within a Procfile (honcho refuses it)")
        first_line[name] = number
        entries.append((number, name, match.group(2).strip()))
    if not entries:
        raise ImportFailed(f"{source_name}: no `name: command` lines found")
    has_release = any(name == "release" for _, name, _ in entries)

    header = [f"Imported from {Path(source_name).name} by `supervise import`. Save it beside the Procfile:",
              "relative paths in this file are relative to its folder.",
              "Procfile commands run through a shell under foreman; here a command runs without one",
              "unless it needs shell syntax (then shell = true).",
              f"PORT is set as honcho and foreman set it: {base_port} (from {port_from or 'their default'})"
              f" + {PORT_STEP} per process type, in file order;",
              "a second replica would need PORT + 1 (honcho -c): set it per service if you scale up.",
              "foreman stops everything when one process exits; here each service restarts on its own."]
    if env_file is not None:
        header.append(f"{env_file} ({len(env_values)} variables) reaches every service, as under foreman.")
    if has_release:
        header.append("`release` runs once, to completion, before the other services start (as on Heroku).")
    header += [f"NOT CARRIED OVER: {note}" for note in skipped]
    doc = _document(header)
    services = tomlkit.table(is_super_table=True)
    known = set(env_values) | set(environ) | {"PORT"}
    for index, (number, raw, command) in enumerate(entries):
        notes: list[str] = []
        name = _service_name(raw, notes)
        if name in services:
            raise ImportFailed(f"{source_name}:{number}: process name {raw!r} would be the service name {name!r} "
                               "a second time; rename one of them")
        missing = sorted(_variables(command) & PLATFORM_VARIABLES - known)
        for variable in missing:
            message = (f"{raw}: ${variable} is set only by a platform (Heroku), not by honcho, foreman or "
                       f"supervise: it is empty here unless .env or env sets it")
            found.append(Finding(source_name, number, message))
            notes.append(f"NOT CARRIED OVER: {source_name}:{number}: {message}")
        table = tomlkit.table()
        for note in notes:
            table.add(tomlkit.comment(clean(note)))
        if needs_shell(command):
            table.add("command", command)
            table.add("shell", True)
        else:
            table.add("command", shell_to_argv(command))
        env = tomlkit.inline_table()
        env.update({"PORT": str(base_port + PORT_STEP * index)})
        table.add("env", env)
        if env_file is not None:
            table.add("env_file", env_file)
        if raw == "release":
            table.add("restart", "never")
            table["restart"].comment("Heroku runs `release` once per deploy, before the others")
        elif has_release:
            depends = tomlkit.inline_table()
            depends.update({"release": "completed"})
            table.add("depends_on", depends)
        services.add(name, table)
    doc.add("services", services)
    return tomlkit.dumps(doc)


# -- supervisord.conf -----------------------------------------------------------------------
#
# supervisord reads its file with a RawConfigParser (``;``/``#`` comments, also inline after
# whitespace; duplicate sections and keys merge; key names are lower-cased), reads each
# ``[include] files`` glob match into the same parser, then checks every value with the types
# of datatypes.py and expands ``%(name)s`` with Python's ``%`` operator: any name it does not
# know, or a bad format, stops it at start. We follow those rules, and say where.

#: supervisord's ``%`` expansions: ``%(name)spec`` (and ``%%``, a literal ``%``).
_EXPANSION = re.compile(r"%%|%\(([^)]*)\)([#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]?)")
_TRUE, _FALSE = ("yes", "true", "on", "1"), ("no", "false", "off", "0")
_LOG_KEYS = {
    "redirect_stderr", "stdout_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
    "stdout_capture_maxbytes", "stdout_events_enabled", "stdout_syslog", "stderr_logfile",
    "stderr_logfile_maxbytes", "stderr_logfile_backups", "stderr_capture_maxbytes",
    "stderr_events_enabled", "stderr_syslog",
}
#: Program keys supervisord reads inside its per-process loop: these may use
#: %(process_num)d and %(numprocs)d (and ENV_ names from the program's own environment).
_PER_PROCESS_KEYS = {"environment", "directory", "command", "process_name", "stdout_logfile", "stderr_logfile",
                     "stdout_logfile_backups", "stderr_logfile_backups", "stdout_logfile_maxbytes",
                     "stderr_logfile_maxbytes", "stdout_syslog", "stderr_syslog"}
#: supervisord's event type names (supervisor/events.py EventTypes), for [eventlistener:x] events.
_EVENT_TYPES = frozenset("""EVENT PROCESS_STATE PROCESS_STATE_STOPPED PROCESS_STATE_EXITED PROCESS_STATE_STARTING
    PROCESS_STATE_STOPPING PROCESS_STATE_BACKOFF PROCESS_STATE_FATAL PROCESS_STATE_RUNNING PROCESS_STATE_UNKNOWN
    PROCESS_COMMUNICATION PROCESS_COMMUNICATION_STDOUT PROCESS_COMMUNICATION_STDERR PROCESS_LOG PROCESS_LOG_STDOUT
    PROCESS_LOG_STDERR REMOTE_COMMUNICATION SUPERVISOR_STATE_CHANGE SUPERVISOR_STATE_CHANGE_RUNNING
    SUPERVISOR_STATE_CHANGE_STOPPING TICK TICK_5 TICK_60 TICK_3600 PROCESS_GROUP PROCESS_GROUP_ADDED
    PROCESS_GROUP_REMOVED""".split())
_LOG_LEVELS = ("critical", "error", "warn", "info", "debug", "trace", "blather")
_SIGNUMS = {getattr(signal, k) for k in dir(signal) if k.startswith("SIG")}
#: What each ``[supervisord]`` key would have done; none has a per-service equivalent.
_SUPERVISORD_KEYS = {
    "logfile": "supervise logs to stderr; services log to STATE_DIR/logs",
    "logfile_maxbytes": "service logs rotate by [supervise] log.max_size",
    "logfile_backups": "service logs rotate by [supervise] log.backups",
    "loglevel": "use -v for more detail",
    "pidfile": "supervise keeps its pid in STATE_DIR",
    "umask": "no umask setting; set it in a command",
    "nodaemon": "supervise runs in the foreground (use systemd or nohup to detach)",
    "silent": "use -q", "minfds": "no fd limit setting; use ulimit or systemd LimitNOFILE",
    "minprocs": "no process limit setting; use ulimit or systemd LimitNPROC",
    "nocleanup": "not needed", "childlogdir": "logs go to STATE_DIR/logs",
    "user": "run supervise as that user (per service: user = ...)", "directory": "set cwd per service",
    "strip_ansi": "logs keep what services write", "identifier": "not needed",
}

IncludeReader = Callable[[str], list[tuple[str, str]]]


def read_includes(pattern: str) -> list[tuple[str, str]]:
    """The files an absolute ``[include] files`` glob names: (path, text), sorted by path, as
    supervisord reads them. Raises ImportFailed for a match that cannot be read (supervisord
    skips such a file silently, and runs without its programs: a surprise we refuse)."""
    from .config import read_regular_file

    found = []
    for name in sorted(glob.glob(pattern)):
        try:  # read_regular_file: a FIFO the glob matches is refused, not waited on
            found.append((name, normalise(read_regular_file(Path(name)).decode("utf-8-sig"))))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).removeprefix(f"{name} ")
            raise ImportFailed(f"cannot read included file {name}: {reason} (supervisord would skip it "
                               "and run without its programs)") from None
    return found


def key_value_pairs(text: str) -> dict[str, str]:
    """supervisord's ``KEY=val,KEY2="v, 2"`` (datatypes.dict_of_key_value_pairs): a POSIX
    shlex whose word characters are letters, digits and ``_/.+-():``; every other character
    is a token of its own, so a value with ``@``, ``?``, ``=`` or a space must be quoted; ``#``
    starts a comment. Raises ValueError as supervisord does for anything else."""
    return _key_value_pairs(text)[0]


def _key_value_pairs(text: str) -> tuple[dict[str, str], list[str]]:
    """:func:`key_value_pairs` and the words supervisord drops on the way (``A=x y``: ``y``)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.wordchars += "/.+-():"
    tokens = list(lexer)
    pairs: dict[str, str] = {}
    dropped: list[str] = []
    i = 0
    while i < len(tokens):
        triple = tokens[i:i + 3]
        if len(triple) != 3 or triple[1] != "=":
            raise ValueError(f"Unexpected end of key/value pairs in value {text!r}")
        pairs[triple[0]] = triple[2]
        if i + 3 < len(tokens) and tokens[i + 3] != ",":
            dropped.append(tokens[i + 3])  # supervisord skips the token after a pair, whatever it is
        i += 4
    return pairs, dropped


class _Ini:
    """supervisord's parser (UnhosedConfigParser settings) plus where each section and key is."""

    def __init__(self) -> None:
        self.parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False,
                                                   interpolation=None)
        self.where: dict[tuple[str, str | None], tuple[str, int]] = {}
        self.files: list[str] = []

    def read(self, text: str, name: str) -> None:
        text = normalise(text)
        refuse_conflict_markers(text, name)
        try:
            self.parser.read_string(text, source=name)
        except configparser.MissingSectionHeaderError as exc:
            raise ImportFailed(f"{name}:{exc.lineno}: a line before any [section] "
                               f"{clean(exc.line.strip()[:60])!r} (supervisord refuses it)") from None
        except configparser.ParsingError as exc:
            number = exc.errors[0][0]
            line = text.split("\n")[number - 1].strip()
            raise ImportFailed(f"{name}:{number}: cannot parse {clean(line[:60])!r} "
                               "(supervisord refuses it)") from None
        except configparser.Error as exc:
            raise ImportFailed(f"{name}: {clean(str(exc))}") from None
        self._locate(text, name)
        self.files.append(name)

    def _locate(self, text: str, name: str) -> None:
        section = None
        for number, line in enumerate(text.split("\n"), start=1):
            value = re.sub(r"(^|\s)[;#].*$", "", line).strip()
            if not value:
                continue
            if line[:1].isspace() and section is not None:
                continue  # a continuation line
            header = re.match(r"\[(?P<header>.+)\]", value)
            if header:
                section = header.group("header")
                self.where.setdefault((section, None), (name, number))
            elif section is not None and (option := re.match(r"(.*?)\s*[=:]", value)):
                self.where[(section, option.group(1).rstrip().lower())] = (name, number)

    def at(self, section: str, key: str | None = None) -> tuple[str, int]:
        return self.where.get((section, key)) or self.where.get((section, None)) or ("supervisord.conf", 0)


class _Reader:
    """The state of one conversion: the parsed file, the environment, and what to report."""

    def __init__(self, ini: _Ini, environ: Mapping[str, str], findings: list[Finding]):
        self.ini = ini
        self.environ = environ
        self.findings = findings
        self.global_env: dict[str, str] = {}  # [supervisord] environment, values as written

    def here(self, section: str, key: str | None) -> str:
        return os.path.dirname(os.path.abspath(self.ini.at(section, key)[0]))

    def fail(self, section: str, key: str | None, message: str) -> ImportFailed:
        file, line = self.ini.at(section, key)
        where = f"{file}:{line}" if line else file
        return ImportFailed(f"{where}: [{clean(section)}]{' ' + key if key else ''}: {clean(message)}")

    def report(self, section: str, key: str | None, message: str, into: list[str]) -> None:
        """A finding on stderr and the same line as a comment (``into``)."""
        file, line = self.ini.at(section, key)
        finding = Finding(file, line, f"[{section}]{' ' + key if key else ''}: {message}")
        self.findings.append(finding)
        into.append(f"NOT CARRIED OVER: {finding}")

    def env_value(self, name: str, program_env: Mapping[str, str]) -> str | None:
        """``%(ENV_NAME)s`` as supervisord resolves it: the program's environment=, then
        [supervisord] environment=, then the environment it started in."""
        for source in (program_env, self.global_env, self.environ):
            if name in source:
                return source[name]
        return None

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        return self.ini.parser.get(section, key) if self.ini.parser.has_option(section, key) else default

    def expand(self, section: str, key: str, value: str, names: Mapping[str, object],
               program_env: Mapping[str, str] | None = None) -> str:
        """``value`` with every ``%(name)s`` expanded now, as supervisord does at start;
        ImportFailed for a name it would not know (ENV_ names included) or a bad format."""
        program_env = program_env or {}
        table = _Names(names, lambda n: self.env_value(n, program_env))
        try:
            return value % table
        except KeyError as exc:
            known = ", ".join(sorted(table.known()))
            raise self.fail(section, key, f"%({exc.args[0]}) cannot be expanded (supervisord refuses it); "
                            f"names here: {known}, ENV_X for a variable X that is set") from None
        except (TypeError, ValueError) as exc:
            raise self.fail(section, key, f"{value!r} is badly formatted for supervisord: {exc} "
                            "(write %% for a literal %)") from None


class _Names(dict):
    """A mapping for ``%`` that knows ``names`` and ``ENV_X`` (through ``env``), nothing else."""

    def __init__(self, names: Mapping[str, object], env: Callable[[str], str | None]):
        super().__init__(names)
        self.env = env

    def __missing__(self, key: str):
        if key.startswith("ENV_") and (value := self.env(key[4:])) is not None:
            return value
        raise KeyError(key)

    def known(self) -> list[str]:
        return list(self)


def _check(reader: _Reader, section: str, key: str | None, value: str, kind: str) -> object:
    """``value`` through supervisord's type ``kind`` (datatypes.py); ImportFailed as it refuses."""
    stripped = value.strip()
    try:
        if kind == "integer":
            return int(value)
        if kind == "boolean":
            if str(value).lower() in _TRUE:
                return True
            if str(value).lower() in _FALSE:
                return False
            raise ValueError(f"not a valid boolean value: {value!r}")
        if kind == "auto_restart":
            lowered = value.lower()
            if lowered in _TRUE or lowered in _FALSE or lowered == "unexpected":
                return lowered
            raise ValueError(f"invalid 'autorestart' value {value!r}")
        if kind == "signal":
            try:
                number = int(value)
            except ValueError:
                name = stripped.upper()
                found = getattr(signal, name if name.startswith("SIG") else "SIG" + name, None)
                if found is None:
                    raise ValueError(f"value {value!r} is not a valid signal name") from None
                number = int(found)
            if number not in _SIGNUMS:
                raise ValueError(f"value {value!r} is not a valid signal number")
            return number
        if kind == "exitcodes":
            codes = [int(code) for code in value.split(",")] if value else []
            if any(not 0 <= code <= 255 for code in codes):
                raise ValueError(f"not a valid list of exit codes: {value!r}")
            return codes
        if kind == "byte_size":
            lowered = value.lower()
            for suffix, factor in (("kb", 1024), ("mb", 1024 ** 2), ("gb", 1024 ** 3)):
                if lowered.endswith(suffix):
                    return int(lowered[:-2]) * factor
            return int(lowered)
        if kind == "octal":
            return int(value, 8)
        if kind == "name":
            for char in " :/":
                if char in stripped:
                    raise ValueError(f"Invalid name: {value!r} because of character: {char!r}")
            return stripped
        if kind == "loglevel":
            if value.lower() not in _LOG_LEVELS:
                raise ValueError(f"bad logging level name {value!r}")
            return value.lower()
    except ValueError as exc:
        message = f"{value!r} is not a valid {kind.replace('_', ' ')}" if kind in ("integer", "byte_size", "octal") \
            else str(exc)
        raise reader.fail(section, key, f"{message} (supervisord refuses it)") from None
    raise AssertionError(kind)


_PH = "qqSUPERVISEPH"
_PLACEHOLDER = re.compile(_PH + r"(\d+)qq")


class _Translation:
    """Turns one value into supervise's syntax: names known at import become text, names only
    known at run time (``ENV_X``, a replica's number) become ``${X}``/``${REPLICA}``."""

    def __init__(self) -> None:
        self.runtime: list[str] = []
        self.now: list[str] = []  # what each placeholder is at import, as supervisord expands it

    def placeholder(self, variable: str, now: str) -> str:
        self.runtime.append(variable)
        self.now.append(now)
        return f"{_PH}{len(self.runtime) - 1}qq"

    def resolve(self, text: str) -> str:
        """``text`` with each placeholder as it is at import: equal to supervisord's reading
        exactly when deferring the expansion to run time changes nothing else."""
        return _PLACEHOLDER.sub(lambda m: self.now[int(m.group(1))], text)

    def finish(self, text: str) -> str:
        text = re.sub(r"\$(?=[${]|" + _PH + ")", "$$", text)
        return _PLACEHOLDER.sub(lambda m: "${" + self.runtime[int(m.group(1))] + "}", text)


def _translate(reader: _Reader, section: str, key: str, value: str, names: Mapping[str, object],
               program_env: Mapping[str, str], replica_var: bool, notes: list[str]) -> tuple[str, str, _Translation]:
    """``value`` twice: expanded now exactly as supervisord would here (``%(ENV_X)s`` unset:
    empty, reported), and with placeholders where supervise expands at run time."""
    if re.search(r"%(?![(%])", value.replace("%%", "")):
        raise reader.fail(section, key, f"{value!r} has a % that is not %(name)s or %%: supervisord cannot "
                          "expand it (write %% for a literal %)")
    translation = _Translation()
    exact, ours, pos = [], [], 0
    for match in _EXPANSION.finditer(value):
        exact.append(value[pos:match.start()])
        ours.append(value[pos:match.start()])
        pos = match.end()
        if match.group(0) == "%%":
            exact.append("%")
            ours.append("%")
            continue
        name, spec = match.group(1), match.group(2)
        if name == "process_num" and replica_var and "process_num" in names:
            exact.append(("%" + spec) % names["process_num"])
            ours.append(translation.placeholder("REPLICA", exact[-1]))
        elif name.startswith("ENV_"):
            known = reader.env_value(name[4:], program_env)
            if known is None:
                reader.report(section, key, f"%({name})s: {name[4:]} is not set where this import ran, so "
                              f"supervisord would refuse to start here; kept as ${{{name[4:]}}}", notes)
                known = ""
            exact.append(_format(reader, section, key, spec, known))
            if spec == "s":
                ours.append(translation.placeholder(name[4:], exact[-1]))
            else:
                ours.append(exact[-1])
        elif name in names:
            exact.append(_format(reader, section, key, spec, names[name]))
            ours.append(exact[-1])
        else:
            reader.expand(section, key, match.group(0), names, program_env)  # raises as supervisord does
    exact.append(value[pos:])
    ours.append(value[pos:])
    return "".join(exact), "".join(ours), translation


def _format(reader: _Reader, section: str, key: str, spec: str, value: object) -> str:
    try:
        return ("%" + spec) % (value,)
    except (TypeError, ValueError) as exc:
        raise reader.fail(section, key, f"%(...){spec} is badly formatted for supervisord: {exc}") from None


def supervisord_to_toml(text: str, *, path: str | None = None, read_include: IncludeReader = read_includes,
                        findings: list[Finding] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Convert supervisord.conf ``text`` to services.toml text, by supervisord's own rules.

    ``path`` is where the text came from (for ``%(here)s``, relative ``[include]`` globs and
    messages). ``[include] files`` globs are read through ``read_include`` (one level deep, as
    in supervisord); a glob that matches nothing is a finding, as supervisord logs it.
    ``environ`` (default ``os.environ``) gives ``%(ENV_X)s`` where its value is needed now.
    What has no equivalent is appended to ``findings`` and written as a comment. Raises
    ImportFailed (``FILE:LINE: [section] key: ...``) for everything supervisord refuses at
    start, for commands it could not split and for a file without programs.
    """
    environ = os.environ if environ is None else environ
    found: list[Finding] = [] if findings is None else findings
    source_name = path or "supervisord.conf"
    main_here = os.path.dirname(os.path.abspath(source_name))
    ini = _Ini()
    ini.read(text, source_name)
    reader = _Reader(ini, environ, found)
    first = len(found)
    ignored: list[str] = []
    parser = ini.parser
    if parser.has_section("include"):
        if not parser.has_option("include", "files"):
            raise reader.fail("include", None, "has no files = line (supervisord refuses it)")
        names = {"here": main_here, "host_node_name": platform.node()}
        files = reader.expand("include", "files", parser.get("include", "files"), names)
        for pattern in files.split():
            full = os.path.join(main_here, pattern)
            matches = read_include(full)
            if not matches:
                reader.report("include", "files", f'no file matches "{full}" (supervisord logs the same '
                              "warning and goes on)", ignored)
            for name, included in matches:
                ini.read(included, name)
                nested = re.search(r"^\[include\]", normalise(included), re.MULTILINE)
                if nested:
                    line = normalise(included)[:nested.start()].count("\n") + 1
                    finding = Finding(name, line, "[include] in an included file: supervisord reads includes "
                                      "one level deep and ignores it, so does this import")
                    found.append(finding)
                    ignored.append(f"NOT CARRIED OVER: {finding}")
    if parser.has_section("supervisord"):
        _supervisord_section(reader, ignored)  # first: its environment= gives ENV_ names to programs
    else:
        finding = Finding(source_name, 0, "no [supervisord] section: read as a file that supervisord includes "
                          "(as its main file, supervisord would refuse it)")
        found.append(finding)
        ignored.append(f"note: {finding}")

    sections = parser.sections()
    groups: dict[str, str] = {}
    for section in sections:
        if section.startswith("group:"):
            group = _check(reader, section, None, section.split(":", 1)[1], "name")  # type: ignore[arg-type]
            names = {"here": reader.here(section, "priority"), "host_node_name": platform.node()}
            priority = reader.expand(section, "priority", reader.get(section, "priority", "999") or "", names)
            _check(reader, section, "priority", priority, "integer")
            listed = reader.expand(section, "programs", reader.get(section, "programs") or "", names)
            programs = [p.strip() for p in listed.split(",")] if listed else []  # datatypes.list_of_strings
            for program in programs:
                if f"program:{program}" not in sections and f"fcgi-program:{program}" not in sections:
                    raise reader.fail(section, "programs", f"names unknown program or fcgi-program {program} "
                                      "(supervisord refuses it)")
                if program in groups:
                    reader.report(section, "programs", f"{program} is also in [group:{groups[program]}]; "
                                  "supervisord runs it in both groups, supervise runs it once", ignored)
                groups.setdefault(program, str(group))
            reader.report(section, None, f"programs = {', '.join(programs)}: supervise has no groups; start, "
                          "stop and restart take service names", ignored)

    services = tomlkit.table(is_super_table=True)
    for section in sections:
        kind, colon, name = section.partition(":")
        if section in ("supervisord", "include") or kind == "group" and colon:
            continue
        elif kind == "program" and colon:
            for service, table in _program(reader, section, name, groups.get(name, name)):
                if service in services:
                    raise reader.fail(section, None, f"gives the service name {service!r} a second time")
                services.add(service, table)
        elif kind in ("eventlistener", "fcgi-program") and colon:
            _listener_or_fcgi(reader, section, kind, name, ignored)
            shadow = _Reader(ini, environ, [])  # supervisord checks these as programs too
            shadow.global_env = reader.global_env
            _program(shadow, section, name, name)
        elif kind in ("rpcinterface", "ctlplugin") and colon:
            factory = "supervisor.rpcinterface_factory" if kind == "rpcinterface" else "supervisor.ctl_factory"
            if kind == "rpcinterface" and reader.get(section, factory) is None:
                raise reader.fail(section, None, f"does not specify a {factory} (supervisord refuses it)")
            reader.report(section, None, "not needed: supervise answers on STATE_DIR/control.sock", ignored)
        elif section.startswith(("unix_http_server", "inet_http_server")):
            _server_section(reader, section, ignored)
        elif section == "supervisorctl":
            reader.report(section, None, "not needed: supervise's own verbs (status, stop, ...) talk to "
                          "STATE_DIR/control.sock", ignored)
        else:
            known = ("program:NAME", "group:NAME", "eventlistener:NAME", "fcgi-program:NAME", "rpcinterface:NAME",
                     "supervisord", "include", "unix_http_server", "inet_http_server", "supervisorctl")
            raise reader.fail(section, None, f"unknown section type{suggest(section, known)}: supervisord would "
                              "skip it silently (a misspelt [program:x] never starts); rename or remove it")
    if not services:
        raise ImportFailed(f"{source_name}: no [program:NAME] sections found")
    # In file order: the main file, then included files as read; each by line.
    top = set(ignored)
    header_findings = {f for f in found[first:] if f"NOT CARRIED OVER: {f}" in top or f"note: {f}" in top}
    order = {name: index for index, name in enumerate(ini.files)}
    found[first:] = sorted(_unique(found[first:]), key=lambda f: (order.get(f.file, -1), f.line))
    ignored = [f"{'note' if f.message.startswith('no [supervisord]') else 'NOT CARRIED OVER'}: {f}"
               for f in found[first:] if f in header_findings]

    header = [f"Imported from {Path(source_name).name} by `supervise import`; review the NOT CARRIED OVER notes.",
              "Logs: stdout and stderr of every replica go to STATE_DIR/logs/NAME.log.",
              "Stopping signals each replica's whole process group (supervisord: stopasgroup/killasgroup)."]
    doc = _document(header + ignored)
    if reader.global_env:
        env = tomlkit.table()
        env.update(reader.global_env)
        doc.add("env", env)
    doc.add("services", services)
    return tomlkit.dumps(doc)


def _supervisord_section(reader: _Reader, ignored: list[str]) -> None:
    """``[supervisord]``: every value checked as supervisord checks it; ``environment`` becomes
    ``[env]``; the rest is reported, key by key."""
    section = "supervisord"
    names = {"here": reader.here(section, None)}
    types = {"minfds": "integer", "minprocs": "integer", "umask": "octal", "logfile_maxbytes": "byte_size",
             "logfile_backups": "integer", "loglevel": "loglevel", "nodaemon": "boolean", "silent": "boolean",
             "nocleanup": "boolean", "strip_ansi": "boolean"}
    for key in reader.ini.parser.options(section):
        raw = reader.get(section, key) or ""
        if key == "environment":
            notes: list[str] = []
            env_names = {"here": names["here"], "host_node_name": platform.node()}
            exact, ours, translation = _translate(reader, section, key, raw, env_names, {}, False, notes)
            reader.global_env = _environment(reader, section, exact, ours, translation, ignored)
            ignored.extend(notes)
            continue
        value = reader.expand(section, key, raw, names)
        if key in types:
            _check(reader, section, key, value, types[key])
        why = _SUPERVISORD_KEYS.get(key, "unknown to supervisord too (it ignores it)")
        reader.report(section, key, f"{key} = {value.strip()}: {why}", ignored)


def _environment(reader: _Reader, section: str, exact: str, ours: str, translation: _Translation,
                 notes: list[str]) -> dict[str, str]:
    """An ``environment=`` value as supervisord parses it, in supervise's syntax."""
    try:
        pairs, dropped = _key_value_pairs(exact)
    except ValueError as exc:
        raise reader.fail(section, "environment", f"{exc} (supervisord refuses it: quote values with spaces, "
                          "commas or characters other than letters, digits and _/.+-():)") from None
    for word in dropped:
        reader.report(section, "environment", f"{word!r} follows a value without a comma: supervisord drops "
                      "it, so does this import (quote the value to keep it)", notes)
    try:
        translated, _ = _key_value_pairs(ours)
    except ValueError:
        translated = {}
    if {k: translation.resolve(v) for k, v in translated.items()} != pairs:
        reader.report(section, "environment", "an %(ENV_X)s value changes how supervisord splits the pairs: "
                      "expanded now, as supervisord would at start here", notes)
        result = {k: _escape_dollars(v) for k, v in pairs.items()}
    else:
        result = {k: translation.finish(v) for k, v in translated.items()}
    for key in [k for k in result if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]:
        reader.report(section, "environment", f"{key!r} is not a variable name a shell or supervise accepts: "
                      "dropped", notes)
        del result[key]
    return result


def _server_section(reader: _Reader, section: str, ignored: list[str]) -> None:
    get = reader.get
    if (get(section, "username") is None) != (get(section, "password") is None):
        raise reader.fail(section, None, "has a username or a password without the other (supervisord refuses it)")
    if section.startswith("inet_http_server"):
        port = get(section, "port")
        if port is None:
            raise reader.fail(section, None, "has no port value (supervisord refuses it)")
        address = port.rsplit(":", 1)[-1]
        if not address.strip().isdigit() or not 1 <= int(address) <= 65535:
            raise reader.fail(section, "port", f"{port!r} is not a valid port (supervisord refuses it)")
    else:
        if get(section, "file") is None:
            raise reader.fail(section, None, "has no file value (supervisord refuses it)")
        if get(section, "chmod") is not None:
            _check(reader, section, "chmod", get(section, "chmod") or "", "octal")
    reader.report(section, None, "not needed: supervise answers on STATE_DIR/control.sock (no HTTP or XML-RPC)",
                  ignored)


def _listener_or_fcgi(reader: _Reader, section: str, kind: str, name: str, ignored: list[str]) -> None:
    get = reader.get
    names = {"here": reader.here(section, None), "host_node_name": platform.node()}
    if kind == "eventlistener":
        raw_size = reader.expand(section, "buffer_size", get(section, "buffer_size", "10") or "", names)
        size = _check(reader, section, "buffer_size", raw_size, "integer")
        if isinstance(size, int) and size < 1:
            raise reader.fail(section, "buffer_size", f"invalid buffer_size ({size}) (supervisord refuses it)")
        listed = reader.expand(section, "events", get(section, "events", "") or "", names)
        events = {e.strip().upper() for e in listed.split(",") if e.strip()}
        if not events:
            raise reader.fail(section, None, 'requires an "events" line (supervisord refuses it)')
        for event in sorted(events - _EVENT_TYPES):
            raise reader.fail(section, "events", f"unknown event type {event} (supervisord refuses it)")
        if _check(reader, section, "redirect_stderr", get(section, "redirect_stderr", "false") or "", "boolean"):
            raise reader.fail(section, "redirect_stderr", "redirect_stderr = true is not allowed for an event "
                              "listener (supervisord refuses it)")
        reader.report(section, None, "no event listeners: `supervise events` streams life-cycle events as "
                      "JSON lines to any reader", ignored)
    else:
        if not get(section, "socket"):
            raise reader.fail(section, None, 'requires a "socket" line (supervisord refuses it)')
        reader.report(section, None, "supervise does not open sockets for services; run the program with "
                      "its own listener", ignored)


def _program(reader: _Reader, section: str, raw_name: str, group: str) -> list[tuple[str, Table]]:
    """One ``[program:NAME]`` section as services tables (with notes as comments), checked as
    supervisord's processes_from_section checks it.

    ``numprocs`` > 1 becomes ``replicas`` with ``%(process_num)d`` as ``${REPLICA}`` when
    that is exact (numbers from 0, no padding, not in ``directory``); otherwise one service
    per process, named by ``process_name``, so each keeps its number and format.
    """
    get = reader.get
    name = _check(reader, section, None, raw_name, "name")
    here = reader.here(section, None)
    node = platform.node()
    base = {"here": here, "program_name": name, "host_node_name": node, "group_name": group}
    notes: list[str] = []

    def typed(key: str, default: str, kind: str) -> object:
        raw = get(section, key, default) or ""
        names = dict(base, here=reader.here(section, key))
        return _check(reader, section, key, reader.expand(section, key, raw, names), kind)

    priority = typed("priority", "999", "integer")
    autostart = typed("autostart", "true", "boolean")
    autorestart = typed("autorestart", "unexpected", "auto_restart")
    startsecs = typed("startsecs", "1", "integer")
    startretries = typed("startretries", "3", "integer")
    stopsignal = typed("stopsignal", "TERM", "signal")
    stopwaitsecs = typed("stopwaitsecs", "10", "integer")
    stopasgroup = typed("stopasgroup", "false", "boolean")
    killasgroup = typed("killasgroup", str(stopasgroup).lower(), "boolean")
    exitcodes = typed("exitcodes", "0", "exitcodes")
    typed("redirect_stderr", "false", "boolean")
    numprocs = typed("numprocs", "1", "integer")
    start = typed("numprocs_start", "0", "integer")
    for key in ("stdout_capture_maxbytes", "stderr_capture_maxbytes"):
        typed(key, "0", "byte_size")
    for key in ("stdout_events_enabled", "stderr_events_enabled"):
        typed(key, "false", "boolean")
    umask = get(section, "umask")
    if umask is not None:
        typed("umask", "022", "octal")
    user = None
    if get(section, "user") is not None:
        user = str(reader.expand(section, "user", get(section, "user") or "", base)).strip()
        if re.search(r"\$\{[A-Za-z_]", user):
            raise reader.fail(section, "user", f"{user!r}: supervisord does not expand ${{...}} (no such user); "
                              "write %(ENV_X)s or the name")
        try:
            import pwd
            pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except (KeyError, ImportError):
            reader.report(section, "user", f"user {user} does not exist here: supervisord refuses a user it "
                          "cannot find, and so will supervise where it runs", notes)
    assert isinstance(numprocs, int) and isinstance(start, int)
    if numprocs > 1000:
        raise reader.fail(section, "numprocs", f"numprocs = {numprocs}: supervise runs at most 1000 replicas")
    process_name = get(section, "process_name", "%(program_name)s") or ""
    _check(reader, section, "process_name", process_name, "name")
    if numprocs > 1 and "%(process_num)" not in process_name:
        raise reader.fail(section, "process_name" if get(section, "process_name") else "numprocs",
                          f"numprocs = {numprocs} needs %(process_num) in process_name (supervisord refuses it)")
    if stopasgroup and not killasgroup:
        raise reader.fail(section, "killasgroup", "stopasgroup = true with killasgroup = false "
                          "(supervisord refuses it)")
    if get(section, "command") is None:
        raise reader.fail(section, None, "does not specify a command (supervisord refuses it)")
    for key in ("stdout_logfile_backups", "stderr_logfile_backups"):
        typed(key, "10", "integer")
    for key in ("stdout_logfile_maxbytes", "stderr_logfile_maxbytes"):
        typed(key, "50MB", "byte_size")
    for key in ("stdout_syslog", "stderr_syslog"):
        typed(key, "false", "boolean")

    uses = [m for key in ("command", "environment", "directory")
            for m in _EXPANSION.finditer(get(section, key, "") or "") if m.group(1) == "process_num"]
    in_directory = "%(process_num)" in (get(section, "directory", "") or "")
    exact_replicas = start == 0 and not in_directory and all(m.group(2) in "sdiu" for m in uses)
    split = numprocs > 1 and not exact_replicas
    numbers = list(range(start, start + numprocs)) if split else [start]

    count_raw = get(section, "numprocs", "1") or "1"
    results: list[tuple[str, Table]] = []
    for number in numbers:
        names = dict(base, process_num=number, numprocs=numprocs)
        local: list[str] = list(notes)
        items: list[tuple[str, object, str | None]] = []  # (key, value, inline comment)

        program_env: dict[str, str] = {}
        env: dict[str, str] = {}
        if get(section, "environment") is not None:
            exact, ours, translation = _translate(reader, section, "environment", get(section, "environment") or "",
                                                  names, {}, numprocs > 1 and not split, local)
            env = _environment(reader, section, exact, ours, translation, local)
            program_env = _key_value_pairs(exact)[0]

        command = get(section, "command") or ""
        exact, ours, translation = _translate(reader, section, "command", command, names, program_env,
                                              numprocs > 1 and not split, local)
        try:
            exact_words = shlex.split(exact)
            our_words = shlex.split(ours)
        except ValueError as exc:
            raise reader.fail(section, "command", f"cannot be split into words: {exc} (supervisord could "
                              "not start it either)") from None
        if not exact_words:
            raise reader.fail(section, "command", "is empty (supervisord could not start it either)")
        if [translation.resolve(word) for word in our_words] == exact_words:
            argv = [translation.finish(word) for word in our_words]
        else:
            reader.report(section, "command", "an %(ENV_X)s value holds spaces or quotes, which supervisord "
                          "splits into words (supervise would not): expanded now, as supervisord would at start "
                          "here", local)
            argv = [_escape_dollars(word) for word in exact_words]
        if os.path.basename(exact_words[0]) == "pidproxy":
            if len(argv) >= 3:
                reader.report(section, "command", f"pidproxy wrapper dropped: supervise signals the whole "
                              f"process group of {exact_words[2]} itself", local)
                argv = argv[2:]
            else:
                reader.report(section, "command", "pidproxy without a pid file and a command", local)
        items.append(("command", argv, None))

        count_note = None
        if "%(" in count_raw:
            count_note = f"numprocs = {count_raw.strip()} gave {numprocs} at import"
            reader.report(section, "numprocs", f"{count_raw.strip()} is {numprocs} in the environment of this "
                          "import; change replicas when that changes", local)
        if split:
            local.append(f"note: numprocs = {numprocs}, numprocs_start = {start}: one service per process, so "
                         f"process {number} keeps its number {names['process_num']} in every value")
        replicas = 1 if split else max(numprocs, 0)
        if autostart is False:
            items.append(("replicas", 0, f"autostart = false (numprocs = {replicas}): raise to start it"))
        elif replicas != 1:
            items.append(("replicas", replicas, count_note or (f"numprocs = {numprocs}: supervisord starts no process"
                                                               if replicas == 0 else None)))
        elif count_note:
            items.append(("replicas", 1, count_note))

        restart = {"unexpected": "on-failure", **{t: "always" for t in _TRUE}, **{f: "never" for f in _FALSE}}
        items.append(("restart", restart[str(autorestart)], f"autorestart = {autorestart}"))
        if stopsignal != signal.SIGTERM:
            try:
                items.append(("stop_signal", signal.Signals(stopsignal).name, None))  # type: ignore[arg-type]
            except ValueError:
                reader.report(section, "stopsignal", f"signal {stopsignal} is not one supervise can send", local)
        if isinstance(stopwaitsecs, int) and stopwaitsecs < 0:
            reader.report(section, "stopwaitsecs", f"stopwaitsecs = {stopwaitsecs}: supervisord kills at once; "
                          "supervise waits the default 10s", local)
        elif stopwaitsecs != 10:
            items.append(("stop_timeout", f"{stopwaitsecs}s", None))
        if get(section, "directory") is not None:
            names_here = dict(names, here=reader.here(section, "directory"))
            cwd = reader.expand(section, "directory", get(section, "directory") or "", names_here, program_env)
            if "%(" in (get(section, "directory") or ""):
                local.append("note: cwd is expanded at import (supervise does not expand variables in cwd)")
            if re.search(r"\$\{[A-Za-z_]", cwd):
                raise reader.fail(section, "directory", f"{cwd.strip()!r}: supervisord does not expand ${{...}} "
                                  "(it would chdir to that literal path); write %(ENV_X)s or the path")
            items.append(("cwd", cwd.strip(), None))  # used as written: no $ escaping
            if not cwd.strip().startswith("/"):
                local.append("note: a relative cwd is relative to this file's folder, not to where supervisord ran")
        if user is not None:
            items.append(("user", user, None))
        if env:
            items.append(("env", _env_item(env), None))

        for key, value, default, why in (
                ("priority", priority, 999, "start order comes from depends_on"),
                ("startsecs", startsecs, 1, "a ready check (ready = {...}) says when a replica is up"),
                ("startretries", startretries, 3, "start_limit (default 10 starts a minute) plays this part"),
                ("exitcodes", exitcodes, [0], "on-failure restarts on any exit but 0"),
                ("stopasgroup", stopasgroup, False, "supervise always signals the whole process group"),
                ("killasgroup", killasgroup, stopasgroup, "supervise always kills the whole process group")):
            if key in ("stopasgroup", "killasgroup"):
                if get(section, key) is not None and value is False:
                    reader.report(section, key, f"{key} = {get(section, key)}: {why}", local)
            elif value != default:
                reader.report(section, key, f"{key} = {get(section, key)}: {why}", local)
        if umask is not None:
            reader.report(section, "umask", f"umask = {umask}: no umask setting; set it in the command", local)
        serverurl = get(section, "serverurl")
        if serverurl is not None and serverurl.strip().upper() != "AUTO":
            reader.report(section, "serverurl", f"serverurl = {serverurl}: no XML-RPC server", local)
        if numprocs > 1 and not split and get(section, "process_name") is not None:
            reader.report(section, "process_name", f"process_name = {process_name}: replicas are named "
                          f"{name}[0] ... {name}[{numprocs - 1}]", local)
        for key in sorted(k for k in reader.ini.parser.options(section) if k in _LOG_KEYS):
            reader.report(section, key, f"{key} = {get(section, key)}: logs go to STATE_DIR/logs/SERVICE.log",
                          local)
        handled = {"command", "numprocs", "numprocs_start", "autostart", "autorestart", "stopsignal", "stopwaitsecs",
                   "directory", "user", "environment", "priority", "startsecs", "startretries", "exitcodes",
                   "stopasgroup", "killasgroup", "umask", "serverurl", "process_name", *_LOG_KEYS}
        for key in reader.ini.parser.options(section):
            if key not in handled:
                reader.report(section, key, f"{key} = {get(section, key)}: unknown to supervisord too (it "
                              "ignores it)", local)

        for key in ("stdout_logfile", "stderr_logfile", "serverurl"):  # expanded by supervisord: checked
            if get(section, key) is not None:
                reader.expand(section, key, get(section, key) or "", names if key != "serverurl" else base,
                              program_env if key != "serverurl" else None)
        reader.expand(section, "process_name", process_name, names, program_env)
        service_name = str(name)
        if split:
            service_name = reader.expand(section, "process_name", process_name, names).strip()
        service = _service_name(service_name, local)
        table = tomlkit.table()
        seen: set[str] = set()
        for note in sorted(local, key=_line_of):
            if note not in seen:
                table.add(tomlkit.comment(clean(note)))
                seen.add(note)
        for key, value, comment in items:
            table.add(key, value)
            if comment:
                table[key].comment(clean(comment))
        results.append((service, table))
    return results


def _line_of(note: str) -> int:
    """The line a note names (``... FILE:LINE: ...``), for file order; notes without one last."""
    found = re.search(r":(\d+): ", note)
    return int(found.group(1)) if found else 1 << 30


def _unique(findings: list[Finding]) -> list[Finding]:
    out: list[Finding] = []
    for finding in findings:
        if finding not in out:
            out.append(finding)
    return out
