"""A reload keeps the spec objects of the services it did not change (supervisor.daemon.same_specs),
so that every later comparison of them on the loop ends at identity (issue 17: reload at 2,000)."""

from __future__ import annotations

from supervisor.daemon import same_specs
from supervisor.desired import config

BASE = '[services.a]\ncommand = ["sleep", "1"]\n\n[services.b]\ncommand = ["sleep", "2"]\n'


def test_unchanged_specs_are_the_old_objects_and_changed_ones_the_new(tmp_path):
    old = config.parse(BASE, tmp_path / "services.toml")
    new = config.parse(BASE.replace('"2"', '"3"') + '[services.c]\ncommand = ["true"]\n', tmp_path / "services.toml")
    kept = same_specs(new, old)
    assert kept == new and list(kept.services) == ["a", "b", "c"]
    assert kept.services["a"] is old.services["a"]
    assert kept.services["b"] is new.services["b"] and kept.services["b"] != old.services["b"]
    assert kept.services["c"] is new.services["c"]
    assert kept.settings is new.settings and kept.path == new.path


def test_nothing_in_common_gives_the_new_state_itself(tmp_path):
    old = config.parse('[services.x]\ncommand = ["true"]\n', tmp_path / "services.toml")
    new = config.parse(BASE, tmp_path / "services.toml")
    assert same_specs(new, old) is new
