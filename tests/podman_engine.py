"""Fixtures (a pytest plugin, loaded by tests/conftest.py): a private podman Engine API service for the container tests, and an offline base image.

``podman system service`` runs once per test session on a socket in a temp dir, with its own
``containers.conf`` (runc: crun fails on this machine's hybrid cgroups; lowered default ulimits;
events in a file) and its own storage root, run root, tmpdir and network config folder under the same temp dir, so the
tests share no state with other users of the machine. It is stopped by pid at the end, and its
storage removed.

The base image is made offline: ``FROM scratch`` + Debian's static busybox (package
busybox-static), whose ``httpd`` serves the readiness checks.

Where podman cannot run, the tests skip with the reason; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import MARK, wait_until

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
    root = Path(tempfile.mkdtemp(prefix="supervise-podman-"))
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
                            start_new_session=True)
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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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
