"""The control plane: an owner-only Unix socket speaking JSON lines.

Protocol (documented in supervise(1)): the client sends one JSON object per line,
``{"verb": "status", "services": ["api"]}``; the server answers one JSON object per line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. ``events`` answers ``{"ok": true}``
and then streams one event object per line until the client hangs up.

:mod:`.server` and :mod:`.client` carry the lines; each verb is a file of :mod:`.verbs`, with
its client half (what ``supervise VERB`` sends and prints) and its server half (the handler).
"""

from pathlib import Path

SOCKET_NAME = "control.sock"
LOCK_NAME = "supervise.lock"


def socket_path(state_dir: Path) -> Path:
    """``STATE_DIR/control.sock``."""
    return state_dir / SOCKET_NAME


def lock_path(state_dir: Path) -> Path:
    """``STATE_DIR/supervise.lock`` (flock: one supervisor per state dir)."""
    return state_dir / LOCK_NAME
