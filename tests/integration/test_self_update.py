"""Self-update for real: a git repository in tmp_path holds a copy of this project; a version
bump is committed; `supervise upgrade` installs it beside the running one (a venv under
STATE_DIR/self that layers on the test venv's packages: no network), checks it and execs it in
place. Same pid, same replica pids, no line lost; a broken new version is reported and the old
one keeps serving."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import terminate, wait_until, write

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
COUNTER = "import itertools,time\\nfor i in itertools.count():\\n    print(i, flush=True)\\n    time.sleep(0.01)"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t"}).stdout


def bump(repo: Path, version: str, change: tuple[str, str, str] | None = None) -> str:
    """Commit ``version`` in pyproject.toml (and ``change``: (file, old, new)); returns the commit."""
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(re.sub(r'(?m)^version = "[^"]*"', f'version = "{version}"', pyproject.read_text()))
    if change is not None:
        target = repo / change[0]
        text = target.read_text()
        assert change[1] in text
        target.write_text(text.replace(change[1], change[2], 1))
    git(repo, "commit", "-qam", f"version {version}")
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def project(tmp_path) -> Path:
    """A git repository holding a copy of this project's tracked files (its commit: 0.1.0)."""
    repo = tmp_path / "project"
    repo.mkdir()
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the project as it is")
    return repo


def start(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(out, "a"),
                            stderr=subprocess.STDOUT)


def supervise(path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True, text=True,
                          timeout=timeout)


def ping(path: Path) -> dict:
    result = supervise(path, "status", "--json")
    return json.loads(result.stdout) if result.stdout.startswith("{") else {}


def replicas(path: Path) -> dict[str, tuple[int, int]]:
    """{service: (pid, restarts)} of the running replicas."""
    rows = ping(path).get("services") or []
    return {r["service"]: (r["pid"], r["restarts"]) for r in rows if r["phase"] in ("running", "ready") and r["pid"]}


def numbers(state: Path, name: str) -> list[int]:
    return [int(line) for line in (state / "logs" / f"{name}.log").read_text().splitlines() if line.isdigit()]


def counted_on(state: Path, *names: str) -> None:
    """The counter went on through an exec (or a failed upgrade): wait for 20 more of its lines,
    then check that each of ``names`` (default: the counter) lost and repeated none."""
    seen = len(numbers(state, "counter"))
    wait_until(lambda: len(numbers(state, "counter")) > seen + 20, message="more lines")
    for name in names or ("counter",):
        got = numbers(state, name)
        assert got == list(range(len(got))), f"{name}: lines lost or repeated"


def config(tmp_path: Path, repo: Path) -> Path:
    return write(tmp_path / "services.toml", f"""
[supervise]
self = {{ git = "{repo}", ref = "main" }}

[services.counter]
command = ["{PY}", "-c", "{COUNTER}"]

[services.other]
command = ["{PY}", "-c", "{COUNTER}"]
""")


def upgrade_when_running(tmp_path: Path, path: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """Once both services run and wrote some lines: (their replicas, `supervise upgrade`'s result)."""
    before = wait_until(lambda: (r := replicas(path)) and len(r) == 2 and r, timeout=30, message="two services")
    wait_until(lambda: len(numbers(tmp_path / ".supervise", "counter")) > 20, message="counter lines")
    result = supervise(path, "upgrade")
    return before, result


def test_upgrade_execs_the_new_version_in_place_adopting_every_service(tmp_path, project, monkeypatch):
    from test_notify_run import NotifyListener  # systemd's side of $NOTIFY_SOCKET, as there

    bump(project, "0.1.1")
    path = config(tmp_path, project)
    out = tmp_path / "out.txt"
    unit = NotifyListener()
    monkeypatch.setenv("NOTIFY_SOCKET", unit.address)
    proc = start(path, out)
    events_out = tmp_path / "events.jsonl"
    events = None
    try:
        wait_until(lambda: ping(path).get("supervisor"), timeout=30, message="the supervisor")
        events = subprocess.Popen([PY, "-m", "supervisor", "events", "--config", str(path)],
                                  stdout=open(events_out, "w"), stderr=subprocess.STDOUT)
        # subscribed for sure once it has seen an event caused after it started
        wait_until(lambda: supervise(path, "reload").returncode == 0 and '"reloaded"' in events_out.read_text(),
                   timeout=30, message="the events stream")
        unit.until("READY", "1", timeout=30)
        sock = os.stat(tmp_path / ".supervise" / "control.sock").st_ino
        before, result = upgrade_when_running(tmp_path, path)
        assert result.returncode == 0, result.stderr + out.read_text()
        assert os.stat(tmp_path / ".supervise" / "control.sock").st_ino == sock  # handed over, not made anew
        # systemd sees a reload of the same process: RELOADING=1, then READY=1 from the new code
        seen = len(unit.messages)
        unit.until("RELOADING", "1", timeout=30)
        unit.until("READY", "1", timeout=30, after=seen)
        assert not [m for _, m in unit.messages if "STOPPING" in m]
        # `events` goes on across the exec (one client, two supervise versions, the same pid)
        def kinds() -> dict[str, dict]:
            return {e["type"]: e for e in map(json.loads, events_out.read_text().splitlines())}

        wait_until(lambda: {"upgrading", "upgraded"} <= set(kinds()), message="the upgrade events")
        got = kinds()
        assert got["upgrading"]["from"] == "0.1.0" and got["upgrading"]["pid"] == proc.pid
        assert got["upgraded"]["from"] == "0.1.0" and got["upgraded"]["to"].startswith("0.1.1 (git ")
        assert events.poll() is None
        assert re.search(r"upgraded from 0\.1\.0 to 0\.1\.1 \(git [0-9a-f]{12}\), pid %d" % proc.pid, result.stdout)
        assert proc.poll() is None  # the same process: exec, not a new pid
        psutil_proc = psutil.Process(proc.pid)
        assert str(tmp_path / ".supervise" / "self" / "versions") in " ".join(psutil_proc.cmdline())
        info = ping(path)["supervisor"]
        assert (info["pid"], info["version"]) == (proc.pid, "0.1.1")
        assert info["uptime"] > 1.0  # the process's, not reset by the exec
        assert replicas(path) == before  # same replica pids, no restart
        version = supervise(path, "--version").stdout  # the client is the test venv's: 0.1.0
        assert "0.1.0" in version
        text = out.read_text()
        assert "supervise upgraded from 0.1.0 to 0.1.1" in text
        assert "started counter" not in text.split("handing over", 1)[1]
        counted_on(tmp_path / ".supervise", "counter", "other")  # on through the exec
        # a second upgrade finds nothing new
        again = supervise(path, "upgrade")
        assert again.returncode == 0 and "newest version" in again.stdout, again.stderr
        # and the next commit goes on from the upgraded one (its guard, its venv's packages)
        bump(project, "0.1.2")
        third = supervise(path, "upgrade")
        assert third.returncode == 0, third.stderr + out.read_text()
        assert re.search(r"upgraded from 0\.1\.1 \(git [0-9a-f]{12}\) to 0\.1\.2 \(git [0-9a-f]{12}\), pid %d"
                         % proc.pid, third.stdout), third.stdout
        assert replicas(path) == before
        assert ping(path)["supervisor"]["version"] == "0.1.2"
        # each install layers on the first one's packages only, never on another install (pruned some day)
        layers = {f.read_text() for f in (tmp_path / ".supervise" / "self" / "versions").glob(
            "*/lib/python*/site-packages/_supervise_base.pth")}
        assert len(layers) == 1 and ".supervise" not in layers.pop()
        # the replicas are still this pid's children: their exit status is known, as before
        os.kill(before["other"][0], signal.SIGKILL)
        row = wait_until(lambda: [r for r in ping(path)["services"] if r["service"] == "other" and r["restarts"] == 1
                                  and r["pid"] and r["pid"] != before["other"][0]], timeout=30, message="a restart")
        assert row[0]["last_exit"] == "signal 9 (SIGKILL)"
        # started by the new code, with the environment the old one gave: nothing of the hand-over
        env = psutil.Process(row[0]["pid"]).environ()
        assert not {"NOTIFY_SOCKET", "SUPERVISE_HANDOVER", "SUPERVISE_BOOT", "SUPERVISE_READY_FD"} & set(env)
    finally:
        terminate(proc)
        unit.close()
        if events is not None:
            events.wait(timeout=30)  # its stream ends with the supervisor
    for pid, _ in before.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_new_version_that_fails_its_check_is_reported_and_the_old_one_keeps_running(tmp_path, project):
    bump(project, "0.1.2", ("supervisor/desired/config.py", "def load(", "def load(  # broken\n  syntax error here\n"))
    path = config(tmp_path, project)
    out = tmp_path / "out.txt"
    proc = start(path, out)
    try:
        before, result = upgrade_when_running(tmp_path, path)
        assert result.returncode == 1
        # caught by `--version` or, when the broken module is not one `--version` imports, by `check`
        assert ("--version" in result.stderr or "check --config" in result.stderr) and "SyntaxError" in result.stderr, \
            result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert proc.poll() is None
        assert replicas(path) == before
        assert "upgrade of supervise failed, 0.1.0 keeps running" in out.read_text()
    finally:
        terminate(proc)


BROKEN_STARTS = {
    # the daemon module is not imported by `--version` or `check`: run dies before anything
    "dies at import": ("supervisor/daemon.py", "class Daemon:", "raise RuntimeError('broken on start')\n\n\nclass Daemon:",
                       "broken on start"),
    # it adopts every replica, then its reconcile loop fails before its first pass is applied
    "reconcile fails": ("supervisor/reconciler.py", "        while not self.stopping:\n            await self.wake.wait()",
                        "        raise RuntimeError('broken reconcile')\n        while not self.stopping:\n"
                        "            await self.wake.wait()", "it exited with status 1 before it was ready"),
}


@pytest.mark.parametrize("case", BROKEN_STARTS)
def test_a_new_version_that_does_not_start_gives_way_to_the_old_one(tmp_path, project, case):
    """Its checks pass, but it does not prove itself: the old version's guard execs the old one
    again (same pid), which adopts everything once more (the new one left every service running)."""
    file, old, new, reason = BROKEN_STARTS[case]
    bump(project, "0.1.3", (file, old, new))
    path = config(tmp_path, project)
    out = tmp_path / "out.txt"
    proc = start(path, out)
    try:
        wait_until(lambda: ping(path).get("supervisor"), timeout=30, message="the supervisor")
        sock = os.stat(tmp_path / ".supervise" / "control.sock").st_ino
        before, result = upgrade_when_running(tmp_path, path)
        assert result.returncode == 1, result.stdout
        assert "upgrade failed: supervise 0.1.3" in result.stderr and reason in result.stderr, result.stderr
        assert os.stat(tmp_path / ".supervise" / "control.sock").st_ino == sock  # handed there and back
        # not tried again by the poll, even after a restart of supervise: recorded in STATE_DIR
        failed = json.loads((tmp_path / ".supervise" / "self" / "failed.json").read_text())
        assert failed == [git(project, "rev-parse", "HEAD").strip()]
        assert proc.poll() is None
        info = ping(path)["supervisor"]
        assert info["pid"] == proc.pid
        assert replicas(path) == before
        assert psutil.Process(proc.pid).cmdline()[:3] == [PY, "-m", "supervisor"]  # the old one again
        counted_on(tmp_path / ".supervise")
    finally:
        terminate(proc)


def supervise_wheel(index: Path, version: str) -> Path:
    """A wheel of this project as it is, at ``version``, written with zipfile (building one
    with a build backend would need the network for the backend), into ``index/supervise/``.
    It keeps the project's dependencies (Requires-Dist): installing it offline proves the new
    venv sees the running install's packages."""
    import base64
    import hashlib
    import tomllib
    import zipfile

    dist = f"supervise-{version}.dist-info"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    files: dict[str, bytes] = {}
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                             "supervisor"], check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if name.endswith(".py") and (ROOT / name).is_file():
            files[name] = (ROOT / name).read_bytes()
    files[f"{dist}/METADATA"] = ("Metadata-Version: 2.1\nName: supervise\nVersion: %s\n%s" % (
        version, "".join(f"Requires-Dist: {d}\n" for d in deps))).encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/entry_points.txt"] = b"[console_scripts]\nsupervise = supervisor.cli:main\n"
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder = index / "supervise"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"supervise-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def test_a_polled_pip_source_upgrades_at_start_and_then_stays(tmp_path, package_index):
    """``self = { pip = ..., poll = ... }``: checked once the first pass is done; the new
    release is installed (offline: its dependencies are the running install's) and exec'd;
    the new supervise's own first check finds nothing newer."""
    folder, url = package_index
    supervise_wheel(folder, "0.2.0")
    path = write(tmp_path / "services.toml", f"""
[supervise]
self = {{ pip = "supervise>=0.2", index = "{url}", poll = "1h" }}

[services.counter]
command = ["{PY}", "-c", "{COUNTER}"]
""")
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([PY, "-m", "supervisor", "-v", "--config", str(path)], stdout=open(out, "a"),
                            stderr=subprocess.STDOUT)
    try:
        text = wait_until(lambda: "supervise upgraded from" in (t := out.read_text()) and t, timeout=60,
                          message="the upgrade at start")
        assert f"supervise upgraded from 0.1.0 to 0.2.0, pid {proc.pid}" in text
        started = text.split("handing over", 1)[0]
        assert started.count("started counter[0]") == 1
        info = ping(path)["supervisor"]
        assert info["pid"] == proc.pid
        wait_until(lambda: "self poll: supervise 0.2.0 is the newest version" in out.read_text(), timeout=30,
                   message="the new version's own first check")
        assert out.read_text().count("handing over to supervise") == 1  # once: no loop
        assert "started counter[0]" not in out.read_text().split("handing over", 1)[1]
        venv = tmp_path / ".supervise" / "self" / "versions" / "0.2.0"
        assert (venv / "bin" / "supervise").exists()
        site = next((venv / "lib").glob("python*/site-packages"))
        assert (site / "supervisor").is_dir() and not (site / "watchdog").exists()  # deps: the running install's
        counted_on(tmp_path / ".supervise")
    finally:
        terminate(proc)


def test_a_stop_during_an_install_kills_it_and_stops_at_once(tmp_path, project):
    """SIGTERM while pip installs the new version: the install is killed (the leak check sees
    no pip left), the services stop as usual, nothing waits for pip to finish."""
    bump(project, "0.1.4")
    path = config(tmp_path, project)
    out = tmp_path / "out.txt"
    proc = start(path, out)
    upgrade = None
    try:
        wait_until(lambda: (r := replicas(path)) and len(r) == 2, timeout=30, message="two services")
        upgrade = subprocess.Popen([PY, "-m", "supervisor", "upgrade", "--config", str(path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        def installing() -> bool:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "pip" in child.cmdline() and "install" in child.cmdline():
                        return True
                except psutil.Error:
                    continue
            return False

        wait_until(installing, timeout=60, message="pip installing")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        _, err = upgrade.communicate(timeout=20)
        assert upgrade.returncode == 1 and len(err.strip().splitlines()) == 1, err
        assert "stopped" in out.read_text() and "supervise upgraded" not in out.read_text()
    finally:
        terminate(proc)
        if upgrade is not None and upgrade.poll() is None:
            upgrade.kill()
            upgrade.wait()


def test_a_failing_step_is_one_line_without_the_credentials_of_a_url(tmp_path):
    """What pip printed last is the reason given, with ``user:token@`` taken out of any URL."""
    from supervisor import selfupdate
    from supervisor.desired.model import SourceSpec

    source = selfupdate.SelfSource(SourceSpec(kind="pip", requirement="supervise"), tmp_path / "state")
    script = "import sys; print('noise'); sys.exit('ERROR: cannot reach https://me:s3cret@index.example/simple')"
    with pytest.raises(selfupdate.UpgradeError) as failure:
        source._run([PY, "-c", script], "pip install")
    assert str(failure.value) == "pip install failed: ERROR: cannot reach https://***@index.example/simple"


def test_without_a_self_source_upgrade_says_so_and_a_reload_that_adds_one_polls_it(tmp_path, package_index):
    folder, url = package_index
    supervise_wheel(folder, "0.3.0")
    body = f'[services.counter]\ncommand = ["{PY}", "-c", "{COUNTER}"]\n'
    path = write(tmp_path / "services.toml", body)
    out = tmp_path / "out.txt"
    proc = start(path, out)
    try:
        before = wait_until(lambda: replicas(path), timeout=30, message="the service")
        result = supervise(path, "upgrade")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"supervise: upgrade: {path}: no [supervise] self = {{ git = ... }} or {{ pip = ... }} to upgrade from"]
        path.write_text(f'[supervise]\nself = {{ pip = "supervise", index = "{url}", poll = "1h" }}\n\n' + body)
        assert supervise(path, "reload").returncode == 0
        text = wait_until(lambda: "supervise upgraded from" in (t := out.read_text()) and t, timeout=60,
                          message="the upgrade the reload's poll found")
        assert f"supervise upgraded from 0.1.0 to 0.3.0, pid {proc.pid}" in text
        assert replicas(path) == before
    finally:
        terminate(proc)
