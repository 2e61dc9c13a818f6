"""Dependency order, levels and cycles of services, with :mod:`graphlib` (no hand-made walks).

``depends_on`` edges point from a service to the services it waits for. Names outside the
graph are ignored (a dependency on a removed service is the config check's business).
"""

from __future__ import annotations

import graphlib
from typing import Iterable, Mapping

from ..desired.model import ServiceSpec


def _sorter(graph: Mapping[str, Iterable[str]]) -> graphlib.TopologicalSorter[str]:
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name, deps in graph.items():
        sorter.add(name, *(d for d in deps if d in graph))
    return sorter


def edges(specs: Mapping[str, ServiceSpec]) -> dict[str, list[str]]:
    """Each service's dependencies, in file order, cycles broken (see :func:`acyclic`)."""
    return acyclic({name: [d.service for d in spec.depends_on if d.service in specs]
                    for name, spec in specs.items()})


def acyclic(graph: dict[str, list[str]]) -> dict[str, list[str]]:
    """``graph`` with each cycle broken in file order: the edge that leads back to the
    cycle's first service in the file is dropped (config validation rejects cycles; this keeps
    ordering total rather than raising)."""
    graph = {name: list(deps) for name, deps in graph.items()}
    if not any(graph.values()):
        return graph  # no edge, no cycle: no sorter over the whole graph (a reload asks 4 times)
    position = {name: i for i, name in enumerate(graph)}
    while (cycle := find_cycle(graph)) is not None:
        first = min(cycle, key=position.__getitem__)
        for name in cycle:
            if first in graph[name] and name in cycle:
                graph[name].remove(first)
                break
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]`` (each waits for the next), or None."""
    try:
        _sorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle: list[str] = list(exc.args[1])
        # graphlib gives it dependencies-first; name it as "a waits for b waits for ... a",
        # starting from the service that comes first in the file
        cycle = list(reversed(cycle))[:-1]
        position = {name: i for i, name in enumerate(graph)}
        start = min(range(len(cycle)), key=lambda i: position.get(cycle[i], len(position)))
        cycle = cycle[start:] + cycle[:start]
        return cycle + [cycle[0]]
    return None


def levels(specs: Mapping[str, ServiceSpec]) -> list[list[str]]:
    """Services grouped by depth: level 0 depends on nothing, level n on levels < n; each
    level in file order. Raises :class:`graphlib.CycleError` on a cycle (the config check
    rejects those first)."""
    graph = edges(specs)
    if not any(graph.values()):
        return [list(specs)] if specs else []  # nothing waits for anything: one level
    position = {name: i for i, name in enumerate(specs)}
    depth: dict[str, int] = {}
    sorter = _sorter(graph)
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        for name in ready:
            deps = [depth[d] for d in graph[name] if d in depth]
            depth[name] = 1 + max(deps) if deps else 0
        sorter.done(*ready)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in specs:
        out[depth[name]].append(name)
    return out


def order(specs: Mapping[str, ServiceSpec]) -> list[str]:
    """Names with every dependency before its dependents, otherwise in file order: each
    service in file order, preceded by those of its dependencies not placed yet."""
    graph = edges(specs)
    position = {name: i for i, name in enumerate(specs)}
    placed: dict[str, None] = {}
    for name in specs:
        if name in placed:
            continue
        if all(dep in placed or dep not in graph for dep in graph[name]):
            placed[name] = None  # nothing of it left to place first: no sorter (one per service was most of a plan)
            continue
        wanted, todo = {name}, [name]  # name and its dependencies not placed yet
        while todo:
            for dep in graph[todo.pop()]:
                if dep in graph and dep not in placed and dep not in wanted:
                    wanted.add(dep)
                    todo.append(dep)
        sorter = _sorter({n: graph[n] for n in wanted})
        sorter.prepare()
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=position.__getitem__)
            placed.update(dict.fromkeys(ready))
            sorter.done(*ready)
    return list(placed)
