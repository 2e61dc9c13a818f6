"""A replica's environment and ``${VAR}`` substitution in commands.

Precedence, lowest first: the supervisor's own environment < ``[env]`` < ``env_file`` < the
service's ``env`` < ``REPLICA`` (and ``SUPERVISE_SERVICE``). A service with ``user =`` gets that
user's ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` in place of the supervisor's own. ``${VAR}``, ``${VAR:-default}``,
``${VAR-default}`` and ``$$`` (a literal ``$``) follow docker compose's interpolation rules; an
unset variable becomes the empty string.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)-([^}]*))?\})")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}``/``${VAR:-default}``/``$$`` in ``text`` from ``env``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, colon, default = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        # "${VAR:-d}": d when VAR is unset or empty; "${VAR-d}": d only when VAR is unset
        if default is not None and (value is None or (colon and not value)):
            return default
        return value or ""

    return _VAR.sub(substitute, text)


def user_environment(user: str | None) -> dict[str, str]:
    """``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` of ``user`` from its passwd entry, as
    systemd sets them for ``User=`` (empty for None or an unknown user: the spawn reports it)."""
    if not user:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except (KeyError, ValueError, OverflowError):
        return {}
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name,
            "SHELL": entry.pw_shell or "/bin/sh"}


#: (os.environ's raw data when last copied, that copy decoded): see :func:`own_environment`
_own: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def own_environment() -> dict[str, str]:
    """A fresh copy of the supervisor's own environment (``dict(os.environ)``).

    ``dict(os.environ)`` decodes every variable at each call (35 calls through
    ``os.environ.__getitem__`` per replica, a tenth of a cold start's loop time); the decoded
    copy is kept and reused while ``os.environ``'s raw data compares equal to the data it was
    made from (one dict comparison in C), so a change to ``os.environ`` is still seen at once."""
    global _own
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):  # not CPython's os._Environ: no shortcut
        return dict(os.environ)
    if _own is None or _own[0] != data:
        _own = (dict(data), dict(os.environ))
    return dict(_own[1])


def replica_env(service: str, environment: Mapping[str, str], replica: int,
                base: Mapping[str, str] | None = None, user: str | None = None) -> dict[str, str]:
    """The full environment of replica ``replica`` (values in ``environment`` expanded).

    With ``user``, that user's identity (:func:`user_environment`) replaces the supervisor's
    own ``HOME``/``USER``/``LOGNAME``/``SHELL``; the file's env can still set them."""
    env = own_environment() if base is None else dict(base)
    env.update(user_environment(user))
    env["REPLICA"] = str(replica)
    env["SUPERVISE_SERVICE"] = service
    for key, value in environment.items():
        env[key] = expand(value, env)
    env["REPLICA"] = str(replica)
    env["SUPERVISE_SERVICE"] = service
    return env


def command_argv(command: tuple[str, ...], shell: bool, env: Mapping[str, str]) -> list[str]:
    """The argv to exec: ``${VAR}`` expanded per argument, or ``/bin/sh -c SCRIPT`` when
    ``shell`` (then the shell does its own expansion and ours is not applied)."""
    if shell:
        return ["/bin/sh", "-c", command[0]]
    return [expand(arg, env) for arg in command]
