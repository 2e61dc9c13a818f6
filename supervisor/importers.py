"""``supervise import``: a Procfile or a supervisord.conf -> an equivalent services.toml.

Both converters are functions of text (plus, for supervisord's ``[include]``, a reader of the
included files) that return TOML text built with tomlkit. What cannot be carried over is kept
as a comment at the place it belongs, so the result reads as a review list; it always passes
``supervise check`` when saved where the input was (relative paths then resolve alike).
"""

from __future__ import annotations

import configparser
import glob
import io
import os
import re
import shlex
import signal
from pathlib import Path
from typing import Callable, Iterable, Mapping

import tomlkit
from dotenv import dotenv_values
from tomlkit.items import Table

from .config import NAME_RE, escape


class ImportFailed(Exception):
    """The input cannot be read as the format it claims to be; the message says where."""


def import_file(path: Path, *, env: Path | None = None, format: str | None = None) -> str:
    """services.toml text for the Procfile or supervisord.conf at ``path``.

    ``format`` is ``"procfile"`` or ``"supervisord"`` (None: :func:`guess_format`). For a
    Procfile, ``env`` is the dotenv file (None: ``.env`` beside it, if any), named relative to
    the Procfile's folder when inside it. Raises ImportFailed for unreadable files, an unknown
    format or input that cannot be converted.
    """
    text = _read(path)
    format = format or guess_format(str(path), text)
    if format == "supervisord":
        if env is not None:
            raise ImportFailed("--env is for a Procfile; supervisord.conf has environment= lines")
        return supervisord_to_toml(text, path=str(path))
    if format != "procfile":
        raise ImportFailed(f"cannot tell whether {path} is a Procfile or a supervisord.conf; say --from")
    if env is None and (path.parent / ".env").is_file():
        env = path.parent / ".env"
    if env is None:
        return procfile_to_toml(text, source_name=path.name)
    named = os.path.relpath(env.resolve(), path.resolve().parent)
    if named.startswith(".."):
        named = str(env.resolve())
    return procfile_to_toml(text, env_text=_read(env), env_file=named, source_name=path.name)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFailed(f"cannot read {path}: {exc}") from None


# -- shared ---------------------------------------------------------------------------------

def _comment(text: str):
    """A TOML comment of ``text``, control and bidi characters escaped (TOML forbids control
    characters in comments, and the output must pass ``supervise check``)."""
    return tomlkit.comment(escape(text))


def _document(header: Iterable[str]) -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    for line in header:
        doc.add(_comment(line))
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
    notes.append(f'note: "{raw}" renamed (service names are letters, digits, _ . -)')
    return name


def _escape_dollars(text: str) -> str:
    """Keep a literal ``$`` literal under our ``${VAR}``/``$$`` expansion."""
    return re.sub(r"\$(?=[${])", "$$", text)


# -- Procfile -------------------------------------------------------------------------------

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.*?)\s*$")
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
#: First words that only a shell understands (``exec`` alone is dropped instead).
_SHELL_WORDS = {"cd", "source", ".", "export", "set", "unset", "ulimit", "umask", "trap", "eval", "if",
                "for", "while", "until", "case", "test", "[", "{", "!", "time", "alias", "read", "wait"}
#: foreman and honcho give process type i the port base + 100 * i (base: $PORT or 5000).
PORT_BASE, PORT_STEP = 5000, 100


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


def guess_format(name: str, text: str) -> str | None:
    """``"procfile"`` or ``"supervisord"`` from a file name and its text; None if unsure."""
    base = Path(name).name.lower()
    if "procfile" in base:
        return "procfile"
    if re.search(r"^\s*\[(program|supervisord|include)(:|\])", text, re.MULTILINE) or base.endswith((".conf", ".ini")):
        return "supervisord"
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if lines and all(_PROCFILE_LINE.match(l) for l in lines):
        return "procfile"
    return None


def procfile_to_toml(text: str, *, env_text: str | None = None, env_file: str | None = None,
                     source_name: str = "Procfile") -> str:
    """Convert a Procfile (``name: command`` lines, ``#`` comments) to services.toml text.

    ``env_text`` is the dotenv file (read with python-dotenv) and ``env_file`` the path the
    output should name for it (relative to where the output is saved). Each process type gets
    ``PORT`` as foreman and honcho assign it. Raises ImportFailed when no process is found.
    """
    env_values: dict[str, str | None] = {}
    if env_text is not None:
        env_values = dict(dotenv_values(stream=io.StringIO(env_text), interpolate=False))
    try:
        base_port = int(env_values.get("PORT") or PORT_BASE)
    except ValueError:
        base_port = PORT_BASE
    entries: list[tuple[str, str]] = []
    skipped: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line)
        if not match or not match.group(2):
            skipped.append(f"line {number} not understood: {line.strip()}")
            continue
        entries.append((match.group(1), match.group(2)))
    if not entries:
        raise ImportFailed(f"{source_name}: no `name: command` lines found")

    header = [f"Imported from {source_name} by `supervise import`. Save it beside {source_name}:",
              "relative paths in this file are relative to its folder.",
              "Procfile commands run through a shell under foreman; here a command runs without one",
              "unless it needs shell syntax (then shell = true).",
              f"PORT is set as foreman sets it: {base_port} + {PORT_STEP} per process type, in file order.",
              "foreman stops everything when one process exits; here each service restarts on its own."]
    if env_file is not None:
        header.append(f"{env_file} ({len(env_values)} variables) reaches every service, as under foreman.")
    header += [f"NOT CARRIED OVER: {note}" for note in skipped]
    doc = _document(header)
    services = tomlkit.table(is_super_table=True)
    seen: set[str] = set()
    for index, (raw, command) in enumerate(entries):
        notes: list[str] = []
        name = _service_name(raw, notes)
        if name in seen:
            notes.append(f'note: "{raw}" appears twice in {source_name}; the later line is used, as by honcho')
            del services[name]
        seen.add(name)
        table = tomlkit.table()
        for note in notes:
            table.add(_comment(note))
        if needs_shell(command):
            table.add("command", command)
            table.add("shell", True)
        else:
            table.add("command", shell_to_argv(command))
        env = tomlkit.inline_table()
        env.update({"PORT": str(base_port + PORT_STEP * index)})
        table.add("env", env)
        if raw == "release":
            table.add("restart", "never")
            table["restart"].comment("Heroku runs `release` once per deploy, not as a service")
        if env_file is not None:
            table.add("env_file", env_file)
        services.add(name, table)
    doc.add("services", services)
    return tomlkit.dumps(doc)


# -- supervisord.conf -----------------------------------------------------------------------

_EXPANSION = re.compile(r"%%|%\(([^)]+)\)([-#0 +]*\d*(?:\.\d+)?[sdiuxXofFeEgGcr])")
_TRUE, _FALSE = ("yes", "true", "on", "1"), ("no", "false", "off", "0")
_LOG_KEYS = {
    "redirect_stderr", "stdout_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
    "stdout_capture_maxbytes", "stdout_events_enabled", "stdout_syslog", "stderr_logfile",
    "stderr_logfile_maxbytes", "stderr_logfile_backups", "stderr_capture_maxbytes",
    "stderr_events_enabled", "stderr_syslog",
}
_CONTROL_SECTIONS = ("unix_http_server", "inet_http_server", "supervisorctl")

IncludeReader = Callable[[str, Path | None], list[tuple[str, str]]]


def read_includes(pattern: str, here: Path | None) -> list[tuple[str, str]]:
    """The files an ``[include] files`` glob names, relative to ``here``: (path, text), sorted."""
    base = here if here is not None else Path.cwd()
    full = pattern if Path(pattern).is_absolute() else str(base / pattern)
    found = []
    for name in sorted(glob.glob(full)):
        try:
            found.append((name, Path(name).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise ImportFailed(f"cannot read included file {name}: {exc}") from None
    return found


def _parser() -> configparser.RawConfigParser:
    # supervisord's own settings (UnhosedConfigParser): ; and # start comments, also inline
    # after whitespace; duplicate sections or keys are not errors; keys keep their case.
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False,
                                          interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    return parser


def _read_ini(text: str, name: str, here: Path | None) -> dict[str, tuple[dict[str, str], Path | None]]:
    """Sections of one INI file: name -> (values, the file's folder for ``%(here)s``)."""
    parser = _parser()
    try:
        parser.read_string(text, source=name)
    except configparser.Error as exc:
        raise ImportFailed(f"{name}: {exc}") from None
    return {section: (dict(parser.items(section)), here) for section in parser.sections()}


def _boolean(value: str) -> bool | None:
    lowered = value.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def key_value_pairs(text: str) -> dict[str, str]:
    """supervisord's ``environment=KEY="val",KEY2=val``: commas separate pairs except inside
    quotes, which are removed. Raises ImportFailed for a pair without ``=``."""
    pairs: dict[str, str] = {}
    parts, current, quote = [], "", ""
    for char in text:
        if quote:
            current += char
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
            current += char
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    for part in parts:
        if not part.strip():
            continue
        if "=" not in part:
            raise ImportFailed(f"environment: {part.strip()!r} is not KEY=value")
        key, value = part.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        pairs[key.strip()] = value
    return pairs


class _Expander:
    """Translates supervisord's ``%(name)s`` expressions in one section, noting what it cannot."""

    def __init__(self, program: str | None, here: Path | None, notes: list[str]):
        self.program = program
        self.here = here
        self.notes = notes

    def __call__(self, value: str, key: str) -> str:
        out, pos = [], 0
        for match in _EXPANSION.finditer(value):
            out.append(_escape_dollars(value[pos:match.start()]))
            pos = match.end()
            out.append(self.one(match, key))
        out.append(_escape_dollars(value[pos:]))
        return "".join(out)

    def one(self, match: re.Match[str], key: str) -> str:
        if match.group(0) == "%%":
            return "%"
        name, spec = match.group(1), match.group(2)
        if name == "program_name" and self.program is not None:
            return _escape_dollars(self.program)
        if name == "process_num":
            if spec not in ("s", "d"):
                self.notes.append(f"NOT CARRIED OVER: {key}: %({name}){spec} became ${{REPLICA}}, unpadded")
            return "${REPLICA}"
        if name.startswith("ENV_"):
            return "${" + name[4:] + "}"
        if name == "here" and self.here is not None:
            return _escape_dollars(str(self.here))
        self.notes.append(f"NOT CARRIED OVER: {key}: %({name}){spec} has no equivalent; left as it was")
        return _escape_dollars(match.group(0))


def supervisord_to_toml(text: str, *, path: str | None = None, read_include: IncludeReader = read_includes) -> str:
    """Convert supervisord.conf ``text`` to services.toml text.

    ``path`` is where the text came from (for ``%(here)s``, relative ``[include]`` globs and
    messages). ``[include] files`` are read through ``read_include`` (one level deep, as in
    supervisord). Raises ImportFailed for unreadable INI text or a bad ``environment``.
    """
    source_name = path or "supervisord.conf"
    here = Path(path).resolve().parent if path else None
    sections = _read_ini(text, source_name, here)
    if "include" in sections:
        for pattern in sections["include"][0].get("files", "").split():
            if here is not None:
                pattern = pattern.replace("%(here)s", str(here))
            for name, included in read_include(pattern, here):
                for section, found in _read_ini(included, name, Path(name).resolve().parent).items():
                    if section != "include":  # included files cannot include (supervisord)
                        sections[section] = found

    header = [f"Imported from {source_name} by `supervise import`; review the NOT CARRIED OVER notes.",
              "Logs: stdout and stderr of every replica go to STATE_DIR/logs/NAME.log."]
    ignored: list[str] = []
    services = tomlkit.table(is_super_table=True)
    global_env: dict[str, str] = {}
    for section, (values, section_here) in sections.items():
        kind, _, name = section.partition(":")
        if kind == "program" and name:
            service, table = _program(name, values, section_here)
            services.add(service, table)
        elif kind == "supervisord":
            notes: list[str] = []
            if "environment" in values:
                global_env = {k: _Expander(None, here, notes)(v, "environment")
                              for k, v in key_value_pairs(values["environment"]).items()}
            ignored += [f"[supervisord] {note.removeprefix('NOT CARRIED OVER: ')}" for note in notes]
            if "directory" in values:
                ignored.append(f"[supervisord] directory = {values['directory']}: set cwd per service")
        elif kind == "group":
            ignored.append(f"[group:{name}] programs = {values.get('programs', '')}: supervise has no "
                           "groups; start, stop and restart take service names")
        elif kind == "eventlistener":
            ignored.append(f"[eventlistener:{name}]: no event listeners; `supervise events` streams "
                           "life-cycle events as JSON lines")
        elif kind == "fcgi-program":
            ignored.append(f"[fcgi-program:{name}]: supervise does not open sockets for services")
        elif kind in _CONTROL_SECTIONS or kind == "rpcinterface":
            ignored.append(f"[{section}]: not needed; the control socket is STATE_DIR/control.sock")
        elif kind != "include":
            ignored.append(f"[{section}]: unknown section")
    if not services:
        raise ImportFailed(f"{source_name}: no [program:NAME] sections found")
    doc = _document(header + [f"NOT CARRIED OVER: {note}" for note in ignored])
    if global_env:
        env = tomlkit.table()
        env.update(global_env)
        doc.add("env", env)
    doc.add("services", services)
    return tomlkit.dumps(doc)


def _program(raw_name: str, values: dict[str, str], here: Path | None) -> tuple[str, Table]:
    """One ``[program:NAME]`` section as a services table (with its notes as comments)."""
    notes: list[str] = []
    name = _service_name(raw_name, notes)
    expand = _Expander(raw_name, here, notes)
    table = tomlkit.table()
    items: list[tuple[str, object, str | None]] = []  # (key, value, inline comment)

    command = values.get("command", "").strip()
    try:
        argv = [expand(word, "command") for word in shlex.split(command)]
    except ValueError as exc:
        raise ImportFailed(f"[program:{raw_name}] command: {exc}") from None
    if not argv:
        raise ImportFailed(f"[program:{raw_name}] has no command (supervisord would refuse it too)")
    items.append(("command", argv, None))

    numprocs = values.get("numprocs", "1").strip()
    replicas = int(numprocs) if numprocs.isdigit() else 1
    if not numprocs.isdigit():
        notes.append(f"NOT CARRIED OVER: numprocs = {numprocs} is not a number")
    autostart = _boolean(values.get("autostart", "true"))
    if autostart is False:
        items.append(("replicas", 0, f"autostart = false (numprocs = {replicas}): raise to start it"))
    elif replicas != 1:
        items.append(("replicas", replicas, None))

    restart = {"unexpected": "on-failure", **{t: "always" for t in _TRUE}, **{f: "never" for f in _FALSE}}
    autorestart = values.get("autorestart", "unexpected").strip().lower()
    if autorestart in restart:
        items.append(("restart", restart[autorestart], f"autorestart = {autorestart}"))
    else:
        notes.append(f"NOT CARRIED OVER: autorestart = {autorestart} is not true, false or unexpected")

    if "stopsignal" in values:
        raw = values["stopsignal"].strip().upper()
        try:
            number = int(raw) if raw.isdigit() else signal.Signals[raw if raw.startswith("SIG") else "SIG" + raw]
            items.append(("stop_signal", signal.Signals(number).name, None))
        except (KeyError, ValueError):
            notes.append(f"NOT CARRIED OVER: stopsignal = {values['stopsignal']} is not a signal")
    if "stopwaitsecs" in values:
        secs = values["stopwaitsecs"].strip()
        if secs.isdigit():
            items.append(("stop_timeout", f"{secs}s", None))
        else:
            notes.append(f"NOT CARRIED OVER: stopwaitsecs = {secs} is not a number of seconds")
    if "directory" in values:
        cwd = expand(values["directory"].strip(), "directory")
        items.append(("cwd", cwd, None))
        if not cwd.startswith(("/", "$")):
            notes.append("note: a relative cwd is relative to this file's folder, not to where supervisord ran")
    if "user" in values:
        items.append(("user", values["user"].strip(), None))
    if "environment" in values:
        env = {k: expand(v, "environment") for k, v in key_value_pairs(values["environment"]).items()}
        if env:
            items.append(("env", _env_item(env), None))

    for key in ("stopasgroup", "killasgroup"):
        if _boolean(values.get(key, "true")) is False:
            notes.append(f"NOT CARRIED OVER: {key} = false: supervise always signals the whole process group")
    start = values.get("numprocs_start", "0").strip()
    if start not in ("", "0"):
        notes.append(f"NOT CARRIED OVER: numprocs_start = {start}: REPLICA counts from 0")
    simple = {
        "priority": "start order comes from depends_on",
        "startsecs": "a ready check (ready = {...}) says when a replica is up",
        "startretries": "start_limit (default 10 starts a minute) plays this part",
        "exitcodes": "on-failure restarts on any exit but 0",
        "umask": "no umask setting; set it in the command",
        "serverurl": "not needed",
        "process_name": "replicas are named NAME[0] ... NAME[n-1]",
    }
    defaults = {"priority": "999", "startsecs": "1", "startretries": "3", "exitcodes": "0",
                "process_name": "%(program_name)s"}
    for key, why in simple.items():
        if key in values and values[key].strip() != defaults.get(key):
            notes.append(f"NOT CARRIED OVER: {key} = {values[key].strip()}: {why}")
    logs = sorted(k for k in values if k in _LOG_KEYS)
    if logs:
        notes.append(f"NOT CARRIED OVER: {', '.join(logs)}: logs go to STATE_DIR/logs/{name}.log")
    known = {"command", "numprocs", "autostart", "autorestart", "stopsignal", "stopwaitsecs", "directory",
             "user", "environment", "stopasgroup", "killasgroup", "numprocs_start", *simple, *_LOG_KEYS}
    for key in values:
        if key not in known:
            notes.append(f"NOT CARRIED OVER: {key} = {values[key].strip()}: unknown to supervise")

    for note in notes:
        table.add(_comment(note))
    for key, value, comment in items:
        table.add(key, value)
        if comment:
            table[key].comment(escape(comment))
    return name, table

