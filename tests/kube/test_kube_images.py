"""A new version -> image build -> push to the registry named in the file -> Deployment rollout.

Real up to the registry: a real git repository in ``tmp_path`` is the source; the private podman
Engine API service (tests/podman_engine.py) builds its Dockerfile through the Docker SDK; the
Docker SDK pushes ``REGISTRY/NAME:VERSION`` to a real ``docker-registry`` on loopback
(tests/registry.py; podman is told in its registries.conf that 127.0.0.1 speaks plain HTTP);
the registry's v2 API lists the tag, and the image is pulled back from it. The cluster that
rolls the Deployment out is ``kube_double.ApiDouble``, an in-process API server that stands in
for a cluster (none can run on this machine).
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import docker
import pytest
from conftest import wait_until
from kube_double import ApiDouble
from podman_engine import BASE_IMAGE

from supervisor.observe.events import EventType, Notifier
from supervisor.kube import cli as kube_cli
from supervisor.kube.cluster import Cluster, connect
from supervisor.kube.converge import Converger

DOCKERFILE = f'FROM {BASE_IMAGE}\nCOPY version /www/version\nCMD ["httpd", "-f", "-p", "8000", "-h", "/www"]\n'


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def setup(tmp_path, podman_api, registry, monkeypatch):
    """A git source with a Dockerfile, a services.toml naming the registry, the API double."""
    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"Dockerfile": DOCKERFILE, "version": "1\n"}, "v1")
    path = tmp_path / "services.toml"
    path.write_text(textwrap.dedent(f"""
        [supervise]
        runtime = "kubernetes"
        state_dir = "{tmp_path / 'state'}"
        docker_host = "{podman_api}"
        kubernetes = {{ registry = "{registry.host}" }}

        [services.web]
        source = {{ git = "./app", ref = "main" }}
        build = {{ dockerfile = "Dockerfile" }}
        command = ["httpd", "-f", "-p", "8000", "-h", "/www"]
        kubernetes = {{ ports = ["80:8000"] }}
    """))
    notifier = Notifier()
    events: list = []
    notifier.add_listener(events.append)
    with ApiDouble() as double:
        monkeypatch.setenv("KUBECONFIG", str(double.kubeconfig(tmp_path / "kubeconfig")))
        images = kube_cli.images_for(path, notifier)
        assert images is not None
        images.clock = Clock()  # moved past [supervise] poll by the test, after each commit
        api = connect()
        try:
            yield {"repo": repo, "path": path, "images": images, "events": events, "double": double,
                   "converger": Converger(Cluster(api, "default"), notifier), "registry": registry,
                   "engine": podman_api}
        finally:
            images.publisher.close()
            api.close()


class Clock:
    """Monotonic seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def next_poll(images) -> None:
    images.clock.now += 61  # [supervise] poll defaults to 60 s


def deployed_image(double: ApiDouble) -> str:
    return double.get("deployments", "web")["spec"]["template"]["spec"]["containers"][0]["image"]


def test_each_commit_is_built_pushed_to_the_registry_and_rolled_out(setup):
    images, registry, double, converger = setup["images"], setup["registry"], setup["double"], setup["converger"]
    objects, _, _, held = kube_cli.built_manifests(setup["path"], images)
    first = images.publisher.published["web"]
    reference = f"{registry.host}/web:{first.version}"
    assert held == set() and first.reference == reference
    assert first.version.startswith(git(setup["repo"], "rev-parse", "HEAD")[:12])
    assert registry.tags("web") == [first.version]  # the registry's v2 API: GET /v2/web/tags/list
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == reference
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == first.version

    # pullable: drop every local name of the image, then pull it back from the registry
    client = docker.DockerClient(base_url=setup["engine"], timeout=120)
    try:
        built = client.images.get(reference).id
        for tag in client.images.get(reference).tags:
            client.images.remove(tag, force=True)
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(reference)
        assert client.images.pull(reference).id == built
    finally:
        client.close()

    converger.step(objects)
    assert deployed_image(double) == reference

    # a new commit: a new version built, pushed and rolled out
    commit(setup["repo"], {"version": "2\n"}, "v2")
    objects, _, _, _ = kube_cli.built_manifests(setup["path"], images)
    assert images.publisher.published["web"] == first  # the remote is asked once per poll, not per pass
    next_poll(images)
    objects, _, _, _ = kube_cli.built_manifests(setup["path"], images)
    second = images.publisher.published["web"]
    assert second.version != first.version
    assert registry.tags("web") == sorted([first.version, second.version])
    actions = converger.step(objects)
    assert [(a.kind, a.reason) for a in actions if a.target == ("Deployment", "web")] == [
        ("apply", f"new version {second.version}")]
    assert deployed_image(double) == f"{registry.host}/web:{second.version}"
    assert [(e.type, e.version) for e in setup["events"] if e.type in (EventType.BUILDING, EventType.BUILT)] == [
        (EventType.BUILDING, first.version), (EventType.BUILT, first.version),
        (EventType.BUILDING, second.version), (EventType.BUILT, second.version)]

    # nothing new: no build, no push, nothing to apply
    objects, _, _, _ = kube_cli.built_manifests(setup["path"], images)
    assert images.publisher.published["web"] == second
    assert [e.type for e in setup["events"]].count(EventType.BUILDING) == 2


def test_a_version_that_fails_to_build_is_reported_once_and_what_runs_stays(setup):
    """...and a restarted `supervise run` whose first build fails holds the service: its
    running Deployment is left alone, not deleted as if the service had left the file."""
    images, registry, double, converger = setup["images"], setup["registry"], setup["double"], setup["converger"]
    objects, _, _, _ = kube_cli.built_manifests(setup["path"], images)
    good = images.publisher.published["web"]
    converger.step(objects)
    commit(setup["repo"], {"Dockerfile": DOCKERFILE + 'RUN ["/bin/false"]\n'}, "broken")
    for _ in range(2):  # the failed version is not built again until the source changes
        next_poll(images)
        objects, _, _, held = kube_cli.built_manifests(setup["path"], images)
        assert held == set()
        converger.step(objects)
    failed = [e for e in setup["events"] if e.type == EventType.BUILD_FAILED]
    assert len(failed) == 1 and failed[0].data["stage"] == "build" and "image build failed" in failed[0].data["error"]
    assert registry.tags("web") == [good.version]
    assert deployed_image(double) == good.reference

    images.publisher.published.clear()  # as after a restart: nothing pushed by this process
    images.failed.clear()
    objects, _, _, held = kube_cli.built_manifests(setup["path"], images)
    assert held == {"web"} and not [o for o in objects if o["metadata"]["name"] == "web"]
    actions = converger.step(objects, held)
    assert not [a for a in actions if a.kind == "delete"]
    assert deployed_image(double) == good.reference and double.get("services", "web") is not None


def test_supervise_run_builds_pushes_and_applies(setup, tmp_path):
    """The same through the command line: `supervise run` on the file (a subprocess), the
    image pushed to the real registry, the Deployment on the double naming it."""
    import signal
    import sys

    path, registry, double = setup["path"], setup["registry"], setup["double"]
    path.write_text(path.read_text().replace(f'kubernetes = {{ registry = "{registry.host}" }}',
                                             f'kubernetes = {{ registry = "{registry.host}", interval = "100ms" }}'))
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run", "--config", str(path)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: double.get("deployments", "web") is not None, timeout=60,
                   message="the image built, pushed and applied")
        (version,) = registry.tags("web")
        assert deployed_image(double) == f"{registry.host}/web:{version}"
        wait_until(lambda: "ready web" in log.read_text(), timeout=20, message="the rollout reported")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log.read_text()
    assert f"building web {version}" in text and f"built web {version}: {registry.host}/web:{version}" in text, text
