"""One table of the errors users see: what each means, whether it is retried, and the exit
code and control-socket error code it gives.

Transient errors (a fetch that failed, an unreachable remote) are retried with backoff until
they succeed, as controller-runtime requeues a reconcile that returned an error; terminal
ones (an invalid file, a build that failed for this exact commit) wait for a change, as a
``reconcile.TerminalError`` does. The CLI's exit code for a control verb comes from the
``code`` the supervisor answered with, so one mistake gives one exit code whichever way it
came.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

#: Exit codes (sysexits-like, documented in supervise(1)).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNKNOWN = 0, 1, 2, 3, 4


class Code(str, enum.Enum):
    """The error codes of the control socket's ``{"ok": false, "error", "code"}`` replies."""

    CONFIG_INVALID = "config-invalid"
    UNKNOWN_SERVICE = "unknown-service"
    NOT_RUNNING = "not-running"
    ALREADY_RUNNING = "already-running"
    FETCH_FAILED = "fetch-failed"
    BUILD_FAILED = "build-failed"
    UPGRADE_FAILED = "upgrade-failed"
    FAILED = "failed"


class Rule(NamedTuple):
    """How an error is handled: the exit code it gives, and whether it is retried. (A
    NamedTuple, not a dataclass: the CLI's client verbs import this module, and dataclasses
    brings inspect and ast with it.)"""

    exit: int
    transient: bool
    meaning: str


TABLE: dict[Code, Rule] = {
    Code.CONFIG_INVALID: Rule(EXIT_USAGE, False, "the file is invalid; the last good one stays until a save fixes it"),
    Code.UNKNOWN_SERVICE: Rule(EXIT_UNKNOWN, False, "no service by that name in the running supervisor"),
    Code.NOT_RUNNING: Rule(EXIT_ERROR, False, "no supervisor answers on the state dir's control socket"),
    Code.ALREADY_RUNNING: Rule(EXIT_ERROR, False, "another supervisor holds the state dir"),
    Code.FETCH_FAILED: Rule(EXIT_ERROR, True, "a fetch or a remote check failed; retried with backoff"),
    Code.BUILD_FAILED: Rule(EXIT_ERROR, False, "the build failed for this revision; waits for a new one"),
    Code.UPGRADE_FAILED: Rule(EXIT_ERROR, False, "a new supervise failed to install, its checks or its start; "
                              "the running one stays and that revision is not tried again by itself"),
    Code.FAILED: Rule(EXIT_ERROR, False, "any other failure"),
}


def exit_code(code: Code | str | None) -> int:
    """The exit code for ``code`` (an unknown or missing one: :data:`EXIT_ERROR`)."""
    try:
        return TABLE[Code(code)].exit if code is not None else EXIT_ERROR
    except ValueError:
        return EXIT_ERROR


def transient(code: Code) -> bool:
    """True when an error of this kind is retried with backoff rather than waiting for a change."""
    return TABLE[code].transient


def of_stage(stage: str) -> Code:
    """The code of a failed prepare stage (``"fetch"`` or ``"build"``)."""
    return Code.FETCH_FAILED if stage == "fetch" else Code.BUILD_FAILED
