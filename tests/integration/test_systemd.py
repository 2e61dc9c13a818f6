"""examples/supervise.service under a real systemd, booted in a container with systemd-nspawn.

systemd cannot be PID 1 of the test machine, but ``systemd-nspawn -D / --volatile=yes -b``
boots this machine's own ``/usr`` on a throw-away tmpfs root in a couple of seconds. The
project, its virtualenv and the Python it was made from are bound in read-only, a temporary
folder (services.toml, the state dir) read-write. ``nsenter`` into the container's systemd
drives ``systemctl``; processes are checked from the host with psutil (a container's processes
are host processes too). Skipped, saying why, where nspawn cannot run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import wait_until, write

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "examples" / "supervise.service"
PY = sys.executable
UNIT_MARK = "SUPERVISE_UNIT_MARK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binds() -> list[str]:
    """Read-only binds that make ``PY -m supervisor`` work inside the container: the project,
    the virtualenv and the base Python, unless already under the host's /usr."""
    folders: list[Path] = []
    for folder in (ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(PY)).parent):
        folder = folder.resolve()
        if folder.is_relative_to("/usr") or any(folder.is_relative_to(f) for f in folders):
            continue
        folders = [f for f in folders if not f.is_relative_to(folder)] + [folder]
    return [f"--bind-ro={folder}" for folder in folders]


class Machine:
    """A booted container: ``run()`` executes a command inside it (via nsenter)."""

    def __init__(self, nspawn: subprocess.Popen, init: int, name: str, boot_seconds: float):
        self.nspawn = nspawn
        self.init = init
        self.name = name
        self.boot_seconds = boot_seconds

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.init), "-a", *argv], capture_output=True, text=True,
                              timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"-p{p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """A path of the container's root as the host reaches it."""
        return Path(f"/proc/{self.init}/root") / inside.lstrip("/")


def boot(name: str, folder: Path, log: Path) -> Machine:
    """Boot a container named ``name``; skip the test if it does not come up within 20 s."""
    if os.geteuid() != 0:
        pytest.skip("systemd-nspawn needs root")
    nspawn = shutil.which("systemd-nspawn")
    if nspawn is None or shutil.which("nsenter") is None:
        pytest.skip("systemd-nspawn or nsenter missing (Debian: apt-get install systemd-container util-linux)")
    if not Path("/usr/lib/systemd/systemd").exists() and not Path("/lib/systemd/systemd").exists():
        pytest.skip("no systemd binary on this machine to boot")
    began = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([nspawn, "-D", "/", "--volatile=yes", "-M", name, "--register=no", "--keep-unit",
                                 *binds(), f"--bind={folder}", "-b", "--", "systemd.firstboot=off"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    machine = None
    try:
        def container_init() -> int | None:
            if proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {proc.returncode}")
            children = [c for c in psutil.Process(proc.pid).children() if c.name() == "systemd"]
            return children[0].pid if children else None

        init = wait_until(container_init, timeout=10, message="the container's init")
        machine = Machine(proc, init, name, 0.0)

        def booted() -> bool:
            state = machine.run("systemctl", "is-system-running", timeout=10).stdout.strip()
            return state in ("running", "degraded")

        wait_until(booted, timeout=20, interval=0.1, message="the container to boot")
        machine.boot_seconds = time.monotonic() - began
        return machine
    except (AssertionError, RuntimeError, OSError, subprocess.TimeoutExpired, psutil.Error) as exc:
        shut_down(proc, machine.init if machine else None)
        tail = log.read_text(errors="replace").splitlines()[-15:]
        pytest.skip(f"systemd-nspawn cannot boot a container here ({exc}):\n" + "\n".join(tail))


def shut_down(nspawn: subprocess.Popen, init: int | None) -> None:
    """Power the container off (SIGTERM to nspawn asks its systemd to halt), bounded; then
    SIGKILL its init (which ends every process of its pid namespace) and nspawn, by pid."""
    if nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    if init is not None:
        try:
            os.kill(init, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if nspawn.poll() is None:
        try:
            nspawn.wait(timeout=5)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(timeout=5)


def unit_processes(mark: str) -> list[psutil.Process]:
    """Host view of the processes started from our unit (they carry ``UNIT_MARK=mark``)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(UNIT_MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.fixture
def machine(tmp_path):
    name = f"supervise-test-{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "unit"
    folder.mkdir()
    machine = boot(name, folder, tmp_path / "nspawn.log")
    machine.folder = folder  # type: ignore[attr-defined]
    try:
        yield machine
    finally:
        shut_down(machine.nspawn, machine.init)


@pytest.mark.timeout(90)
def test_the_example_unit_under_systemd_start_status_reload_stop(machine, leak_check):
    folder: Path = machine.folder  # type: ignore[attr-defined]
    port = free_port()
    config = f"""
[services.web]
command = ["{PY}", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms" }}

[services.worker]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
depends_on = {{ web = "ready" }}
"""
    path = write(folder / "services.toml", config)
    unit_mark = uuid.uuid4().hex
    # The unit as shipped, with a drop-in for where this checkout's supervise and file live.
    units = machine.path("/etc/systemd/system")
    write(units / "supervise.service", UNIT.read_text())
    write(units / "supervise.service.d" / "test.conf", f"""[Service]
ExecStart=
ExecStart={PY} -m supervisor --config {path}
Environment={UNIT_MARK}={unit_mark} SUPERVISE_TEST_MARK={leak_check} PYTHONDONTWRITEBYTECODE=1
WatchdogSec=1
""")
    machine.run("systemctl", "daemon-reload")

    # Type=notify: `systemctl start` returns once we sent READY=1, after web answered.
    started = machine.run("systemctl", "start", "supervise")
    assert started.returncode == 0, started.stderr + machine.run("journalctl", "-u", "supervise", "--no-pager").stdout
    state = machine.show("supervise", "ActiveState", "SubState", "StatusText", "MainPID")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    assert state["StatusText"] == "1 running, 1 ready"
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    # WatchdogSec=1 (drop-in): WATCHDOG=1 every 0.5 s from our loop moves systemd's timestamp;
    # without pings systemd would abort and restart us after 1 s (checked below).
    first = machine.show("supervise", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    wait_until(lambda: machine.show("supervise", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"] != first,
               timeout=3, interval=0.05, message="a watchdog ping to reach systemd")
    watched_since = time.monotonic()
    running = wait_until(lambda: len(unit_processes(unit_mark)) == 3 and unit_processes(unit_mark),
                         timeout=5, message="supervise, web and worker seen from the host")
    pids = {p.pid: p.create_time() for p in running}

    # ExecReload: SIGHUP -> RELOADING=1 ... READY=1, and the new file is in force.
    write(path, config.replace("depends_on = ", "replicas = 2\ndepends_on = "))
    assert machine.run("systemctl", "reload", "supervise").returncode == 0
    wait_until(lambda: machine.show("supervise", "ActiveState", "StatusText") ==
               {"ActiveState": "active", "StatusText": "2 running, 1 ready"}, timeout=10, interval=0.05,
               message="the reload to be applied")
    pids.update({p.pid: p.create_time() for p in unit_processes(unit_mark)})
    assert len(pids) == 4

    # A bad file on reload changes nothing; the error reaches the journal as priority err (3).
    write(path, "[services.web\n")
    assert machine.run("systemctl", "reload", "supervise").returncode == 0
    errors = wait_until(lambda: machine.run("journalctl", "-u", "supervise", "-p", "err", "-o", "cat",
                                            "--no-pager").stdout, timeout=10, message="the error in the journal")
    assert "config not applied" in errors and "TOML syntax error" in errors
    wait_until(lambda: machine.show("supervise", "ActiveState", "StatusText") ==
               {"ActiveState": "active", "StatusText": "2 running, 1 ready"}, timeout=10, interval=0.05,
               message="the unit to be active again after the bad reload")

    # More than WatchdogSec after the start, the same supervise still runs: the pings arrived.
    wait_until(lambda: time.monotonic() - watched_since > 1.2, timeout=2, message="a watchdog period to pass")
    assert machine.show("supervise", "MainPID", "NRestarts") == {"MainPID": state["MainPID"], "NRestarts": "0"}

    # KillMode=mixed: SIGTERM to supervise alone; it stops the services itself.
    assert machine.run("systemctl", "stop", "supervise").returncode == 0
    assert machine.show("supervise", "ActiveState")["ActiveState"] == "inactive"
    assert unit_processes(unit_mark) == []
    for pid, created in pids.items():
        assert not (psutil.pid_exists(pid) and psutil.Process(pid).create_time() == created), pid
    log = (folder / ".supervise" / "logs" / "web.log").read_text()
    assert "web[0]" in log and ": supervisor stopping" in log

    # Under journald our own lines carry their syslog priority, the "<N>" prefix is gone.
    journal = machine.run("journalctl", "-u", "supervise", "-o", "cat", "--no-pager").stdout
    assert "stopping every service" in journal and "<6>" not in journal and "<3>" not in journal
    print(f"nspawn boot: {machine.boot_seconds:.2f}s")
