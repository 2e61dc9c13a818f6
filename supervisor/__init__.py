"""supervise: a declarative, file-driven service supervisor.

``services.toml`` is the desired state; :mod:`supervisor.reconciler` converges the machine to
it. See ARCHITECTURE.md for the architecture and ``man 5 services.toml`` for the file format.
"""



def _installed_version() -> str:
    """The version of the installed ``supervise`` distribution (importlib.metadata: what pip
    installed, so each install beside another, e.g. a self-update, knows its own), or
    ``"0+unknown"`` when run from a folder that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("supervise")
    except PackageNotFoundError:
        return "0+unknown"




def __getattr__(name: str):
    """The library API, imported on first use so the CLI starts fast:
    ``from supervisor import LocalRuntime, Service, Runtime, Notifier, Event``; and
    ``__version__`` (the installed distribution's, :func:`_installed_version`)."""
    if name == "__version__":  # on first use: importlib.metadata costs a client verb ~50 ms
        version = globals()["__version__"] = _installed_version()
        return version
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
