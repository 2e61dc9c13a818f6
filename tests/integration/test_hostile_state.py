"""Issue 10, Critical: root never follows a path that someone else controls in STATE_DIR.

These run as root with a second uid (``nobody``), the situation of the attack: a supervisor
running as root beside a ``user =`` service. Each test plants the hostile thing itself and
checks that root neither wrote through it, nor used it, nor unlinked or signalled anything
it names.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import write
from harness import Stack
from supervisor.execute import logs
from supervisor.observe import safefs, state
from supervisor.daemon import StateLock
from supervisor.desired.model import LogPolicy

PY = sys.executable
SLEEP = f'["{PY}", "-c", "import time; time.sleep(300)"]'
USER_SLEEP = '["/bin/sleep", "300"]'  # our Python may live where nobody cannot read it

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root and a second uid (nobody)")


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def run_cli(path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True,
                          text=True, timeout=timeout)


def victim_file(folder: Path) -> Path:
    """A root-owned file outside STATE_DIR that an attacker wants root to write to."""
    victim = folder / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    return victim


# -- the folder itself -------------------------------------------------------------------------

def _other_users_folder(state: Path) -> None:
    state.mkdir()
    os.chown(state, nobody().pw_uid, nobody().pw_gid)
    os.chmod(state, 0o700)


def _world_writable(state: Path) -> None:
    state.mkdir()
    os.chmod(state, 0o777)


def _group_writable(state: Path) -> None:
    state.mkdir()
    os.chown(state, 0, nobody().pw_gid)
    os.chmod(state, 0o770)


def _symlink_to_theirs(state: Path) -> None:
    """(A symlinked state_dir is resolved once, when the file is read; the real folder counts.)"""
    elsewhere = state.parent / "elsewhere"
    _other_users_folder(elsewhere)
    state.symlink_to(elsewhere)


def _a_plain_file(state: Path) -> None:
    state.write_text("not a folder")


@pytest.mark.parametrize("plant, expected", [
    (_other_users_folder, "belongs to nobody"),
    (_world_writable, "writable by group and others"),
    (_group_writable, "writable by group"),
    (_symlink_to_theirs, "belongs to nobody"),
    (_a_plain_file, "not a directory"),
])
def test_a_state_dir_we_do_not_own_alone_is_refused(tmp_path, plant, expected):
    path = write(tmp_path / "services.toml", f'[services.a]\ncommand = {SLEEP}\n')
    state_dir = tmp_path / ".supervise"
    plant(state_dir)
    before = {p: p.lstat().st_mode for p in tmp_path.rglob("*")}
    result = run_cli(path)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # nothing was created in it, nothing was chmod'ed
    assert {p: p.lstat().st_mode for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize("make_writable", [
    pytest.param(lambda folder: os.chown(folder, nobody().pw_uid, -1), id="owned-by-the-user"),
    pytest.param(lambda folder: os.chmod(folder, 0o777), id="world-writable-not-sticky"),
    pytest.param(lambda folder: (os.chown(folder, 0, nobody().pw_gid), os.chmod(folder, 0o775)),
                 id="group-writable-by-its-group"),
])
@pytest.mark.parametrize("depth", [0, 2])
def test_a_state_dir_inside_a_tree_a_user_service_can_write_is_refused(tmp_path, make_writable, depth):
    """A STATE_DIR in a folder (or below one) that the ``user =`` service can write lets it
    swap the state dir for its own. (The config file itself stays in a folder only root can
    write: one the user could write is refused before, see test_untrusted_config.py.)"""
    top = tmp_path / "site"
    folder = top
    for i in range(depth):
        folder = folder / f"level{i}"
    folder.mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    make_writable(top)
    path = write(tmp_path / "services.toml", f'[supervise]\nstate_dir = "{folder}/.supervise"\n'
                 f'[services.a]\ncommand = {USER_SLEEP}\nuser = "nobody"\n')
    result = run_cli(path)
    assert result.returncode == 1, result.stderr
    assert "which user 'nobody' can write" in result.stderr and "state_dir" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_sticky_world_writable_folder_above_is_fine(tmp_path, until):
    """Like /tmp: others may create entries there but never rename or remove ours."""
    os.chmod(tmp_path, 0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    path = write(tmp_path / "services.toml",
                 f'[supervise]\nstate_dir = "{shared}/state"\n[services.a]\ncommand = {USER_SLEEP}\nuser = "nobody"\n')
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        def running_as_nobody():
            result = run_cli(path, "status", "--json")
            rows = json.loads(result.stdout)["services"] if result.stdout.startswith("{") else []
            return rows and rows[0]["phase"] == "running" and psutil.Process(rows[0]["pid"]).uids().real == nobody().pw_uid

        until(running_as_nobody, timeout=20, message="a running as nobody")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_user_service_added_by_a_reload_into_an_unsafe_tree_does_not_start(tmp_path):
    """Found at reload: that service fails to start with the reason; the others keep running."""
    os.chmod(tmp_path, 0o755)
    site = tmp_path / "site"
    site.mkdir()
    os.chown(site, nobody().pw_uid, -1)

    async def main():
        async with Stack(site) as stack:
            await stack.apply(f'[services.a]\ncommand = {SLEEP}\n')
            await stack.until(lambda: stack.pid("a"))
            pid = stack.pid("a")
            await stack.apply(f'[services.a]\ncommand = {SLEEP}\n[services.b]\ncommand = {USER_SLEEP}\nuser = "nobody"\n')
            await stack.until(lambda: stack.of_type("start-failed", "b"))
            assert "which user 'nobody' can write" in stack.of_type("start-failed", "b")[0].data["error"]
            assert stack.pid("a") == pid

    asyncio.run(main())


# -- files planted inside it ---------------------------------------------------------------------

def test_a_planted_log_symlink_or_hard_link_is_never_written_or_truncated(tmp_path):
    state_dir = safefs.ensure_dir(tmp_path / "state")
    folder = safefs.ensure_dir(logs.log_dir(state_dir))
    victim = victim_file(tmp_path)
    for kind in ("symlink", "hardlink"):
        for backups in (0, 2):
            target = folder / "api.log"
            if kind == "symlink":
                target.symlink_to(victim)
            else:
                os.link(victim, target)
            sink = logs.LogSink("api", target, LogPolicy(max_bytes=64, backups=backups))
            for _ in range(20):  # past max_size: rotation (or truncation with backups = 0)
                sink.write(b"attacker-controlled output line\n")
            sink.note("a note")
            sink.close()
            assert victim.read_text() == "precious\n", (kind, backups)
            assert "log not writable" in sink.trouble and sink.dropped_lines >= 20
            target.unlink()


def test_planted_state_record_names_are_replaced_not_followed(tmp_path):
    state_dir = safefs.ensure_dir(tmp_path / "state")
    folder = safefs.ensure_dir(state.state_dir_of(state_dir))
    victim = victim_file(tmp_path)
    (folder / "api.json").symlink_to(victim)
    for guess in ("api.json.tmp", ".api.json.tmp"):  # the old fixed temporary names
        (folder / guess).symlink_to(victim)
    state.save(state_dir, "api", {"replicas": {}})
    assert victim.read_text() == "precious\n"
    assert stat.S_ISREG((folder / "api.json").lstat().st_mode)
    assert stat.S_IMODE((folder / "api.json").lstat().st_mode) == 0o600
    # a symlinked record is not read either
    (folder / "db.json").symlink_to(tmp_path / "victim")
    assert set(state.load_all(state_dir)) == {"api"}
    state.remove(state_dir, "api.json.tmp")  # remove() unlinks the entry, never its target
    assert victim.exists()


def test_a_planted_lock_symlink_is_refused(tmp_path):
    state_dir = safefs.ensure_dir(tmp_path / "state")
    victim = victim_file(tmp_path)
    (state_dir / "supervise.lock").symlink_to(victim)
    lock = StateLock(state_dir)
    with pytest.raises(safefs.UnsafeStateDir, match="refusing"):
        lock.acquire()
    lock.release()
    assert victim.read_text() == "precious\n"


def test_forged_records_never_make_root_unlink_adopt_or_kill(tmp_path):
    """A record naming a foreign process (right pid and start time, no instance mark of ours),
    a FIFO outside STATE_DIR/run (absolute, ``..``, symlinked), or garbage: nothing is unlinked,
    nothing adopted, nothing signalled, and the supervisor carries on."""
    victim = victim_file(tmp_path)
    (tmp_path / "outside.fifo").write_text("x")
    bystander = subprocess.Popen([PY, "-c", "import time; time.sleep(300)"])
    try:
        created = psutil.Process(bystander.pid).create_time()

        async def main():
            async with Stack(tmp_path) as stack:
                await stack.apply("[services]\n")
                sd = stack.r.state_dir
                run = safefs.ensure_dir(logs.run_dir(sd))
                (run / "link.fifo").symlink_to(victim)
                fifos = [str(victim), str(run / ".." / ".." / "outside.fifo"), str(run / "link.fifo"),
                         str(tmp_path / "outside.fifo")]
                for i, fifo in enumerate(fifos):
                    state.save(sd, f"evil{i}", {"service": f"evil{i}", "replicas": {"0": {
                        "pid": bystander.pid, "create_time": created, "pgid": bystander.pid, "fifo": fifo,
                        "version": "x-y", "workdir": "/", "instance": "guessed", "cgroup": "/sys/fs/cgroup"}}})
                state.save(sd, "garbage", {"service": "garbage", "replicas": {"0": "nonsense", "x": {"pid": "1"}}})
                state.save(sd, "pid1", {"service": "pid1", "replicas": {"0": {
                    "pid": 1, "create_time": psutil.Process(1).create_time(), "fifo": None,
                    "version": "x-y", "workdir": "/"}}})
                adopted = await stack.r.adopt(stack.r.desired)
                assert adopted == 0
                assert not stack.r.controllers

        asyncio.run(main())
        assert bystander.poll() is None, "a foreign process was signalled"
        assert victim.read_text() == "precious\n" and (tmp_path / "outside.fifo").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_state_folders_are_0700_and_records_0600(tmp_path, until):
    """Low: state/ was created 0755 and build records 0644."""
    app = tmp_path / "app"
    app.mkdir()
    path = write(tmp_path / "services.toml", f"""
[services.a]
source = "./app"
build = ["{PY}", "-c", "import time; time.sleep(0.5)"]
command = {SLEEP}
""")
    old = os.umask(0o022)
    try:
        proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stderr=subprocess.DEVNULL)
        try:
            builds = tmp_path / ".supervise" / "state" / "builds"
            record = until(lambda: next(iter(builds.glob("*.json")), None) if builds.is_dir() else None,
                           message="a build record")
            assert stat.S_IMODE(record.lstat().st_mode) == 0o600
            until(lambda: run_cli(path, "status").returncode == 0, timeout=20)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        os.umask(old)
    sd = tmp_path / ".supervise"
    for folder in [sd, *[p for p in sd.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        assert stat.S_IMODE(folder.lstat().st_mode) == 0o700, folder
        assert folder.lstat().st_uid == os.geteuid()
    for record in (sd / "state").rglob("*.json"):
        assert stat.S_IMODE(record.lstat().st_mode) == 0o600, record
