"""logs.Prefab: FIFO pairs and log files made ahead of a burst of starts, in a thread, on the
real file system (issue 17: each new inode is ~0.4 ms of kernel time on the event loop)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conftest import wait_until
from supervisor.execute import logs


def spares(state_dir: Path) -> list[str]:
    folder = logs.run_dir(state_dir)
    return sorted(n for n in os.listdir(folder) if n.startswith(logs.Prefab.PREFIX)) if folder.exists() else []


def test_spares_and_log_files_are_made_ahead_and_renamed_into_place(tmp_path: Path) -> None:
    prefab = logs.Prefab(tmp_path)
    prefab.expect(3, ["api", "web"])
    wait_until(lambda: len(spares(tmp_path)) == 6, message="three spare FIFO pairs")
    wait_until(lambda: (logs.log_dir(tmp_path) / "web.log").exists(), message="the log files")
    assert (logs.log_dir(tmp_path) / "api.log").stat().st_size == 0
    for name in spares(tmp_path):
        st = os.lstat(logs.run_dir(tmp_path) / name)
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600

    path, out_read, out_child, err_read, err_child = logs.make_fifos(tmp_path, "api", 0, prefab)
    try:
        assert len(spares(tmp_path)) == 4  # one pair taken, none made
        assert stat.S_ISFIFO(os.lstat(path).st_mode) and stat.S_ISFIFO(os.lstat(logs.err_fifo(path)).st_mode)
        os.write(err_child, b"to stderr\n")
        assert os.read(err_read, 100) == b"to stderr\n"
    finally:
        for fd in (out_read, out_child, err_read, err_child):
            os.close(fd)

    prefab.close()
    assert spares(tmp_path) == []
    prefab.expect(2, ["late"])  # closed: makes nothing more
    assert spares(tmp_path) == [] and not (logs.log_dir(tmp_path) / "late.log").exists()


def test_without_spares_a_start_makes_its_own(tmp_path: Path) -> None:
    prefab = logs.Prefab(tmp_path)
    path, *fds = logs.make_fifos(tmp_path, "api", 1, prefab)
    for fd in fds:
        os.close(fd)
    assert path.name.startswith("api.1.") and stat.S_ISFIFO(os.lstat(path).st_mode)
    assert spares(tmp_path) == []


def test_stale_spares_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """Left by a supervisor killed meanwhile: only FIFOs of ours named .spare-* go."""
    run = logs.run_dir(tmp_path)
    run.mkdir(parents=True, mode=0o700)
    os.mkfifo(run / ".spare-abc.fifo", 0o600)
    os.mkfifo(run / ".spare-abc.err.fifo", 0o600)
    (run / ".spare-file.fifo").write_text("not a FIFO")
    os.mkfifo(run / "api.0.1234.fifo", 0o600)
    logs.Prefab(tmp_path).remove_stale()
    assert sorted(os.listdir(run)) == [".spare-file.fifo", "api.0.1234.fifo"]


def test_a_planted_symlink_log_is_never_written_through(tmp_path: Path) -> None:
    """The log file is created as LogSink makes it: O_NOFOLLOW, so a symlink planted as
    NAME.log is refused (the start then reports it as before) and its target untouched."""
    target = tmp_path / "elsewhere"
    folder = logs.log_dir(tmp_path)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "api.log").symlink_to(target)
    prefab = logs.Prefab(tmp_path)
    prefab.expect(1, ["api"])
    wait_until(lambda: prefab._thread is None, message="the prefab thread to end")
    assert not target.exists()
    prefab.close()
