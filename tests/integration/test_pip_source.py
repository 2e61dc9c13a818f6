"""pip sources, with real pip against a real index served over loopback.

The index is a folder in tmp_path served by ``python -m http.server`` (its directory listings
are what pip reads as a PEP 503 simple index). The package's wheels are written with zipfile
(a wheel is a zip with a ``.dist-info``; building them with a build backend would need the
network for its own build dependencies). pip's machine-wide configuration is switched off
(``PIP_CONFIG_FILE=/dev/null``) so that only the index named in the file is asked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from conftest import free_port, http_get as get, wait_until
from harness import DaemonRun, run
from supervisor.desired.model import SourceSpec
from supervisor.execute.sources import SourceError
from supervisor.execute.sources.pip import PipSource

NAME = "sv-hello"
MODULE = """\
import os, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

VERSION = {version!r}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(HTTPServer):
    def server_bind(self):  # start-first: old and new version listen on one port at once
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def main():
    if sys.argv[1:] == ["--check"]:  # ready when *this* version answers (old and new share the port)
        import urllib.request
        try:
            with urllib.request.urlopen("http://127.0.0.1:%s/" % os.environ["PORT"], timeout=1) as response:
                sys.exit(0 if response.read().decode() == VERSION else 1)
        except OSError:
            sys.exit(1)
    if {crash!r}:
        print("sv-hello", VERSION, "is broken", flush=True)
        sys.exit(1)
    print("sv-hello", VERSION, "serving on", os.environ["PORT"], "from", sys.prefix, flush=True)
    Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def make_wheel(index: Path, version: str, crash: bool = False) -> Path:
    """Write ``sv_hello-VERSION-py3-none-any.whl`` (module ``sv_hello``, console script
    ``sv-hello``) into ``index/sv-hello/``."""
    dist = f"sv_hello-{version}.dist-info"
    files = {
        "sv_hello.py": MODULE.format(version=version, crash=crash),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nsv-hello = sv_hello:main\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    folder = index / NAME
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"sv_hello-{version}-py3-none-any.whl"
    temp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(temp, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    temp.rename(wheel)  # published at once: a poll never sees half a wheel
    return wheel



def test_resolve_picks_the_newest_satisfying_version_with_pip(package_index, tmp_path):
    folder, url = package_index
    for version in ("1.0", "1.1", "2.0"):
        make_wheel(folder, version)
    source = PipSource(SourceSpec(kind="pip", requirement=f"{NAME}<2", index=url), tmp_path / "src")
    assert source.latest() == "1.1"  # 2.0 does not satisfy <2; 1.0 is older
    missing = PipSource(SourceSpec(kind="pip", requirement="sv-absent", index=url), tmp_path / "src")
    with pytest.raises(SourceError) as failure:
        missing.latest()
    assert "\n" not in str(failure.value) and "sv-absent" in str(failure.value)


def test_pip_keeps_its_report_cache_and_temp_files_in_the_state_dir(package_index, tmp_path, monkeypatch):
    """Security rule "nothing written outside STATE_DIR": a resolve and an install write no
    report, cache or temp file in TMPDIR or the home folder, only in the source's folder."""
    folder, url = package_index
    make_wheel(folder, "1.0")
    outside = tmp_path / "outside-tmp"
    outside.mkdir()
    monkeypatch.setenv("TMPDIR", str(outside))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("PIP_CACHE_DIR", raising=False)
    root = tmp_path / "state" / "sources" / "hello"
    source = PipSource(SourceSpec(kind="pip", requirement=NAME, index=url), root)
    assert source.latest() == "1.0"
    for argv in source.install_steps("1.0"):  # as the Preparer runs them, with the source's pip env
        subprocess.run(argv, env={**os.environ, **source.pip_env()}, check=True, capture_output=True, timeout=300)
    source.mark_installed("1.0")
    assert source.installed("1.0") and (source.venv("1.0") / "bin" / "python").exists()
    assert list(outside.iterdir()) == [] and not (tmp_path / "home" / ".cache").exists()
    assert sorted(p.name for p in root.iterdir()) == ["cache", "tmp", "versions"]


def test_two_versions_one_install_each_start_first_replace_and_a_bad_release_rolls_back(package_index, tmp_path):
    folder, url = package_index
    make_wheel(folder, "1.0")
    port = free_port()
    config = tmp_path / "services.toml"
    config.write_text(f"""
[supervise]
state_dir = ".state"
keep_versions = 2

[services.hello]
source = {{ pip = "{NAME}>=1.0", index = "{url}", poll = "1s" }}
command = ["sv-hello"]
env = {{ PORT = "{port}" }}
update = "start-first"
ready = {{ exec = ["sv-hello", "--check"], interval = "100ms" }}
backoff = {{ initial = "50ms", max = "200ms" }}
""")
    versions = tmp_path / ".state" / "sources" / "hello" / "versions"

    async def body():
        async with DaemonRun(config) as daemon:
            await daemon.until(lambda: daemon.of_type("ready", "hello"), timeout=60, message="1.0 ready")
            assert await asyncio.to_thread(get, f"http://127.0.0.1:{port}/") == "1.0"
            old = daemon.pid("hello")
            log = (tmp_path / ".state" / "logs" / "hello.log").read_text()
            assert f"from {versions / '1.0'}" in log  # the console script of the version's own venv

            make_wheel(folder, "1.1")  # published while 1.0 runs
            started = time.monotonic()
            new = await daemon.until(lambda: daemon.pid("hello") not in (None, old) and daemon.pid("hello"),
                                     timeout=60, message="1.1 replacing 1.0")
            await daemon.until(lambda: any(e.data.get("pid") == new for e in daemon.of_type("ready", "hello")),
                               timeout=30, message="1.1 ready")
            print(f"\nFIGURE pip: 1.1 published to 1.1 ready: {time.monotonic() - started:.2f}s")
            await daemon.until(lambda: get(f"http://127.0.0.1:{port}/") == "1.1", timeout=10, message="1.1 serving")
            ready_new = next(e for e in daemon.of_type("ready", "hello") if e.data["pid"] == new)
            stopping_old = next(e for e in daemon.of_type("stopping", "hello") if e.data["pid"] == old)
            assert ready_new.timestamp <= stopping_old.timestamp  # start-first: no gap
            assert daemon.controllers["hello"].artifact.version.startswith("1.1-")

            make_wheel(folder, "1.2", crash=True)  # a bad release
            rolled = await daemon.until(lambda: daemon.of_type("rolled-back", "hello"), timeout=60,
                                        message="the bad release rolled back")
            assert "exited during start-up" in rolled[0].data["reason"]
            assert "rolled back 1.2-" in (tmp_path / ".state" / "logs" / "hello.log").read_text()
            assert daemon.pid("hello") == new  # start-first: 1.1 never stopped
            assert await asyncio.to_thread(get, f"http://127.0.0.1:{port}/") == "1.1"
            # one install per version, two steps each (the venv, then pip install)
            log = (tmp_path / ".state" / "logs" / "hello.log").read_text()
            installs = [line for line in log.splitlines() if "] install " in line and line.endswith("succeeded")]
            assert [line.split("install ")[1].split("-")[0] for line in installs] == ["1.0", "1.0", "1.1", "1.1", "1.2", "1.2"]
            # keep_versions = 2: the oldest venv is pruned, the running one kept
            assert sorted(p.name for p in versions.iterdir()) == ["1.1", "1.2"]

    run(body())


def test_the_library_runs_a_pip_source_and_updates_it(package_index, tmp_path):
    from supervisor import LocalRuntime, RuntimeError_, Service

    folder, url = package_index
    make_wheel(folder, "1.0")
    port = free_port()
    with LocalRuntime(state_dir=tmp_path / "state") as runtime:
        # the build step runs with the version's venv first on PATH: its python has the package
        hello = Service("hello", metadata={"pip": f"{NAME}>=1.0", "index": url,
                                           "build": "python -c 'import sv_hello'"})
        runtime.create(hello, command=["sv-hello"], env={"PORT": str(port)})
        assert runtime.read(service="hello")[0].metadata["build"].startswith("1.0-")  # version: as created
        assert runtime.read(service="hello")[0].source == f"pip {NAME}>=1.0 from {url}"
        wait_until(lambda: get(f"http://127.0.0.1:{port}/") == "1.0", timeout=20, message="1.0 serving")
        make_wheel(folder, "1.1")
        runtime.update(hello)  # the original's update(): look for a newer version now
        wait_until(lambda: runtime.read(service="hello")[0].metadata["build"].startswith("1.1-"), timeout=30,
                   message="1.1 running")
        wait_until(lambda: get(f"http://127.0.0.1:{port}/") == "1.1", timeout=20, message="1.1 serving")
        # an image source is accepted and routed to containers; with no engine (or no registry)
        # here its create fails with one clear error, and the pip service keeps running
        with pytest.raises(RuntimeError_, match="fetch or build failed"):
            runtime.create(Service("web", metadata={"image": "nginx:1.25"}), command=["nginx"])
        runtime.delete(Service("web"))
        assert get(f"http://127.0.0.1:{port}/") == "1.1"
        runtime.delete(hello)
