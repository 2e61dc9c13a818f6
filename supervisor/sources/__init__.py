"""Where a service's code comes from: a local folder (``path``) or a git repository (``git``)."""

from __future__ import annotations


class SourceError(Exception):
    """A source cannot be read: unreachable remote, unknown ref, missing folder. The message
    is meant for the user and never contains credentials embedded in a URL."""
