"""``supervise init``: a commented starter services.toml, or one made from the Procfile beside
it (through :func:`importers.import_file`, as ``supervise import`` makes it). Never overwrites:
the file is created with ``O_EXCL``. What it writes passes ``supervise check``."""

from __future__ import annotations

import os
from pathlib import Path

#: The starter file when there is no Procfile: one service that runs as it is, and every
#: other key commented, with its default (services.toml(5) has the full reference).
STARTER = '''\
# services.toml: what `supervise` runs. Save this file and a running supervise applies it
# (only what changed is touched). Check it with `supervise check`; see what a run would do with
# `supervise plan`; start with `supervise` (Ctrl-C stops everything). Reference: services.toml(5).

[supervise]
# state_dir = ".supervise"   # logs, git checkouts and builds (relative to this file)
# poll = "60s"               # how often git sources are fetched

# [env]                      # environment given to every service
# LOG_LEVEL = "info"

[services.web]
# source = "./web"           # a folder (or { git = "https://...", ref = "main" }); default: here
# build = "pip install -r requirements.txt"   # run in the source before each new version starts
command = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "${PORT}"]
env = { PORT = "8000" }
# env_file = ".env"          # dotenv syntax
# replicas = 1               # each replica gets REPLICA=0..n-1
# restart = "always"         # or "on-failure", "never"
# depends_on = ["db"]        # or { db = "ready" }: start after db answers its ready check
ready = { tcp = "127.0.0.1:${PORT}", interval = "1s" }
# stop_signal = "SIGTERM"
# stop_timeout = "10s"       # then SIGKILL to the whole process group
'''


class InitError(Exception):
    """The file exists, or cannot be written, or the Procfile cannot be converted."""


def starter_text(folder: Path) -> tuple[str, str]:
    """(text, where it came from): from ``folder/Procfile`` if there is one, else :data:`STARTER`."""
    procfile = folder / "Procfile"
    if not procfile.is_file():
        return STARTER, "a starter example"
    from .importers import ImportFailed, import_file

    try:
        text = import_file(procfile, format="procfile")
    except ImportFailed as exc:
        raise InitError(str(exc)) from None
    header = ("# services.toml made by `supervise init` from the Procfile beside it. Check it with\n"
              "# `supervise check`, start with `supervise`. Reference: services.toml(5).\n\n")
    return header + text, str(procfile)


def init(path: Path) -> str:
    """Write the starter file at ``path`` (refusing to replace anything); return where its
    contents came from. Raises InitError."""
    from . import config

    text, origin = starter_text(path.parent if str(path.parent) else Path("."))
    try:
        config.parse(text, path)  # what we write must pass `supervise check`
    except config.ConfigError as exc:
        raise InitError(f"the file made from {origin} does not validate:\n{exc}") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise InitError(f"{path} already exists; not overwriting it (edit it, or remove it first)") from None
    except OSError as exc:
        raise InitError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return origin
