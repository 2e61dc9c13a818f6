"""Fixture (a pytest plugin, loaded by tests/conftest.py): a real image registry on loopback.

Debian's ``docker-registry`` (the CNCF Distribution registry, v2 API) serves plain HTTP on
``127.0.0.1:PORT`` with its own config and filesystem storage in ``tmp_path``; it is stopped by
pid at the end of the test. The private podman of tests/podman_engine.py is told (in its
``registries.conf``) that registries on 127.0.0.1 speak plain HTTP, as a user declares an
insecure registry to their engine.

Where the registry cannot run, the tests skip with the reason; under ``CI=true`` they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port, terminate, wait_until

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass(frozen=True)
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT`` (what a reference starts with)."""

    host: str
    pid: int

    def get(self, path: str) -> dict:
        """GET ``/v2/...`` of the registry's API, decoded (raises on an HTTP error)."""
        with urllib.request.urlopen(f"http://{self.host}{path}", timeout=10) as answer:
            return json.loads(answer.read() or b"{}")

    def tags(self, name: str) -> list[str]:
        """``GET /v2/NAME/tags/list``: the tags the registry holds for ``name``."""
        return sorted(self.get(f"/v2/{name}/tags/list").get("tags") or [])


@pytest.fixture
def registry(tmp_path):
    """A real ``docker-registry`` on a free loopback port, storage in ``tmp_path``."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is not installed (.ci/run installs the docker-registry package)")
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    root = tmp_path / "registry"
    root.mkdir()
    port = free_port()
    config = root / "config.yml"
    config.write_text(CONFIG.format(root=root / "storage", port=port))
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    registry = Registry(f"127.0.0.1:{port}", proc.pid)

    def answers() -> bool:
        if proc.poll() is not None:
            return True
        try:
            registry.get("/v2/")
            return True
        except OSError:
            return False

    try:
        wait_until(answers, timeout=20, interval=0.05, message="docker-registry to answer")
        if proc.poll() is not None:
            pytest.fail("docker-registry did not start: " + Path(root / "registry.log").read_text()[-500:])
        yield registry
    finally:
        terminate(proc, 10)
        log.close()
