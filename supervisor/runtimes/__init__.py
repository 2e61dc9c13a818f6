"""Runtimes: where services run. ``local`` (processes on this machine) is the one built; the
``Runtime`` interface in :mod:`.base` is what a ``kubernetes`` runtime would implement."""
