"""The rendered YAML runs for real under ``podman kube play``: the pod comes up, the service's
own readiness check answers from this machine, and ``podman kube down`` leaves nothing.

Podman runs rootful with a private storage root, run root and network config folder in
``tmp_path`` (nothing of the machine's own podman is touched), ``--runtime runc`` (crun fails
on this machine's hybrid cgroups) and default ulimits lowered in a containers.conf given by
``CONTAINERS_CONF``. The image is built offline: ``FROM scratch`` + Debian's static busybox
(package busybox-static), with busybox httpd as the server. Under CI=true a podman that
cannot run fails these tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_until

from supervisor.desired import config
from supervisor.execute import health
from supervisor.kube.render import render, to_yaml

BUSYBOX = Path("/bin/busybox")
IMAGE = "localhost/supervise-kube-test:1"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs podman, runc and busybox-static")
    pytest.skip(reason)


class Podman:
    """``podman`` with every piece of state under one folder."""

    def __init__(self, root: Path):
        self.root = root
        (root / "containers.conf").write_text(textwrap.dedent("""
            [containers]
            default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
            [engine]
            runtime = "runc"
        """))
        self.env = dict(os.environ, CONTAINERS_CONF=str(root / "containers.conf"))
        self.base = ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                     "--storage-driver", "vfs", "--runtime", "runc", "--network-config-dir", str(root / "net"),
                     "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def clean(self) -> None:
        """Remove everything under our root (containers, pods, the kube network), then the root."""
        self("pod", "rm", "--all", "--force", check=False)
        self("rm", "--all", "--force", check=False)
        self("network", "rm", "--force", "podman-default-kube-network", check=False)
        self("rmi", "--all", "--force", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def podman(tmp_path):
    if shutil.which("podman") is None or shutil.which("runc") is None:
        _unavailable("podman or runc is not installed")
    if os.geteuid() != 0:
        _unavailable("podman kube play with published ports needs root here")
    if not BUSYBOX.is_file() or b"/lib64/ld-linux" in BUSYBOX.read_bytes()[:4096]:
        _unavailable(f"{BUSYBOX} is missing or not static (package busybox-static)")
    root = Path(tempfile.mkdtemp(prefix="sv-kube-"))  # short: podman's unix socket paths are limited
    podman = Podman(root)
    try:
        context = root / "image"
        (context / "www").mkdir(parents=True)
        shutil.copy(BUSYBOX, context / "busybox")
        (context / "www" / "index.html").write_text("hello from a pod\n")
        (context / "Containerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n")
        try:
            podman("build", "--quiet", "--tag", IMAGE, str(context))
        except AssertionError as exc:
            _unavailable(f"podman cannot build here: {exc}")
        yield podman
    finally:
        podman.clean()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_rendered_yaml_runs_under_podman_kube_play(podman, tmp_path):
    port = free_port()
    path = tmp_path / "services.toml"
    path.write_text(textwrap.dedent(f"""
        [supervise]
        runtime = "kubernetes"
        [env]
        PORT = "{port}"
        [services.web]
        command = ["/bin/busybox", "httpd", "-f", "-p", "${{PORT}}", "-h", "/www"]
        user = "nobody"
        stop_timeout = "1s"
        ready = {{ http = "http://127.0.0.1:${{PORT}}/index.html", interval = "200ms" }}
        kubernetes = {{ image = "{IMAGE}", ports = ["{port}"] }}
    """))
    desired = config.load(path, runtimes=config.RUNTIMES)
    yaml_file = tmp_path / "web.yaml"
    yaml_file.write_text(to_yaml(render(desired).manifests))
    spec = desired.services["web"]

    started = time.monotonic()
    podman("kube", "play", str(yaml_file))
    try:
        pods = podman("pod", "ps", "--format", "{{.Name}} {{.Status}}").stdout.split("\n")
        assert any(line.startswith("web-pod") and "Running" in line for line in pods), pods
        # the service's own readiness check, from this machine, through the published port
        wait_until(lambda: asyncio.run(health.probe(spec.ready, {"PORT": str(port)})), timeout=20,
                   message="the readiness check to answer")
        ready_after = time.monotonic() - started
        user = podman("ps", "--format", "{{.Names}}", "--filter", "name=web-pod").stdout.split()
        uid = podman("exec", user[0], "/bin/busybox", "id", "-u").stdout.strip()
        assert uid == "65534"  # user = "nobody" -> runAsUser: 65534
    finally:
        down_started = time.monotonic()
        podman("kube", "down", str(yaml_file))
        down = time.monotonic() - down_started
    assert podman("ps", "--all", "--quiet").stdout.strip() == ""
    assert podman("pod", "ps", "--quiet").stdout.strip() == ""
    assert not asyncio.run(health.probe(spec.ready, {"PORT": str(port)}))
    # no conmon or container process of ours is left
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(podman.root) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    print(f"\npodman kube play -> ready: {ready_after:.2f}s; kube down: {down:.2f}s")
