"""A local file with one service on Kubernetes (``runtime = "kubernetes"`` on the service),
beside a local one, through the engine's executor seam (supervisor.executors.kubernetes).

The local service is a real process (python's http.server) started by the real engine; the
cluster is ``kube_double.ApiDouble``, an in-process API server that stands in for a cluster
(none can run on this machine), reached through the real ``kubernetes`` client.
"""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from conftest import free_port, http_get, wait_until
from integration.harness import PY, Stack
from kube_double import ApiDouble

from supervisor.control.verbs.status import as_asked
from supervisor.desired import config
from supervisor.observe import views
from supervisor.desired.config import ConfigError
from supervisor.desired.model import Phase


def mixed(port: int, image: str = "registry.example/web:1", replicas: int = 2, web: bool = True) -> str:
    text = textwrap.dedent(f"""
        [supervise]
        kubernetes = {{ interval = "100ms" }}

        [services.local]
        command = ["{PY}", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
        ready = {{ http = "http://127.0.0.1:{port}/", interval = "100ms" }}
    """)
    if web:
        text += textwrap.dedent(f"""
            [services.web]
            runtime = "kubernetes"
            command = ["httpd", "-f", "-p", "8000"]
            replicas = {replicas}
            ready = {{ http = "http://127.0.0.1:8000/", interval = "100ms" }}
            kubernetes = {{ image = "{image}", ports = ["80:8000"] }}
        """)
    return text


@pytest.fixture
def double(tmp_path, monkeypatch):
    with ApiDouble() as double:
        monkeypatch.setenv("KUBECONFIG", str(double.kubeconfig(tmp_path / "kubeconfig")))
        yield double


def image_of(double: ApiDouble) -> str | None:
    found = double.get("deployments", "web")
    return found["spec"]["template"]["spec"]["containers"][0]["image"] if found else None


def test_an_unreachable_cluster_is_retried_and_reported_once_while_local_services_run(tmp_path, double):
    port = free_port()
    double.down = True

    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(mixed(port))
            await stack.until(lambda: stack.phase("local") is Phase.READY, message="the local service to be ready")
            pid = stack.pid("local")
            assert http_get(f"http://127.0.0.1:{port}/") is not None
            # retried with backoff (1 s, then 2 s): at least two attempts, one report
            await stack.until(lambda: len(double.requests) >= 2, timeout=10, message="a retry")
            assert len(stack.of_type("cluster-unreachable")) == 1
            assert stack.phase("local") is Phase.READY
            assert stack.pid("local") == pid
            # what the Deployment does is not known: status says so (not "running", pid 0) and exits 3
            rows = views.status_rows(stack.r.observe(), [], 0.0)
            web = [(r["phase"], r["pid"], r["message"]) for r in rows if r["service"] == "web"]
            assert web == [("unknown", None, "cluster unreachable: state unknown (retrying)")], web
            assert not as_asked(rows) and as_asked([r for r in rows if r["service"] == "local"])

            double.down = False  # the cluster is back: applied, rolled out, reported once
            await stack.until(lambda: stack.phase("web") is Phase.READY, timeout=15, message="web to be ready")
            rows = views.status_rows(stack.r.observe(), [], 0.0)
            assert [(r["phase"], r["pid"]) for r in rows if r["service"] == "web"] == [("ready", None)]
            assert as_asked(rows)
            assert image_of(double) == "registry.example/web:1"
            assert double.get("deployments", "web")["spec"]["replicas"] == 2
            assert double.get("services", "web") is not None
            assert len(stack.of_type("cluster-reachable")) == 1
            assert len(stack.of_type("cluster-unreachable")) == 1
            assert stack.pid("local") == pid and http_get(f"http://127.0.0.1:{port}/") is not None

    asyncio.run(asyncio.wait_for(scenario(), 60))
    # a supervisor stop ends the local process (the leak check) and leaves the cluster as it is
    assert image_of(double) == "registry.example/web:1"


def test_a_change_rolls_out_and_a_removed_service_is_deleted_from_the_cluster(tmp_path, double):
    port = free_port()

    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(mixed(port))
            await stack.until(lambda: stack.phase("web") is Phase.READY and stack.phase("local") is Phase.READY,
                              timeout=15, message="both services ready")
            pid = stack.pid("local")
            await stack.apply(mixed(port, image="registry.example/web:2", replicas=3))
            await stack.until(lambda: image_of(double) == "registry.example/web:2", timeout=10,
                              message="the new image applied")
            assert double.get("deployments", "web")["spec"]["replicas"] == 3
            assert stack.pid("local") == pid  # a change of the cluster service leaves the local one alone
            assert not [r for r in double.requests if r[0] == "DELETE"]  # a restart re-applies, never deletes
            await stack.apply(mixed(port, web=False))
            await stack.until(lambda: double.get("deployments", "web") is None and double.get("services", "web") is None,
                              timeout=10, message="web's objects deleted")
            assert stack.pid("local") == pid

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_rollout_is_seen_when_it_completes_through_a_watch_not_at_the_next_interval(tmp_path, double):
    """With an interval of an hour only the watch of our Deployments (watch=true, served by
    the double as a chunked stream) can tell the executor that the rollout completed."""
    port = free_port()

    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(mixed(port).replace('kubernetes = { interval = "100ms" }', 'kubernetes = { interval = "1h" }'))
            await stack.until(lambda: stack.phase("web") is Phase.READY, timeout=15, message="web ready")
            assert any(m == "GET" and "/deployments?" in p and "watch=" in p for m, p in double.requests)
            double.edit("deployments", "web", {"spec": {"replicas": 5}})  # kubectl scale: drift, seen at once
            await stack.until(lambda: stack.of_type("drift", "web"), timeout=15, message="the drift reported")

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_check_locates_a_cluster_service_that_cannot_run_there(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text('[services.local]\ncommand = ["x"]\n\n[services.Web]\nruntime = "kubernetes"\ncommand = ["x"]\n')
    with pytest.raises(ConfigError) as error:
        config.load(path)
    text = str(error.value)
    assert "services.toml:4:1: services.Web: \"Web\" is not a Kubernetes object name" in text
    assert "services.toml:4:1: services.Web: has no image for Kubernetes" in text


def test_a_kubernetes_file_still_refuses_a_local_service(tmp_path):
    path = tmp_path / "services.toml"
    path.write_text('[supervise]\nruntime = "kubernetes"\n[services.a]\ncommand = ["x"]\nruntime = "local"\n'
                    'kubernetes = { image = "a:1" }\n')
    with pytest.raises(ConfigError, match='services.a: runtime "local" in a file whose runtime is "kubernetes"'):
        config.load(path, runtimes=config.RUNTIMES)


def test_a_built_cluster_service_beside_a_local_one_is_pushed_and_rolled_out_per_commit(
        tmp_path, double, podman_api, registry):
    """The image of the cluster service is built for real (the private podman), pushed to a real
    docker-registry on loopback, and the Deployment on the double names that exact reference;
    a new commit of its source rolls out a new one, the local process untouched."""
    from test_kube_images import DOCKERFILE, commit, git

    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    first = commit(repo, {"Dockerfile": DOCKERFILE, "version": "1\n"}, "v1")
    port = free_port()
    text = mixed(port, web=False).replace(
        'kubernetes = { interval = "100ms" }',
        f'docker_host = "{podman_api}"\nkubernetes = {{ interval = "100ms", registry = "{registry.host}" }}')
    text += textwrap.dedent("""
        [services.web]
        runtime = "kubernetes"
        source = { git = "./app", ref = "main" }
        build = { dockerfile = "Dockerfile" }
        ready = { http = "http://127.0.0.1:8000/version", interval = "100ms" }   # ready: rolled out
        kubernetes = { ports = ["80:8000"] }
    """)

    async def scenario() -> None:
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.phase("web") is Phase.READY and stack.phase("local") is Phase.READY,
                              timeout=60, message="the image built and pushed, the rollout complete")
            version = stack.r.controllers["web"].artifact.version
            assert version.startswith(first[:12])
            assert registry.tags("web") == [version]
            assert image_of(double) == f"{registry.host}/web:{version}"
            pid = stack.pid("local")

            second = commit(repo, {"version": "2\n"}, "v2")
            stack.r.revisions["web"] = second  # what the git poller reports
            await stack.apply(text)
            await stack.until(lambda: (image_of(double) or "").endswith(second[:12] + version[12:]), timeout=60,
                              message="the new version rolled out")
            assert len(registry.tags("web")) == 2 and stack.pid("local") == pid

    asyncio.run(asyncio.wait_for(scenario(), 150))


def test_a_restarted_supervisor_adopts_the_cluster_service_as_it_is(tmp_path, double):
    """SIGKILL the supervisor (a subprocess; the local process survives, the Deployment stays),
    start it again: the cluster service is adopted and ready from the cluster's word, nothing
    is deleted or re-applied, and the local process is the same one."""
    import json
    import subprocess
    import sys

    from conftest import terminate

    path = tmp_path / "services.toml"
    path.write_text(mixed(free_port()))
    out = tmp_path / "out.txt"

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "supervisor", "--config", str(path)], stdout=open(out, "a"),
                                stderr=subprocess.STDOUT)

    def phases() -> dict[str, tuple[str, int | None]]:
        result = subprocess.run([sys.executable, "-m", "supervisor", "status", "--json", "--config", str(path)],
                                capture_output=True, text=True, timeout=30)
        rows = json.loads(result.stdout)["services"] if result.stdout.startswith("{") else []
        return {r["service"]: (r["phase"], r["pid"]) for r in rows}

    def both_ready() -> dict | None:
        found = phases()
        return found if {found.get("web", ("",))[0], found.get("local", ("",))[0]} == {"ready"} else None

    first = start()
    second = None
    try:
        before = wait_until(both_ready, timeout=30, message="both services ready")
        first.kill()
        first.wait(10)
        changes = len([r for r in double.requests if r[0] in ("PATCH", "DELETE")])
        second = start()
        after = wait_until(both_ready, timeout=30, message="both services adopted and ready")
        assert after["local"] == before["local"]  # the same process
        assert len([r for r in double.requests if r[0] in ("PATCH", "DELETE")]) == changes
        assert image_of(double) == "registry.example/web:1"
    finally:
        terminate(first)
        if second is not None:
            terminate(second)


def test_render_of_a_mixed_file_renders_only_its_cluster_services(tmp_path):
    """``supervise render`` (and ``--tag``) on a local file with one ``runtime = "kubernetes"``
    service: that service's objects only; the local one runs here, it has no image and is
    neither refused nor turned into a Deployment of an image nothing builds."""
    import subprocess

    path = tmp_path / "services.toml"
    path.write_text(textwrap.dedent('''\
        [supervise]
        kubernetes = { namespace = "shop", registry = "registry.example.org/shop" }
        [services.local]
        command = ["sleep", "100"]
        [services.api]
        runtime = "kubernetes"
        command = ["api", "--port", "8000"]
        kubernetes = { image = "registry.example.org/shop/api:1.4", ports = ["80:8000"] }
        '''))
    for extra in ((), ("--tag", "v1")):
        result = subprocess.run([PY, "-m", "supervisor", "render", "--config", str(path), *extra],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        names = [line.split(":", 1)[1].strip() for line in result.stdout.splitlines() if line.startswith("  name:")]
        assert set(names) == {"api"}, result.stdout
