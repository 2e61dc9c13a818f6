"""Service name patterns for ``start``/``stop``/``restart``: shell globs (``web-*``,
``worker[12]``, ``?pi``) matched with :func:`fnmatch.fnmatchcase` against the running
supervisor's service names, as systemctl matches unit name globs against loaded units."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

_GLOB = set("*?[")


def is_pattern(word: str) -> bool:
    """True when ``word`` has a glob character (``*``, ``?`` or ``[``)."""
    return bool(_GLOB & set(word))


class NoMatch(Exception):
    """A pattern matched no service; the message names it and the services there are."""


def expand(words: Sequence[str], names: Iterable[str]) -> list[str]:
    """The services ``words`` name, in ``names`` order, each once. A plain word is kept as it is
    (the supervisor reports an unknown one); a pattern that matches nothing raises NoMatch."""
    names = list(dict.fromkeys(names))
    chosen: set[str] = set()
    plain: list[str] = []
    for word in words:
        if not is_pattern(word):
            if word not in chosen:
                plain.append(word)
            chosen.add(word)
            continue
        matched = [n for n in names if fnmatch.fnmatchcase(n, word)]
        if not matched:
            known = ", ".join(names) or "none"
            raise NoMatch(f"no service matches {word!r} (services: {known})")
        chosen.update(matched)
    ordered = [n for n in names if n in chosen]
    return ordered + [w for w in plain if w not in names]
