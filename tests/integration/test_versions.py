"""Versions that mean what they say (issue 12, items 2 and 3), as users drive them: a real
daemon, the real CLI, real folders edited, real processes.

Item 2: a local folder runs from an immutable snapshot per content hash, so (a) after an edit
status names the version that runs, (b) a rollback runs the previous files, (c) a new folder
path or a moved ``current`` symlink deploys the new files and ``plan`` agrees; ``mode =
"in-place"`` runs the folder itself and claims no rollback. Item 3: ``supervise versions`` and
``supervise rollback`` (pinned until the next change).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import terminate, wait_until, write

PY = sys.executable

APP = """import time
MARK = "{mark}"
print("running", MARK, flush=True)
time.sleep(300)
"""
BAD = """raise SystemExit("bad version {mark}")
"""


def cli(path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True, text=True,
                          timeout=timeout)


def rows(path: Path) -> list[dict]:
    result = cli(path, "status", "--json")
    return json.loads(result.stdout)["services"] if result.stdout.strip() else []


def row(path: Path, name: str = "site") -> dict:
    return next((r for r in rows(path) if r["service"] == name), {})


def versions(path: Path, name: str = "site") -> dict:
    result = cli(path, "versions", name, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def running_mark(path: Path, name: str = "site") -> tuple[str, Path] | None:
    """(MARK of the app.py in the running replica's working folder, that folder) or None."""
    current = row(path, name)
    if current.get("phase") not in ("running", "ready") or not current.get("pid"):
        return None
    try:
        cwd = Path(psutil.Process(current["pid"]).cwd())
        text = (cwd / "app.py").read_text()
    except (psutil.Error, OSError):
        return None
    mark = next((line.split('"')[1] for line in text.splitlines() if line.startswith("MARK")), None)
    return (mark, cwd) if mark else None


@pytest.fixture
def start(tmp_path):
    procs: list[subprocess.Popen] = []

    def run(path: Path) -> subprocess.Popen:
        out = open(tmp_path / "daemon.out", "a")
        proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
        out.close()
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        terminate(proc, timeout=30)


def site(extra: str = "", source: str = '"./app"') -> str:
    return f"""
[services.site]
source = {source}
command = ["{PY}", "app.py"]
backoff = {{ initial = "100ms", max = "200ms" }}
{extra}
"""


def test_a_watched_folder_edit_runs_and_names_the_new_snapshot(tmp_path, start):
    """Input (a): no build, watch = ["*.py"]: after an edit, status names the version whose
    files run, and those files are a snapshot under STATE_DIR, not the live folder."""
    write(tmp_path / "app" / "app.py", APP.format(mark="A"))
    path = write(tmp_path / "services.toml", site('watch = ["*.py"]'))
    start(path)
    mark, folder = wait_until(lambda: running_mark(path), timeout=30, message="A running")
    assert mark == "A"
    snapshots = tmp_path / ".supervise" / "sources" / "site" / "versions"
    assert folder.parent == snapshots and row(path)["version"].startswith(folder.name)
    version_a = row(path)["version"]

    write(tmp_path / "app" / "app.py", APP.format(mark="B"))
    mark, folder = wait_until(lambda: (m := running_mark(path)) and m[0] == "B" and m, timeout=30,
                              message="B running")
    version_b = row(path)["version"]
    assert version_b != version_a and version_b.startswith(folder.name)  # status names what runs
    assert (snapshots / version_a[:12] / "app.py").read_text() == APP.format(mark="A")  # A is intact
    listed = versions(path)["versions"]
    assert [v["running"] for v in listed if v["version"] == version_b] == [[0]]
    assert cli(path, "plan").stdout.strip().endswith("nothing to do")


def test_an_unwatched_folder_edit_deploys_at_an_explicit_reload(tmp_path, start):
    """No ``watch``: an edit is not seen by itself, but ``supervise reload`` (and SIGHUP) looks
    at the folder again and deploys the new snapshot; before, it said "nothing to do" forever."""
    write(tmp_path / "app" / "app.py", APP.format(mark="A"))
    path = write(tmp_path / "services.toml", site())
    start(path)
    wait_until(lambda: (m := running_mark(path)) and m[0] == "A", timeout=30, message="A running")
    write(tmp_path / "app" / "app.py", APP.format(mark="B"))
    assert cli(path, "reload").returncode == 0
    wait_until(lambda: (m := running_mark(path)) and m[0] == "B", timeout=30, message="B running after the reload")
    assert cli(path, "reload").stdout.strip().endswith("nothing to do")  # and only once


def test_a_rollback_runs_the_previous_files_and_the_cli_pins_versions(tmp_path, start):
    """Input (b), with a build: a bad edit crash-loops and is rolled back to A's own snapshot
    (A's files run again, status says A); then `versions` shows what is on disk, good and
    running, `rollback` pins a version, and a new revision unpins it."""
    write(tmp_path / "app" / "app.py", APP.format(mark="A"))
    path = write(tmp_path / "services.toml", site(f'watch = ["*.py"]\nbuild = ["{PY}", "-m", "py_compile", "app.py"]\n'
                                                  'good_after = "3s"'))
    start(path)
    wait_until(lambda: row(path).get("good"), timeout=30, message="A good")
    version_a = row(path)["version"]
    assert row(path)["good_rule"] == "up for 3s without a crash"
    table = cli(path, "status").stdout
    assert "GOOD" in table.splitlines()[0] and "site: good = up for 3s without a crash" in table

    write(tmp_path / "app" / "app.py", BAD.format(mark="B"))
    wait_until(lambda: "rolled back" in (row(path).get("message") or ""), timeout=30, message="rolled back")
    mark, folder = wait_until(lambda: running_mark(path), timeout=30, message="A running again")
    assert mark == "A" and row(path)["version"] == version_a and folder.name == version_a[:12]
    listed = {v["version"]: v for v in versions(path)["versions"]}
    assert listed[version_a]["good"] and listed[version_a]["running"] == [0]
    bad = [v for v in listed.values() if not v["good"]]
    assert bad and all(v["running"] == [] for v in bad)

    # C: a good edit deploys (a new revision after a rollback is tried), and becomes good
    write(tmp_path / "app" / "app.py", APP.format(mark="C"))
    wait_until(lambda: (m := running_mark(path)) and m[0] == "C", timeout=30, message="C running")
    wait_until(lambda: row(path).get("good"), timeout=30, message="C good")
    version_c = row(path)["version"]
    assert row(path)["rollback_to"] == version_c

    # supervise rollback: the newest good version other than what runs (A), pinned
    result = cli(path, "rollback", "site")
    assert result.returncode == 0, result.stderr
    assert f"running {version_a}, pinned until the next change" in result.stdout
    wait_until(lambda: (m := running_mark(path)) and m[0] == "A", timeout=30, message="A pinned")
    assert row(path)["pinned"] == version_a
    assert cli(path, "reload").returncode == 0 and row(path)["version"] == version_a  # a reload keeps the pin
    assert "nothing to do" in cli(path, "plan").stdout
    pid = row(path)["pid"]
    assert cli(path, "restart", "site").returncode == 0  # so does a user restart
    mark, _ = wait_until(lambda: (m := running_mark(path)) and row(path)["pid"] != pid and m, timeout=30)
    assert mark == "A" and row(path)["pinned"] == version_a and "nothing to do" in cli(path, "plan").stdout
    # an explicit version by prefix
    result = cli(path, "rollback", "site", version_c[:8])
    assert result.returncode == 0, result.stderr
    wait_until(lambda: (m := running_mark(path)) and m[0] == "C", timeout=30, message="C pinned")
    assert versions(path)["pinned"] == version_c
    unknown = cli(path, "rollback", "site", "ffffffff")
    assert unknown.returncode == 1 and "no version 'ffffffff' on disk" in unknown.stderr
    # a later new revision unpins: D deploys as usual
    write(tmp_path / "app" / "app.py", APP.format(mark="D"))
    wait_until(lambda: (m := running_mark(path)) and m[0] == "D", timeout=30, message="D deployed")
    assert row(path)["pinned"] is None


def test_a_new_folder_or_a_moved_symlink_deploys_the_new_files(tmp_path, start):
    """Input (c): `current -> releases/r1` moved to r2, then `supervise reload`, runs r2's files
    and plan then has nothing to do; so does editing the path to another folder."""
    for name in ("r1", "r2", "r3"):
        write(tmp_path / "releases" / name / "app.py", APP.format(mark=name))
    os.symlink("releases/r1", tmp_path / "current")
    path = write(tmp_path / "services.toml", site(source='"./current"'))
    start(path)
    wait_until(lambda: (m := running_mark(path)) and m[0] == "r1", timeout=30, message="r1 running")

    os.symlink("releases/r2", tmp_path / "current.new")
    os.replace(tmp_path / "current.new", tmp_path / "current")
    reload = cli(path, "reload")
    assert reload.returncode == 0 and "source changed" in reload.stdout, reload.stdout + reload.stderr
    mark, folder = wait_until(lambda: running_mark(path), timeout=30, message="a replica running")
    assert mark == "r2" and str(tmp_path / "releases") not in str(folder)
    assert cli(path, "plan").stdout.strip().endswith("nothing to do")

    write(path, site(source='"./releases/r3"'))  # the file watcher reloads it
    wait_until(lambda: (m := running_mark(path)) and m[0] == "r3", timeout=30, message="r3 running")
    assert cli(path, "plan").stdout.strip().endswith("nothing to do")


def test_in_place_runs_the_live_folder_and_claims_no_rollback(tmp_path, start):
    write(tmp_path / "app" / "app.py", APP.format(mark="A"))
    path = write(tmp_path / "services.toml", site(source='{ path = "./app", mode = "in-place" }'))
    start(path)
    mark, folder = wait_until(lambda: running_mark(path), timeout=30, message="A running")
    assert folder == (tmp_path / "app").resolve()
    current = row(path)
    assert current["in_place"]
    assert "site: good = up for 10s without a crash; runs its folder in place: no rollback to earlier files" \
        in cli(path, "status").stdout
    refused = cli(path, "rollback", "site")
    assert refused.returncode == 1 and "in place" in refused.stderr
    assert not (tmp_path / ".supervise" / "sources" / "site").exists()


def test_good_versions_and_a_pin_survive_a_supervisor_restart(tmp_path, start):
    """SIGQUIT leaves the replica running; the next supervisor adopts it and still knows which
    versions proved good (so a failing update still has somewhere to go back to) and the pin."""
    import signal

    write(tmp_path / "app" / "app.py", APP.format(mark="A"))
    path = write(tmp_path / "services.toml", site('watch = ["*.py"]\ngood_after = "1s"'))
    first = start(path)
    wait_until(lambda: row(path).get("good"), timeout=30, message="A good")
    version_a = row(path)["version"]
    write(tmp_path / "app" / "app.py", APP.format(mark="B"))
    wait_until(lambda: (m := running_mark(path)) and m[0] == "B" and row(path).get("good"), timeout=30,
               message="B good")
    assert cli(path, "rollback", "site", version_a).returncode == 0
    pid = wait_until(lambda: (m := running_mark(path)) and m[0] == "A" and row(path)["pid"], timeout=30)

    first.send_signal(signal.SIGQUIT)
    assert first.wait(timeout=30) == 0
    start(path)
    wait_until(lambda: row(path).get("pid") == pid, timeout=30, message="A adopted")
    listed = versions(path)
    assert listed["pinned"] == version_a and {v["version"] for v in listed["versions"] if v["good"]} >= {version_a}
    assert row(path)["pinned"] == version_a and "nothing to do" in cli(path, "plan").stdout


def test_an_edit_made_while_a_snapshot_builds_is_deployed_too(tmp_path, start):
    """A snapshot builds in its copy, so an edit of the live folder during that build is the
    user's (not the build's output, as it can be for a folder built in place) and deploys."""
    write(tmp_path / "app" / "app.py", APP.format(mark="A"))
    path = write(tmp_path / "services.toml", site(f'watch = ["*.py"]\nbuild = ["{PY}", "-c", '
                                                  '"import time; time.sleep(2)"]'))
    start(path)
    wait_until(lambda: (m := running_mark(path)) and m[0] == "A", timeout=30, message="A running")
    write(tmp_path / "app" / "app.py", APP.format(mark="B"))
    wait_until(lambda: row(path).get("message", "").startswith("building"), timeout=30, message="B building")
    write(tmp_path / "app" / "app.py", APP.format(mark="C"))
    wait_until(lambda: (m := running_mark(path)) and m[0] == "C", timeout=40, message="C running")


def test_versions_and_rollback_of_a_git_source(tmp_path, start):
    """The same verbs over git worktrees: both commits on disk, the first pinned back by a
    prefix of its commit, the next pushed commit deploys and ends the pin."""
    import git

    repo = git.Repo.init(tmp_path / "remote", initial_branch="main")
    try:
        with repo.config_writer() as cfg:
            cfg.set_value("user", "name", "t").set_value("user", "email", "t@example.invalid")

        def commit(mark: str) -> str:
            write(tmp_path / "remote" / "app.py", APP.format(mark=mark))
            repo.index.add(["app.py"])
            return repo.index.commit(mark).hexsha

        first = commit("A")
        path = write(tmp_path / "services.toml", site('good_after = "1s"', source='{ git = "remote", ref = "main", '
                                                                               'poll = "500ms" }'))
        start(path)
        wait_until(lambda: (m := running_mark(path)) and m[0] == "A" and row(path).get("good"), timeout=30,
                   message="A good")
        second = commit("B")
        wait_until(lambda: (m := running_mark(path)) and m[0] == "B", timeout=30, message="B deployed")
        listed = {v["revision"]: v for v in versions(path)["versions"]}
        assert {first[:12], second[:12]} <= set(listed) and listed[second[:12]]["newest"]
        result = cli(path, "rollback", "site", first[:8])
        assert result.returncode == 0, result.stderr
        wait_until(lambda: (m := running_mark(path)) and m[0] == "A", timeout=30, message="A pinned")
        assert row(path)["version"].startswith(first[:12]) and row(path)["pinned"]
        commit("C")  # the poller sees a newer commit: it deploys, the pin ends
        wait_until(lambda: (m := running_mark(path)) and m[0] == "C", timeout=30, message="C deployed")
        assert row(path)["pinned"] is None
    finally:
        repo.close()
