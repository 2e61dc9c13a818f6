"""Security rule "names checked before they become paths; nothing written outside STATE_DIR"
(safefs), for the folders the sources make in STATE_DIR: pip venvs, git worktrees, the pruning
of versions. Each test plants what a hostile user could (a symlink as a folder of ours or as an
entry in it, a name with ``..`` or ``/``) and checks that nothing outside STATE_DIR is written,
truncated or removed. Real folders, a real git repository; no pip index is needed (the venv's
folder is made before pip runs).

(Container log cursors: tests/integration/test_containers.py; logs, records, the lock:
tests/integration/test_hostile_state.py.)
"""

from __future__ import annotations

import os

import git
import pytest

from supervisor.desired.model import SourceSpec
from supervisor.execute.sources import prune_versions
from supervisor.execute.sources.git import GitSource
from supervisor.execute.sources.path import FolderSource
from supervisor.execute.sources.pip import COMPLETE, PipSource, SourceError
from supervisor.observe.safefs import UnsafeStateDir


@pytest.fixture
def dirs(tmp_path):
    """(STATE_DIR, a folder outside it holding a victim file and a victim folder)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "victim").write_text("theirs")
    (outside / "folder" / "keep").write_text("theirs")
    return state, outside


def untouched(outside) -> bool:
    return (sorted(p.name for p in outside.iterdir()) == ["folder", "victim"]
            and (outside / "victim").read_text() == "theirs"
            and [p.name for p in (outside / "folder").iterdir()] == ["keep"])


def pip_source(state) -> PipSource:
    return PipSource(SourceSpec(kind="pip", requirement="sv-hello>=1"), state / "sources" / "hello")


@pytest.mark.parametrize("planted", ["sources", "sources/hello", "sources/hello/versions"])
def test_a_pip_venv_is_never_made_through_a_planted_folder_symlink(dirs, planted):
    state, outside = dirs
    link = state / planted
    link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    link.symlink_to(outside / "folder")
    with pytest.raises(UnsafeStateDir, match="symlink"):
        pip_source(state).install_steps("1.0")
    assert untouched(outside)


@pytest.mark.parametrize("planted", ["symlink to a folder", "symlink to a file", "a file"])
def test_a_planted_venv_entry_is_replaced_by_our_own_empty_folder(dirs, planted):
    state, outside = dirs
    source = pip_source(state)
    source.install_steps("1.0")
    venv = source.venv("1.0")
    os.rmdir(venv)
    if planted == "symlink to a folder":
        venv.symlink_to(outside / "folder")
        (outside / "folder" / COMPLETE).write_text("")  # looks complete through the link
    elif planted == "symlink to a file":
        venv.symlink_to(outside / "victim")
    else:
        venv.write_text("x")
    assert not source.installed("1.0")
    steps = source.install_steps("1.0")
    assert steps[0][-1] == str(venv)
    assert venv.is_dir() and not venv.is_symlink() and list(venv.iterdir()) == []
    assert (venv.stat().st_mode & 0o777) == 0o700
    source.mark_installed("1.0")
    assert source.installed("1.0")
    (outside / "folder" / COMPLETE).unlink(missing_ok=True)
    assert untouched(outside)


def test_the_complete_marker_is_never_written_through_a_planted_symlink(dirs):
    state, outside = dirs
    source = pip_source(state)
    source.install_steps("1.0")
    marker = source.venv("1.0") / COMPLETE
    marker.symlink_to(outside / "victim")
    assert not source.installed("1.0")  # a symlink is not our marker
    source.mark_installed("1.0")
    assert not marker.is_symlink() and source.installed("1.0")
    assert untouched(outside)


@pytest.mark.parametrize("version", ["../../../outside", "1.0/../../x", "/etc", "..", ".hidden", ""])
def test_a_version_that_is_not_a_plain_name_never_becomes_a_path(dirs, version):
    state, outside = dirs
    with pytest.raises(SourceError, match="bad version"):
        pip_source(state).install_steps(version)
    assert untouched(outside) and not (state / "sources").exists()


def test_pruning_never_removes_through_a_planted_symlink(dirs):
    state, outside = dirs
    for name in ("a", "b", "c"):
        (outside / "folder" / name).mkdir()
    versions = state / "versions"
    versions.symlink_to(outside / "folder")
    assert prune_versions(versions, 0, set()) == []  # not a folder of ours: nothing goes
    assert sorted(p.name for p in (outside / "folder").iterdir()) == ["a", "b", "c", "keep"]
    versions.unlink()
    versions.mkdir(mode=0o700)
    (versions / "old").mkdir()
    (versions / "link").symlink_to(outside / "folder")
    assert prune_versions(versions, 0, set()) == ["old"]  # the symlink entry is left alone
    assert (versions / "link").is_symlink()
    assert sorted(p.name for p in (outside / "folder").iterdir()) == ["a", "b", "c", "keep"]


def test_a_git_worktree_is_never_made_or_reused_through_a_planted_symlink(dirs, tmp_path):
    state, outside = dirs
    remote = git.Repo.init(tmp_path / "remote", initial_branch="main")
    try:
        with remote.config_writer() as cfg:
            cfg.set_value("user", "name", "test").set_value("user", "email", "test@example.invalid")
        (tmp_path / "remote" / "app.py").write_text("print('hi')\n")
        remote.index.add(["app.py"])
        remote.index.commit("first")
    finally:
        remote.close()
    source = GitSource(SourceSpec(kind="git", url=str(tmp_path / "remote"), ref="main"), state / "sources" / "app")
    commit = source.fetch()
    (state / "sources" / "app" / "versions").mkdir(mode=0o700)
    planted = source.versions / commit[:12]
    (outside / "folder" / ".git").write_text("gitdir: nowhere\n")  # looks like a worktree
    planted.symlink_to(outside / "folder")
    path = source.checkout(commit)
    assert path == planted and not path.is_symlink() and (path / "app.py").read_text() == "print('hi')\n"
    (outside / "folder" / ".git").unlink()
    assert untouched(outside)
    with pytest.raises(SourceError, match="bad commit"):
        source.checkout("../../outside")
    (source.versions).rename(state / "moved")
    source.versions.symlink_to(outside / "folder")
    with pytest.raises(UnsafeStateDir, match="symlink"):
        source.checkout(commit)
    assert untouched(outside)


def test_folder_snapshots_are_never_pruned_through_a_planted_symlink(dirs, tmp_path):
    state, outside = dirs
    (outside / "folder" / ".new-x").mkdir()  # looks like an interrupted snapshot's copy
    live = tmp_path / "live"
    live.mkdir()
    source = FolderSource(live, state / "sources" / "app", state)
    (state / "sources" / "app").mkdir(parents=True, mode=0o700)
    source.versions.symlink_to(outside / "folder")
    assert source.prune(0, set()) == []
    assert sorted(p.name for p in (outside / "folder").iterdir()) == [".new-x", "keep"]
    (outside / "folder" / ".new-x").rmdir()
    assert untouched(outside)


def test_a_planted_repository_symlink_is_never_fetched_into(dirs, tmp_path):
    state, outside = dirs
    theirs = git.Repo.init(outside / "folder" / "repo.git", bare=True)
    theirs.close()
    before = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    root = state / "sources" / "app"
    root.mkdir(parents=True, mode=0o700)
    (root / "repo.git").symlink_to(outside / "folder" / "repo.git")
    source = GitSource(SourceSpec(kind="git", url=str(tmp_path / "nowhere"), ref="main"), root)
    with pytest.raises(SourceError, match="symlink"):
        source.fetch()
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == before
