"""A service user must never reach root through the file that says what root runs.

A fresh user's report: with the config in a folder that ``nobody`` owns and one service running
``user = "nobody"`` there, that service rewrote ``services.toml`` (write a copy, rename it over
the file) with a service of its own, which the supervisor started as root. The rule now (as
OpenSSH's ``StrictModes`` and sudo's check of ``sudoers``): a supervisor running as root refuses
a config file or ``env_file`` that a user other than root could change, at start (one line, exit
1) and at every reload (the last good config stays, the services keep running).

These run as root with a second uid (``nobody``): the situation of the attack.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import terminate, write
from test_hostile_state import PY, USER_SLEEP, nobody, pytestmark, run_cli  # noqa: F401 - the same root-and-nobody setup


def _folder_owned_by_the_user(folder: Path, config: Path) -> None:
    os.chown(folder, nobody().pw_uid, nobody().pw_gid)


def _folder_world_writable(folder: Path, config: Path) -> None:
    os.chmod(folder, 0o777)


def _folder_group_writable(folder: Path, config: Path) -> None:
    os.chown(folder, 0, nobody().pw_gid)
    os.chmod(folder, 0o775)


def _file_owned_by_the_user(folder: Path, config: Path) -> None:
    os.chown(config, nobody().pw_uid, nobody().pw_gid)


def _file_world_writable(folder: Path, config: Path) -> None:
    os.chmod(config, 0o666)


def _symlink_into_their_folder(folder: Path, config: Path) -> None:
    theirs = folder.parent / "theirs"
    theirs.mkdir()
    os.rename(config, theirs / "services.toml")
    os.chown(theirs, nobody().pw_uid, nobody().pw_gid)
    config.symlink_to(theirs / "services.toml")


@pytest.mark.parametrize("plant, expected", [
    (_folder_owned_by_the_user, "which belongs to nobody"),
    (_folder_world_writable, "which is writable by others"),
    (_folder_group_writable, "which is writable by group"),
    (_file_owned_by_the_user, "belongs to nobody"),
    (_file_world_writable, "is writable by others"),
    (_symlink_into_their_folder, "which belongs to nobody"),
])
def test_a_config_another_user_could_change_is_refused_at_start(tmp_path, plant, expected):
    os.chmod(tmp_path, 0o755)
    site = tmp_path / "site" / "app"
    site.mkdir(parents=True)
    path = write(site / "services.toml", f'[supervise]\nstate_dir = "{tmp_path}/state"\n'
                 f'[services.app]\ncommand = {USER_SLEEP}\nuser = "nobody"\n')
    plant(site, path)
    result = run_cli(path)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr and "run anything as root" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "state").exists(), "refused before anything was made"


def test_a_folder_above_that_the_user_owns_is_refused_too(tmp_path):
    os.chmod(tmp_path, 0o755)
    top = tmp_path / "site"
    site = top / "a" / "b"
    site.mkdir(parents=True)
    os.chown(top, nobody().pw_uid, nobody().pw_gid)  # it can rename a/ away and plant its own
    path = write(site / "services.toml", f'[supervise]\nstate_dir = "{tmp_path}/state"\n'
                 f'[services.app]\ncommand = {USER_SLEEP}\n')
    result = run_cli(path)
    assert result.returncode == 1 and f"inside {top}, which belongs to nobody" in result.stderr, result.stderr


def test_an_env_file_another_user_could_change_is_refused(tmp_path):
    """An env_file says what root's services get (LD_PRELOAD is enough)."""
    os.chmod(tmp_path, 0o755)
    env = write(tmp_path / "app.env", "GREETING=hello\n")
    os.chown(env, nobody().pw_uid, nobody().pw_gid)
    path = write(tmp_path / "services.toml", f'[services.app]\ncommand = {USER_SLEEP}\nenv_file = "{env}"\n')
    result = run_cli(path)
    assert result.returncode == 1 and f"env_file {env} belongs to nobody" in result.stderr, result.stderr


def test_a_root_config_in_a_sticky_shared_folder_is_fine(tmp_path, until):
    """Like /tmp: others may create entries there but never rename or replace root's."""
    os.chmod(tmp_path, 0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    path = write(shared / "services.toml", f'[services.app]\ncommand = {USER_SLEEP}\n')
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        until(lambda: '"phase": "running"' in run_cli(path, "status", "--json").stdout, timeout=20,
              message="app running from a config in a sticky folder")
    finally:
        terminate(proc)


def test_a_save_by_the_service_user_is_never_applied(tmp_path, until):
    """The attack itself, at reload: the file became the service user's (a careless chown), and
    that user adds a service. The save is refused with the reason, nothing new starts, the
    running service is left alone."""
    os.chmod(tmp_path, 0o755)
    marker = tmp_path / "pwned"
    path = write(tmp_path / "services.toml", f'[services.app]\ncommand = {USER_SLEEP}\nuser = "nobody"\n')
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        def app_pid():
            out = run_cli(path, "status", "--json").stdout
            rows = json.loads(out)["services"] if out.startswith("{") else []
            return rows[0]["pid"] if rows and rows[0]["phase"] == "running" else None

        until(app_pid, timeout=20, message="app running")
        pid = app_pid()
        os.chown(path, nobody().pw_uid, nobody().pw_gid)
        evil = f'[services.pwn]\ncommand = ["/bin/sh", "-c", "id > {marker}; exec sleep 300"]\n'
        # written by root here: pytest's /tmp/pytest-of-root is 0700, so nobody cannot reach the
        # file in this test; what the supervisor judges is who could (the owner), not who did
        with path.open("a") as f:
            f.write(evil)
        result = run_cli(path, "reload")
        assert result.returncode != 0 and "belongs to nobody" in result.stderr + result.stdout, result
        status = json.loads(run_cli(path, "status", "--json").stdout)["services"]
        assert [row["service"] for row in status] == ["app"] and status[0]["pid"] == pid
        assert not marker.exists()
    finally:
        terminate(proc)
    assert not marker.exists()
