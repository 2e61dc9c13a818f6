"""Local folders as versions (issue 12, item 2) and the version listing (item 3), on real
folders in tmp_path: what a snapshot holds, how it is named and pruned, what the plan says for
a snapshot or an in-place folder, the ``mode`` key, and how records keep the good versions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.decide.plan import plan, same_revision
from supervisor.desired import config
from supervisor.desired.model import Observed, Phase, ReplicaObserved, ServiceObserved
from supervisor.execute.builds import Artifact, make_version
from supervisor.execute.sources.path import FolderSource, content_hash
from supervisor.execute.versions import VersionError, choose, listing
from supervisor.observe import state


def folder(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "app.py").write_text("print('a')\n")
    (app / "pkg" / "mod.py").write_text("X = 1\n")
    (app / ".git").mkdir()
    (app / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (app / "pkg" / "__pycache__").mkdir()
    (app / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"\0")
    (app / ".venv" / "bin").mkdir(parents=True)
    (app / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
    (app / "node_modules").mkdir()
    os.symlink("app.py", app / "link.py")
    os.mkfifo(app / "pipe")
    return app


def test_a_snapshot_copies_the_code_links_dependencies_and_is_named_by_its_content(tmp_path):
    app = folder(tmp_path)
    state_dir = tmp_path / "state"
    source = FolderSource(app, state_dir / "sources" / "site", state_dir)
    copy, revision = source.snapshot()
    assert copy.name == revision[:12] and revision == content_hash(app, [state_dir])
    assert (copy / "app.py").read_text() == "print('a')\n" and (copy / "pkg" / "mod.py").exists()
    assert not (copy / ".git").exists() and not (copy / "pkg" / "__pycache__").exists()
    assert not (copy / "pipe").exists()  # a FIFO is never opened, never copied
    assert os.readlink(copy / "link.py") == "app.py"  # symlinks copied as links
    assert (copy / ".venv").is_symlink() and os.readlink(copy / ".venv") == str(app.resolve() / ".venv")
    assert (copy / ".venv" / "bin" / "python").exists() and (copy / "node_modules").is_symlink()

    again, same = source.snapshot()  # unchanged: the same snapshot, reused
    assert (again, same) == (copy, revision)
    (app / "app.py").write_text("print('b')\n")
    newer, other = source.snapshot()
    assert newer != copy and (copy / "app.py").read_text() == "print('a')\n"  # the old one is immutable
    assert source.on_disk() == [newer.name, copy.name]
    assert not list((state_dir / "sources" / "site" / "versions").glob(".new-*"))


def test_snapshots_are_pruned_to_keep_versions_but_never_a_protected_one(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    source = FolderSource(app, tmp_path / "state" / "sources" / "site", tmp_path / "state")
    names = []
    for n in range(4):
        (app / "app.py").write_text(f"print({n})\n")
        copy, _ = source.snapshot()
        os.utime(copy, (n, n))  # oldest first, whatever the file system's mtime resolution
        names.append(copy.name)
    removed = source.prune(2, protect={names[0]})
    assert removed == [names[1]] and set(source.on_disk()) == {names[0], names[2], names[3]}


def test_the_state_dir_inside_the_folder_is_never_copied(tmp_path):
    (tmp_path / "app.py").write_text("x = 1\n")
    state_dir = tmp_path / "custom-state"
    state_dir.mkdir()
    (state_dir / "big.log").write_text("log\n")
    copy, _ = FolderSource(tmp_path, state_dir / "sources" / "s", state_dir).snapshot()
    assert (copy / "app.py").exists() and not (copy / "custom-state").exists()


def test_a_missing_folder_is_one_clear_error(tmp_path):
    from supervisor.execute.sources import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "gone", tmp_path / "s" / "x", tmp_path / "s").snapshot()
    with pytest.raises(SourceError, match="bad snapshot name"):
        FolderSource(tmp_path, tmp_path / "s" / "x", tmp_path / "s").folder("../../etc")


def _desired(tmp_path: Path, source: str, extra: str = ""):
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "releases" / "r2").mkdir(parents=True, exist_ok=True)
    return config.parse(f'[services.site]\nsource = {source}\ncommand = ["app"]\n{extra}',
                        tmp_path / "services.toml")


def _running(desired, version: str = "aaaaaaaaaaaa-bbbbbbbb") -> Observed:
    spec = desired.services["site"]
    return Observed({"site": ServiceObserved(
        name="site", spec=spec, version=version,
        replicas={0: ReplicaObserved(index=0, phase=Phase.RUNNING, pid=10, version=version)})})


def test_plan_snapshots_a_new_revision_and_a_new_folder_and_execution_can_agree(tmp_path):
    old = _desired(tmp_path, '"./app"', 'watch = ["*.py"]')
    assert plan(old, Observed({})).lines() == ["snapshot site: new service", "start site[0]: new service"]
    lines = plan(old, _running(old), {"site": "c" * 40}).lines()
    assert lines == ["snapshot site: new revision aaaaaaaa -> cccccccc",
                     "restart site[0]: new revision aaaaaaaa -> cccccccc"]
    moved = _desired(tmp_path, '"./releases/r2"')  # the path edited (or a symlink moved, then reload)
    assert plan(moved, _running(old)).lines() == ["snapshot site: source changed", "restart site[0]: source changed"]


def test_plan_of_a_folder_in_place_restarts_without_a_snapshot(tmp_path):
    old = _desired(tmp_path, '{ path = "./app", mode = "in-place" }', 'watch = ["*.py"]')
    assert old.services["site"].source.in_place
    assert plan(old, _running(old), {"site": "c" * 40}).lines() == ["restart site[0]: new revision aaaaaaaa -> cccccccc"]
    no_source = config.parse('[services.site]\ncommand = ["app"]\n', tmp_path / "services.toml")
    assert no_source.services["site"].source.in_place  # the config's folder: in place


@pytest.mark.parametrize(("source", "message"), [
    ('{ path = "./app", mode = "copy" }', '"mode" must be "snapshot" or "in-place", got \'copy\''),
    ('{ git = "https://example.org/x.git", mode = "in-place" }', '"mode" applies to a local folder source only'),
    ('{ path = "./app", mode = 1 }', '"snapshot" or "in-place"'),
])
def test_mode_mistakes_are_located(tmp_path, source, message):
    with pytest.raises(config.ConfigError) as caught:
        _desired(tmp_path, source)
    assert message in str(caught.value) and "services.toml:2" in str(caught.value)


def test_good_after_is_a_duration(tmp_path):
    assert _desired(tmp_path, '"./app"', 'good_after = "1m30s"').services["site"].good_after == 90.0
    with pytest.raises(config.ConfigError, match="good_after"):
        _desired(tmp_path, '"./app"', 'good_after = "soon"')


def test_records_keep_the_good_versions_and_the_pin_and_old_records_still_read(tmp_path):
    record = state.ServiceRecord(service="site", good=(("aaaaaaaaaaaa-bbbbbbbb", "a" * 40, "/x/aaaaaaaaaaaa"),),
                                 pinned="aaaaaaaaaaaa-bbbbbbbb", pinned_over="c" * 40)
    state.save(tmp_path, "site", record)
    assert state.load_all(tmp_path)["site"] == record
    older = state.ServiceRecord.from_dict({"service": "site", "replicas": {}})
    assert older.good == () and older.pinned == "" and older.pinned_over == ""
    hostile = state.ServiceRecord.from_dict({"service": "site", "good": [["a", "b"], 3, ["v", "r", "w\0"]],
                                             "pinned": 7})
    assert hostile.good == () and hostile.pinned == ""


def test_listing_and_choice_of_versions_on_disk(tmp_path):
    desired = _desired(tmp_path, '"./app"')
    spec = desired.services["site"]
    state_dir = desired.settings.state_dir
    source = FolderSource(spec.source.path, state_dir / "sources" / "site", state_dir)
    (tmp_path / "app" / "app.py").write_text("a\n")
    folder_a, rev_a = source.snapshot()
    os.utime(folder_a, (1, 1))
    (tmp_path / "app" / "app.py").write_text("b\n")
    folder_b, rev_b = source.snapshot()
    a, b = (Artifact(f, make_version(r, spec), r) for f, r in ((folder_a, rev_a), (folder_b, rev_b)))
    rows = listing(state_dir, spec, {0: b.version}, [a], None, rev_b)
    assert [(r["version"], r["good"], r["running"], r["newest"], r["built"]) for r in rows] == [
        (b.version, False, [0], True, True), (a.version, True, [], False, True)]
    assert choose(state_dir, spec, None, b.version, [a]) == a  # the newest good one not running
    assert choose(state_dir, spec, b.version[:6], b.version, [a]).workdir == folder_b
    with pytest.raises(VersionError, match="no good version other than"):
        choose(state_dir, spec, None, a.version, [a])
    with pytest.raises(VersionError, match="no version 'zzz' on disk"):
        choose(state_dir, spec, "zzz", b.version, [a])
    assert same_revision(rev_a, a.revision)


def test_a_version_never_built_with_the_current_build_step_is_refused(tmp_path):
    desired = _desired(tmp_path, '"./app"', 'build = "make"')
    spec = desired.services["site"]
    state_dir = desired.settings.state_dir
    copy, revision = FolderSource(spec.source.path, state_dir / "sources" / "site", state_dir).snapshot()
    with pytest.raises(VersionError, match="never built with the current build step"):
        choose(state_dir, spec, revision[:12], None, [])
