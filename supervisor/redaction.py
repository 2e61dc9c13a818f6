"""One redaction function for every border where text leaves the supervisor: events,
``read()``, status and plan replies on the control socket, our log messages, the notes in
service logs (issue 10, "credentials in a git URL").

Only the ``user:password@`` (or ``token@``) part of a URL is hidden, as git itself does when
it prints a remote (``transport_anonymize_url``); the rest of the URL stays readable.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")


def redact(text: str) -> str:
    """``text`` with ``user:password@`` removed from every URL in it (``scheme://***@host``)."""
    if "@" not in text:
        return text
    return _USERINFO.sub(r"\1***@", text)


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string in ``value`` (dicts, lists and tuples too)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (formatted with its args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install(logger: logging.Logger) -> None:
    """Redact everything ``logger`` emits (once per logger)."""
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())


install(logging.getLogger("supervise"))
