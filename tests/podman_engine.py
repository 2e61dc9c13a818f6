"""Fixtures (a pytest plugin, loaded by tests/conftest.py): a private podman Engine API service for the container tests, and an offline base image.

``podman system service`` runs once per test session on a socket in a temp dir, with its own
``containers.conf`` (runc: crun fails on this machine's hybrid cgroups; lowered default ulimits;
events in a file) and its own storage root, run root, tmpdir and network config folder under the same temp dir, so the
tests share no state with other users of the machine. It is stopped by pid at the end, and its
storage removed.

A test session killed outright (SIGKILL, a CI timeout) runs no fixture teardown, so the service
cannot outlive it: it is started with ``PR_SET_PDEATHSIG`` (prctl(2): the kernel sends it
SIGTERM when the session's main thread ends), and the temp dir records the owner (``owner``:
pytest's pid and start time) and the service's pid; at fixture start, services of temp dirs
whose owner is gone are ended by that pid (checked against their argv) and their dirs removed,
never by process name.

The base image is made offline: ``FROM scratch`` + Debian's static busybox (package
busybox-static), whose ``httpd`` serves the readiness checks.

Where podman cannot run, the tests skip with the reason; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import MARK, terminate, wait_until

BASE_IMAGE = "localhost/supervise-test-base:1"
BUSYBOX = Path("/bin/busybox")
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
"""
#: registries.conf: registries on loopback speak plain HTTP (tests/registry.py starts one on a
#: free port; "127.0.0.1" matches every port, as containers-registries.conf(5) prefixes do).
REGISTRIES_CONF = """\
unqualified-search-registries = []

[[registry]]
location = "127.0.0.1"
insecure = true
"""


#: prctl(2) option: the signal the child gets when its parent (thread) ends.
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """A ``preexec_fn`` for Popen: the child gets SIGTERM when the process that started it
    ends, however it ends (prctl PR_SET_PDEATHSIG, Linux). libc is loaded here, before the fork;
    a parent that ended before the prctl took effect is caught by the ppid check."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)

    return preexec


def _alive(pid: int, started: float) -> bool:
    """True when ``pid`` runs and is the process that started at ``started`` (not a reused pid)."""
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except psutil.Error:
        return False


def sweep_orphans(tmp: Path) -> list[Path]:
    """End the podman services of ``tmp/supervise-podman-*`` dirs (ours: owned by our euid) whose
    owner test session is gone, by the pid each dir recorded (only if that process's argv names
    the dir), then their conmons, then remove the dirs. A dir without an ``owner`` record is
    left alone. Returns the dirs removed."""
    import psutil

    removed = []
    for root in sorted(tmp.glob("supervise-podman-*")):
        try:
            if root.is_symlink() or root.stat().st_uid != os.geteuid():
                continue
            owner_pid, owner_start = (root / "owner").read_text().split()
            if _alive(int(owner_pid), float(owner_start)):
                continue
        except (OSError, ValueError):
            continue
        try:
            service = psutil.Process(int((root / "service.pid").read_text()))
            if any(str(root) in part for part in service.cmdline()):
                service.kill()
                service.wait(10)
        except (OSError, ValueError, psutil.Error):
            pass
        _stop_conmons(root)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run under CI: {reason}")
    pytest.skip(reason)


def _is_static(path: Path) -> bool:
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    return "not a dynamic executable" in (result.stdout + result.stderr) or "statically linked" in result.stdout


@pytest.fixture(scope="session")
def podman_engine():
    """``unix://…/podman.sock`` of a podman API service private to this test session."""
    podman = shutil.which("podman")
    if podman is None:
        _unavailable("podman is not installed (apt-get install podman runc busybox-static)")
    if shutil.which("runc") is None and not Path("/usr/sbin/runc").exists():
        _unavailable("runc is not installed (apt-get install runc)")
    if os.geteuid() != 0:
        _unavailable("the container tests run podman rootful and need root")
    import psutil

    sweep_orphans(Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix="supervise-podman-"))
    (root / "owner").write_text(f"{os.getpid()} {psutil.Process().create_time()}\n")
    conf = root / "containers.conf"
    conf.write_text(CONTAINERS_CONF.format(root=root))
    socket = root / "podman.sock"
    env = {k: v for k, v in os.environ.items() if k != MARK}
    env["CONTAINERS_CONF"] = str(conf)
    registries = root / "registries.conf"
    registries.write_text(REGISTRIES_CONF)
    env["CONTAINERS_REGISTRIES_CONF"] = str(registries)
    argv = [podman, "--root", str(root / "storage"), "--runroot", str(root / "run"), "--tmpdir", str(root / "tmp"),
            "--network-config-dir", str(root / "net"), "--storage-driver", "vfs", "system", "service", "--time=0", f"unix://{socket}"]
    log = open(root / "service.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent())
    (root / "service.pid").write_text(f"{proc.pid}\n")
    url = f"unix://{socket}"
    try:
        import docker

        def answers() -> bool:
            if proc.poll() is not None:
                return True
            if not socket.exists():
                return False
            try:
                docker.DockerClient(base_url=url, timeout=5).ping()
                return True
            except Exception:
                return False

        try:
            wait_until(answers, timeout=30, interval=0.1, message="podman system service")
        except AssertionError:
            pass
        if proc.poll() is not None or not answers():
            _unavailable("podman system service did not start: " + (root / "service.log").read_text()[-500:])
        yield url
    finally:
        if proc.poll() is None:  # every container in this private storage is the tests': remove them
            try:
                import docker

                client = docker.DockerClient(base_url=url, timeout=30)
                for item in client.api.containers(all=True):
                    client.api.remove_container(item["Id"], force=True)
                client.close()
            except Exception:
                pass
        terminate(proc, 20)
        log.close()
        # conmon processes of containers that could not be removed: end them by pid (they carry
        # our private root in their argv), then drop the storage (vfs: plain folders). Not
        # `podman system reset`: that also deletes the machine's shared network definitions.
        _stop_conmons(root)
        shutil.rmtree(root, ignore_errors=True)


def _stop_conmons(root: Path) -> None:
    import psutil

    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if process.info["name"] == "conmon" and any(str(root) in part for part in process.info["cmdline"] or []):
                process.kill()
        except psutil.Error:
            continue


@pytest.fixture(scope="session")
def base_image(podman_engine, tmp_path_factory) -> dict:
    """Builds :data:`BASE_IMAGE` offline through the API; ``{"tag", "seconds"}``."""
    import docker

    if not BUSYBOX.exists() or not _is_static(BUSYBOX):
        _unavailable("a static /bin/busybox is needed for the base image (apt-get install busybox-static)")
    context = tmp_path_factory.mktemp("base-image")
    shutil.copy2(BUSYBOX, context / "busybox")
    (context / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        'RUN mkdir -p /www /tmp && echo ok > /www/index.html\nCMD ["/bin/sh"]\n')
    client = docker.DockerClient(base_url=podman_engine, timeout=120)
    started = time.monotonic()
    try:
        client.images.build(path=str(context), tag=BASE_IMAGE, rm=True)
    finally:
        client.close()
    return {"tag": BASE_IMAGE, "seconds": time.monotonic() - started}


@pytest.fixture
def podman_api(podman_engine, base_image):
    """The engine URL, with a check after the test that none of its containers is left."""
    import docker

    yield podman_engine
    client = docker.DockerClient(base_url=podman_engine, timeout=30)
    try:
        left = client.api.containers(all=True, filters={"label": "io.supervise.instance"})
        for item in left:  # clean up for the next test, then fail this one
            client.api.remove_container(item["Id"], force=True)
    finally:
        client.close()
    assert not left, f"containers left by the test: {[c.get('Names') for c in left]}"
