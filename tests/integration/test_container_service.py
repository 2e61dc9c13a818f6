"""`supervise` runs container services end to end, against a real podman (tests/podman_engine.py):
an image service and a Dockerfile service on a git source run; a new commit rebuilds the image
and replaces the container; a broken Dockerfile keeps the old container serving; kill -9 of
supervise then a new one adopts (no duplicate, no lost line); a stop leaves no container.
Figures (build, start to ready, stop) are printed with ``-s``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import docker
import git

from conftest import free_port, http_get as get, terminate, wait_until, write

PY = sys.executable
SERVER = 'trap "exit 0" TERM; httpd -f -p 8080 -h /www & wait'
COUNTER = 'trap "exit 0" TERM; i=0; while true; do echo "out $i"; i=$((i+1)); usleep 20000; done'



def status(path: Path) -> dict[str, dict]:
    result = subprocess.run([PY, "-m", "supervisor", "status", "--json", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    rows = json.loads(result.stdout)["services"] if result.stdout.startswith("{") else []
    return {r["service"]: r for r in rows}


def ours(url: str, state_dir: Path) -> list[dict]:
    from supervisor.execute.executors.container import L_INSTANCE, instance_id

    client = docker.DockerClient(base_url=url, timeout=30)
    try:
        return client.api.containers(all=True, filters={"label": f"{L_INSTANCE}={instance_id(state_dir)}"})
    finally:
        client.close()


def counted(path: Path) -> list[int]:
    return [int(n) for n in re.findall(r"^out (\d+)$", path.read_text() if path.exists() else "", re.M)]


def test_supervise_runs_an_image_and_a_dockerfile_service_end_to_end(podman_api, base_image, tmp_path):
    repo = git.Repo.init(tmp_path / "app", initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "t").set_value("user", "email", "t@example.invalid")
    dockerfile = f'FROM {base_image["tag"]}\nCOPY page.html /www/index.html\nCMD ["/bin/sh", "-c", {json.dumps(SERVER)}]\n'

    def commit(page: str, text: str = dockerfile) -> None:
        write(tmp_path / "app" / "docker" / "Dockerfile", text)
        write(tmp_path / "app" / "docker" / "page.html", page)
        repo.index.add(["docker/Dockerfile", "docker/page.html"])
        repo.index.commit(page.strip())

    port = free_port()
    path = write(tmp_path / "services.toml", f"""
[supervise]
docker_host = "{podman_api}"
poll = "300ms"

[services.counter]
source = {{ image = "{base_image['tag']}" }}
command = ["/bin/sh", "-c", {json.dumps(COUNTER)}]
ready = {{ exec = ["true"] }}
stop_timeout = "5s"

[services.app]
source = {{ git = "{tmp_path / 'app'}", ref = "main" }}
build = {{ dockerfile = "Dockerfile", context = "docker" }}
ports = ["127.0.0.1:{port}:8080"]
ready = {{ http = "http://127.0.0.1:{port}/", interval = "100ms" }}
stop_timeout = "5s"
""")
    state_dir = tmp_path / ".supervise"
    log = tmp_path / "supervise.out"
    counter_log = state_dir / "logs" / "counter.log"
    commit("version one\n")

    def start() -> subprocess.Popen:
        return subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(log, "a"),
                                stderr=subprocess.STDOUT)

    def both_ready() -> bool:
        rows = status(path)
        return all(rows.get(n, {}).get("phase") == "ready" for n in ("counter", "app"))

    first = start()
    second = None
    try:
        started = time.monotonic()
        wait_until(lambda: get(f"http://127.0.0.1:{port}/") == "version one\n", timeout=60, message="app v1 serving")
        print(f"\nFIGURE supervise start -> Dockerfile built -> container serving: {time.monotonic() - started:.3f}s")
        wait_until(both_ready, timeout=30, message="both ready")
        assert len(ours(podman_api, state_dir)) == 2

        # a new commit: built beside the running container, then the container is replaced
        commit("version two\n")
        started = time.monotonic()
        wait_until(lambda: get(f"http://127.0.0.1:{port}/") == "version two\n", timeout=60, message="app v2 serving")
        print(f"FIGURE commit -> poll -> image build -> replaced: {time.monotonic() - started:.3f}s")
        wait_until(lambda: len(ours(podman_api, state_dir)) == 2, timeout=20, message="the old container removed")

        # a broken Dockerfile: the build fails, v2 keeps serving
        commit("version three\n", dockerfile.replace("COPY page.html", "COPY missing-file.html"))
        wait_until(lambda: "failed" in (status(path).get("app", {}).get("message") or "")
                   or "build-failed" in log.read_text() or "build failed" in log.read_text(),
                   timeout=60, message="the broken build reported")
        assert get(f"http://127.0.0.1:{port}/") == "version two\n"
        assert len(ours(podman_api, state_dir)) == 2

        # kill -9 of supervise, then a new one adopts both containers
        wait_until(lambda: len(counted(counter_log)) > 20, timeout=20, message="counter output")
        before = {c["Id"] for c in ours(podman_api, state_dir)}
        first.kill()
        first.wait(timeout=10)
        second = start()
        wait_until(both_ready, timeout=60, message="both adopted")
        assert {c["Id"] for c in ours(podman_api, state_dir)} == before  # 0 duplicates, 0 restarts
        assert "adopted 2 replicas" in log.read_text()
        seen = len(counted(counter_log))
        wait_until(lambda: len(counted(counter_log)) > seen + 20, timeout=20, message="more output after adoption")

        started = time.monotonic()
        terminate(second)
        print(f"FIGURE supervise stop (2 containers, SIGTERM honoured): {time.monotonic() - started:.3f}s")
        assert second.returncode == 0
        assert ours(podman_api, state_dir) == []  # a stop leaves no container
        numbers = counted(counter_log)
        assert set(numbers) == set(range(max(numbers) + 1)), "a line was lost"
        assert len(numbers) - len(set(numbers)) <= 2, "lines repeated"
    finally:
        terminate(first)
        if second is not None:
            terminate(second)
        repo.close()


def test_with_no_engine_a_container_service_fails_in_one_line_and_the_rest_runs(tmp_path):
    """No podman needed: the engine address names a socket nobody listens on."""
    import asyncio

    from harness import Stack
    from supervisor.observe.events import EventType

    async def main():
        async with Stack(tmp_path) as stack:
            await stack.apply(f'[supervise]\ndocker_host = "unix://{tmp_path}/none.sock"\n'
                              '[services.web]\nsource = { image = "nginx:1.25" }\n'
                              f'[services.local]\ncommand = ["{PY}", "-c", "import time; time.sleep(60)"]\n')
            await stack.until(lambda: stack.pid("local"))
            failed = [e for e in stack.events if e.type is EventType.FETCH_FAILED and e.service == "web"]
            assert failed and "cannot reach the container engine" in failed[0].data["error"]
            assert "\n" not in failed[0].data["error"]
            assert not stack.r.controllers["web"].replicas or stack.pid("web") is None

    asyncio.run(main())


def test_a_container_no_record_names_is_removed_before_anything_starts(podman_api, base_image, tmp_path):
    """A supervisor killed between starting a container and recording it: the next one finds it
    by our instance label and removes it, so the service does not run twice."""
    import asyncio

    from harness import Stack
    from supervisor.execute.executors.container import ContainerExecutor, ContainerSpec

    state_dir = tmp_path / ".supervise"
    client = ContainerExecutor(state_dir, docker_host=podman_api)
    stray = client.start(ContainerSpec(service="web", replica=0, version="old", image=base_image["tag"],
                                       command=("/bin/sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"), stop_timeout=5))
    client.close()
    text = (f'[supervise]\ndocker_host = "{podman_api}"\n[services.web]\nsource = {{ image = "{base_image["tag"]}" }}\n'
            'command = ["/bin/sh", "-c", "trap \'exit 0\' TERM; sleep 600 & wait"]\nstop_timeout = "5s"\n')

    async def main():
        async with Stack(tmp_path) as stack:
            desired = stack.load(text)
            from supervisor.reconciler import Reconciler

            stack.reconciler = Reconciler(desired, stack.notifier)
            await stack.r.start()
            assert await stack.r.adopt(desired) == 0
            assert stray not in {c["Id"] for c in ours(podman_api, state_dir)}
            await stack.r.apply(desired)
            await stack.until(lambda: stack.pid("web") is not None, timeout=30)
            assert len(ours(podman_api, state_dir)) == 1

    asyncio.run(main())
    assert ours(podman_api, state_dir) == []
