"""supervise: a declarative, file-driven service supervisor.

``services.toml`` is the desired state; :mod:`supervisor.reconciler` converges the machine to
it. See ARCHITECTURE.md for the architecture and ``man 5 services.toml`` for the file format.
"""



def _installed_version() -> str:
    """The version of the installed ``supervise`` distribution (importlib.metadata: what pip
    installed, so each install beside another, e.g. a self-update, knows its own), or
    ``"0+unknown"`` when run from a folder that was never installed."""
    found = _metadata_version()
    if found is not None:
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("supervise")
    except PackageNotFoundError:
        return "0+unknown"


def _metadata_version() -> str | None:
    """The ``Version:`` field of the distribution importlib.metadata would find first (the first
    ``sys.path`` folder holding a ``supervise`` ``.dist-info`` or ``.egg-info``), read without
    importing importlib.metadata: it brings email, zipfile and csv, 1.4 MB of a supervisor's
    memory for one line of its start-up log. None when that finds nothing plain (a zip, an
    odd file): importlib.metadata then answers."""
    import os
    import re
    import sys

    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        found = []
        for name in names:
            base, dot, suffix = name.rpartition(".")
            if dot and suffix.lower() in ("dist-info", "egg-info") and \
                    re.sub(r"[-_.]+", "_", base.partition("-")[0]).lower() == "supervise":
                found.append((suffix.lower() != "dist-info", name, suffix.lower()))
        for _, name, suffix in sorted(found)[:1]:  # a .dist-info first, as importlib.metadata
            folder = os.path.join(entry or ".", name)
            meta = os.path.join(folder, "METADATA" if suffix == "dist-info" else "PKG-INFO")
            try:
                with open(meta if os.path.isdir(folder) else folder, encoding="utf-8") as f:
                    for line in f:
                        if not line.strip():
                            break  # the headers end at the first empty line
                        key, _, value = line.partition(":")
                        if key.strip().lower() == "version" and value.strip():
                            return value.strip()
            except (OSError, UnicodeDecodeError):
                pass
            return None
    return None


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
