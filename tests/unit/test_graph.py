"""graph: dependency order, levels and cycles through graphlib."""

from __future__ import annotations

from pathlib import Path

from supervisor.decide import graph
from supervisor.desired.model import Dependency, ServiceSpec, SourceSpec


def specs(**deps: str) -> dict[str, ServiceSpec]:
    """``name="dep1 dep2"`` per service, in the order given (the file order)."""
    return {name: ServiceSpec(name=name, command=("true",), source=SourceSpec(kind="path", path=Path("/")),
                              depends_on=tuple(Dependency(d) for d in line.split()))
            for name, line in deps.items()}


def test_levels_group_by_depth_in_file_order():
    assert graph.levels(specs(web="api", api="db", db="", cache="", worker="db cache")) == [
        ["db", "cache"], ["api", "worker"], ["web"]]


def test_order_puts_dependencies_first_and_keeps_file_order_otherwise():
    assert graph.order(specs(web="api", api="db", db="", cache="")) == ["db", "api", "web", "cache"]


def test_unknown_dependencies_are_ignored():
    assert graph.levels(specs(a="gone", b="a")) == [["a"], ["b"]]


def test_a_cycle_is_named_from_its_first_service_in_the_file():
    assert graph.find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert graph.find_cycle({"x": [], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
    assert graph.find_cycle({"a": ["b"], "b": []}) is None


def test_a_cycle_left_in_specs_is_broken_in_file_order_not_raised():
    assert graph.order(specs(a="b", b="a")) == ["b", "a"]
    assert graph.levels(specs(a="b", b="a")) == [["b"], ["a"]]
