"""Field paths as server-side apply tracks them (pure), to find drift without a round trip.

Server-side apply records which field manager owns which fields in ``metadata.managedFields``
(format ``FieldsV1``: ``{"f:spec": {"f:replicas": {}}}``; list items keyed
``k:{"name":"api"}``; ``"."`` marks an item itself). A *path* here is a tuple of those
segments down to a leaf, e.g. ``("f:spec", "f:template", "f:spec", "f:containers",
'k:{"name":"api"}', "f:image")``. Lists are keyed by their merge keys as the apiserver does
(containers, env and volumes by ``name``; container ports by ``containerPort`` and
``protocol``; Service ports by ``port`` and ``protocol``); other lists are atomic leaves.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

Path = tuple[str, ...]


def _item_key(item: Any) -> str | None:
    """The ``k:{...}`` segment of a list item, or None for an atomic list."""
    if not isinstance(item, dict):
        return None
    if "containerPort" in item:
        keys = {"containerPort": item["containerPort"], "protocol": item.get("protocol", "TCP")}
    elif "port" in item and "targetPort" in item or "port" in item and "protocol" in item:
        keys = {"port": item["port"], "protocol": item.get("protocol", "TCP")}
    elif "name" in item:
        keys = {"name": item["name"]}
    else:
        return None
    return "k:" + json.dumps(keys, separators=(",", ":"))


def paths(manifest: Mapping[str, Any]) -> set[Path]:
    """The leaf paths a manifest sets, in FieldsV1 segments (``metadata.labels``,
    ``metadata.annotations`` and ``spec``; identity fields are not tracked by the apiserver)."""
    result: set[Path] = set()
    meta = manifest.get("metadata", {})
    for key in ("labels", "annotations"):
        for name in meta.get(key, {}) or {}:
            result.add(("f:metadata", f"f:{key}", f"f:{name}"))
    if "spec" in manifest:
        result |= set(_walk(manifest["spec"], ("f:spec",)))
    return result


def _walk(value: Any, prefix: Path) -> Iterator[Path]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _walk(item, prefix + (f"f:{key}",))
    elif isinstance(value, list) and value and all(_item_key(item) for item in value):
        for item in value:
            yield from _walk({k: v for k, v in item.items()}, prefix + (_item_key(item),))  # type: ignore[operator]
    else:
        yield prefix


def from_fields_v1(fields: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    """The leaf paths of a ``fieldsV1`` tree (``"."`` markers dropped)."""
    result: set[Path] = set()
    for key, sub in fields.items():
        if key == ".":
            continue
        if isinstance(sub, dict) and any(k != "." for k in sub):
            result |= from_fields_v1(sub, prefix + (key,))
        else:
            result.add(prefix + (key,))
    return result


def to_fields_v1(leaves: set[Path]) -> dict[str, Any]:
    """The ``fieldsV1`` tree of a set of leaf paths (inverse of :func:`from_fields_v1`)."""
    tree: dict[str, Any] = {}
    for path in sorted(leaves):
        node = tree
        for segment in path:
            node = node.setdefault(segment, {})
    return tree


def value_at(obj: Any, path: Path) -> Any:
    """The value at ``path`` in ``obj`` (a manifest or an object read back), or None."""
    node = obj
    for segment in path:
        if node is None:
            return None
        if segment.startswith("f:"):
            node = node.get(segment[2:]) if isinstance(node, dict) else None
        elif segment.startswith("k:"):
            wanted = json.loads(segment[2:])
            node = next((item for item in node or [] if isinstance(item, dict) and
                         all(item.get(k, "TCP" if k == "protocol" else None) == v for k, v in wanted.items())), None)
        else:
            return None
    return node


def overlaps(a: Path, b: Path) -> bool:
    """One path is the other or inside it (an atomic list or map owned as a whole)."""
    return a[: len(b)] == b or b[: len(a)] == a


def owners(obj: Mapping[str, Any]) -> dict[str, set[Path]]:
    """``{manager: leaf paths}`` from an object's ``metadata.managedFields`` (status
    subresource entries left out: they are the controllers' own)."""
    result: dict[str, set[Path]] = {}
    for entry in obj.get("metadata", {}).get("managedFields") or []:
        if entry.get("subresource") == "status":
            continue
        result.setdefault(entry.get("manager", "?"), set()).update(from_fields_v1(entry.get("fieldsV1") or {}))
    return result
