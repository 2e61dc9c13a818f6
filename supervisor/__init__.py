"""supervise: a declarative, file-driven service supervisor.

``services.toml`` is the desired state; :mod:`supervisor.reconciler` converges the machine to
it. See ARCHITECTURE.md for the architecture and ``man 5 services.toml`` for the file format.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """The library API, imported on first use so the CLI starts fast:
    ``from supervisor import LocalRuntime, Service, Runtime, Notifier, Event``."""
    if name in ("Runtime", "Service", "Notifier", "RuntimeError_"):
        from .runtimes import base

        return getattr(base, name)
    if name == "LocalRuntime":
        from .runtimes.local import LocalRuntime

        return LocalRuntime
    if name in ("Event", "EventType"):
        from .observe import events

        return getattr(events, name)
    raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
