"""Render (pure) and offline validation: every manifest is checked by kubernetes-validate in
strict mode (unknown fields are errors) against three Kubernetes versions."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import pytest

from supervisor.desired import config
from supervisor.desired.config import ConfigError
from supervisor.kube.render import RenderError, probe, render, to_yaml
from supervisor.kube.schema import KubeConfig, Port, parse_port

#: oldest in the package, the oldest the Kubernetes project still maintains (it supports the
#: three newest minor releases: newest - 2), and the newest in the package.
_ALL = sorted({v for v in kv_utils.all_versions()}, key=lambda v: tuple(int(x) for x in v.split(".")))
_NEWEST = _ALL[-1]
_MAINTAINED = _ALL[-3]
VERSIONS = (_ALL[0], _MAINTAINED, _NEWEST)

HEAD = """
[supervise]
runtime = "kubernetes"
kubernetes = { namespace = "shop", registry = "reg.example/shop", users = { app = 1000 } }
"""


def load(tmp_path: Path, body: str, head: str = HEAD):
    path = tmp_path / "services.toml"
    path.write_text(textwrap.dedent(head) + textwrap.dedent(body))
    return config.load(path, runtimes=config.RUNTIMES)


def container(manifests, name):
    deployment = next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == name)
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


FULL = """
[env]
PORT = "8000"
[services.api]
command = ["python", "-m", "api", "--port", "${PORT}"]
replicas = 2
user = "app"
update = "start-first"
stop_timeout = "2500ms"
ready = { http = "http://127.0.0.1:${PORT}/health?deep=1", interval = "500ms" }
live = { tcp = "127.0.0.1:8000", interval = "10s", timeout = "2s", retries = 5, start_period = "3s" }
kubernetes = { image = "reg.example/shop/api:1.4", ports = ["80:8000", "9090/udp"] }
[services.worker]
build = { dockerfile = "Dockerfile" }  # built and pushed to reg.example/shop per version
command = "exec worker --id ${REPLICA}"
shell = true
user = "1000:2000"
restart = "on-failure"
stop_signal = "SIGINT"
depends_on = { api = "ready" }
ready = { exec = ["test", "-f", "/tmp/ready"], timeout = "1500ms" }
"""


def test_a_service_becomes_a_service_and_a_deployment(tmp_path):
    rendered = render(load(tmp_path, FULL), versions={"worker": "abc123def456-0a1b2c3d"})
    kinds = [(m["kind"], m["metadata"]["name"]) for m in rendered.manifests]
    assert kinds == [("Service", "api"), ("Deployment", "api"), ("Deployment", "worker")]
    deployment, api = container(rendered.manifests, "api")
    assert deployment["metadata"]["namespace"] == "shop"
    assert deployment["metadata"]["labels"] == {"app.kubernetes.io/name": "api", "app.kubernetes.io/version": "1.4",
                                                "app.kubernetes.io/managed-by": "supervise"}
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["progressDeadlineSeconds"] == 600 and spec["revisionHistoryLimit"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "api", "app.kubernetes.io/managed-by": "supervise"}
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 3
    assert api["image"] == "reg.example/shop/api:1.4"
    assert (api["command"], api["args"]) == (["python"], ["-m", "api", "--port", "8000"])
    assert api["env"] == [{"name": "SUPERVISE_SERVICE", "value": "api"}, {"name": "PORT", "value": "8000"}]
    assert api["ports"] == [{"containerPort": 8000, "protocol": "TCP"}, {"containerPort": 9090, "protocol": "UDP"}]
    assert api["securityContext"] == {"runAsUser": 1000}
    assert api["readinessProbe"] == {"httpGet": {"path": "/health?deep=1", "port": 8000, "scheme": "HTTP"},
                                     "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 3}
    assert api["livenessProbe"] == {"tcpSocket": {"port": 8000}, "periodSeconds": 10, "timeoutSeconds": 2,
                                    "initialDelaySeconds": 3, "failureThreshold": 5}
    service = rendered.manifests[0]
    assert service["spec"]["ports"] == [
        {"name": "tcp-80", "port": 80, "targetPort": 8000, "protocol": "TCP"},
        {"name": "udp-9090", "port": 9090, "targetPort": 9090, "protocol": "UDP"}]
    worker_deployment, worker = container(rendered.manifests, "worker")
    assert worker["image"] == "reg.example/shop/worker:abc123def456-0a1b2c3d"
    assert worker_deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "abc123def456-0a1b2c3d"
    assert worker_deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert (worker["command"], worker["args"]) == (["/bin/sh"], ["-c", "exec worker --id ${REPLICA}"])
    assert worker["securityContext"] == {"runAsUser": 1000, "runAsGroup": 2000}
    assert worker["readinessProbe"]["exec"] == {"command": ["test", "-f", "/tmp/ready"]}
    assert worker["readinessProbe"]["timeoutSeconds"] == 2
    assert "ports" not in worker
    assert [n.split(":")[0] for n in rendered.notes] == ["services.worker"] * 4
    assert any("SIGINT" in n for n in rendered.notes) and any("depends_on" in n for n in rendered.notes)


@pytest.mark.parametrize("check, expected", [
    ({"kind": "http", "http": "http://localhost/", "interval": 0.2, "timeout": 0.1},
     {"httpGet": {"path": "/", "port": 80, "scheme": "HTTP"}, "periodSeconds": 1, "timeoutSeconds": 1}),
    ({"kind": "http", "http": "https://db.internal:8443/ok", "interval": 30, "timeout": 5},
     {"httpGet": {"path": "/ok", "port": 8443, "scheme": "HTTPS", "host": "db.internal"},
      "periodSeconds": 30, "timeoutSeconds": 5}),
    ({"kind": "tcp", "tcp": "[::1]:${PORT}", "interval": 1.5, "timeout": 1},
     {"tcpSocket": {"port": 7000}, "periodSeconds": 2, "timeoutSeconds": 1}),
    ({"kind": "tcp", "tcp": "10.0.0.5:5432", "interval": 1, "timeout": 1},
     {"tcpSocket": {"port": 5432, "host": "10.0.0.5"}, "periodSeconds": 1, "timeoutSeconds": 1}),
    ({"kind": "exec", "exec": ("check", "--port", "${PORT}"), "interval": 1, "timeout": 1, "retries": 1},
     {"exec": {"command": ["check", "--port", "7000"]}, "periodSeconds": 1, "timeoutSeconds": 1,
      "failureThreshold": 1}),
])
def test_probe_mapping(check, expected):
    expected.setdefault("failureThreshold", 3)
    assert probe(check, {"PORT": "7000"}) == expected


@pytest.mark.parametrize("text, port", [
    (8000, Port(8000, 8000)), ("8000", Port(8000, 8000)), ("80:8000", Port(80, 8000)),
    ("53:5353/udp", Port(53, 5353, "UDP")), ("9/SCTP", Port(9, 9, "SCTP")),
    ("0", None), ("70000", None), ("80:", None), ("a:b", None), (True, None), ("80/icmp", None),
])
def test_port_syntax(text, port):
    assert parse_port(text) == port


@pytest.mark.parametrize("user, ids", [
    ("1000", (1000, None)), ("1000:50", (1000, 50)), ("app", (1001, None)), ("app:7", (1001, 7)),
    ("root", (0, None)), ("nobody", (65534, None)), ("www-data", None), ("1000:staff", None),
])
def test_user_mapping(user, ids):
    assert KubeConfig(users={"app": 1001}).uid(user) == ids


@pytest.mark.parametrize("body, where, message", [
    ('[supervise]\nruntime = "kubernetes"\nkubernetes = { namespce = "x" }\n[services]\n',
     "3:", 'unknown key "namespce" (did you mean "namespace"?)'),
    ('[supervise]\nruntime = "kubernetes"\nkubernetes = { namespace = "Shop" }\n[services]\n',
     "3:", '"namespace" must be a Kubernetes namespace name'),
    ('[supervise]\nruntime = "kubernetes"\nkubernetes = { progress_deadline = "soon" }\n[services]\n',
     "3:", '"progress_deadline": bad duration'),
    ('[supervise]\nruntime = "kubernetes"\nkubernetes = { users = { app = -1 } }\n[services]\n',
     "3:", 'uid of "app" must be a whole number'),
    ('[supervise]\nruntime = "kubernetes"\n[services.api]\ncommand = "x"\nuser = "www"\n'
     'kubernetes = { image = "a:1" }\n', "5:1: services.api:", 'user "www" has no numeric id for Kubernetes'),
    ('[supervise]\nruntime = "kubernetes"\n[services.api]\ncommand = "x"\n',
     "3:1: services.api:", 'has no image for Kubernetes'),
    ('[supervise]\nruntime = "kubernetes"\n[services.Api_1]\ncommand = "x"\nkubernetes = { image = "a:1" }\n',
     "3:1: services.Api_1:", 'is not a Kubernetes object name'),
    ('[services.api]\ncommand = "x"\nkubernetes = { image = "a:1", ports = ["80:99999"] }\n',
     "3:", "bad port '80:99999'"),
    ('[services.api]\ncommand = "x"\nkubernetes = { imag = "a:1" }\n',
     "3:", 'unknown key "imag" (did you mean "image"?)'),
])
def test_kubernetes_keys_are_checked_with_locations(tmp_path, body, where, message):
    path = tmp_path / "services.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        config.load(path, runtimes=config.RUNTIMES)
    text = str(error.value)
    assert message in text and f"services.toml:{where}" in text, text


@pytest.mark.parametrize("head", [HEAD, ""], ids=["cluster-file", "one-service-on-a-cluster"])
def test_an_image_source_is_the_pods_image(tmp_path, head):
    """A user's report: ``source = { image = "redis:7" }`` was refused by render ("has no
    image for Kubernetes"), and with ``runtime = "kubernetes"`` as contradictory."""
    body = """
    [services.cache]
    source = { image = "docker.io/library/redis:7" }
    command = ["redis-server"]
    """ + ("" if head else 'runtime = "kubernetes"\n')
    desired = load(tmp_path, body, head=head)
    assert desired.kubernetes.image("cache") == "docker.io/library/redis:7"
    if head:
        _, cache = container(render(desired, versions={}).manifests, "cache")
        assert cache["image"] == "docker.io/library/redis:7"


def test_render_reports_what_cannot_be_mapped_when_the_file_runs_locally(tmp_path):
    desired = load(tmp_path, '[services.api]\ncommand = "x"\nuser = "www"\n', head="")
    with pytest.raises(RenderError) as error:
        render(desired)
    assert error.value.problems == [
        'services.api: has no image for Kubernetes: set kubernetes = { image = "..." }, or [supervise] '
        'kubernetes.registry and build = { dockerfile = "Dockerfile" } to build and push one per version',
        'services.api: user "www" has no numeric id for Kubernetes: write a uid like "1000" or map it in '
        '[supervise] kubernetes.users = { www = 1000 }']
    assert [keys for keys, _ in error.value.located] == [("services", "api"), ("services", "api", "user")]


NO_IMAGE = 'has no image for Kubernetes: nothing builds one to push to 127.0.0.1:5000'


@pytest.mark.parametrize("verb", [["check"], ["render"], ["render", "--tag", "v1"], ["plan", "--json"]])
def test_a_service_without_an_image_is_refused_by_check_render_and_plan_at_its_table(tmp_path, capsys, verb):
    """check used to pass a cluster service whose image nothing builds, while render and plan
    refused it at line 0: now all three give check's located message (plan before it dials
    the cluster)."""
    from supervisor import cli

    path = tmp_path / "services.toml"
    path.write_text('[supervise]\nruntime = "kubernetes"\nkubernetes = { registry = "127.0.0.1:5000" }\n\n'
                    '[services.api]\ncommand = ["api"]\n')
    assert cli.main([*verb[:1], "--config", str(path), *verb[1:]]) == 2
    out, err = capsys.readouterr()
    if verb[-1] == "--json":
        (error,) = json.loads(out)["errors"]
        assert (error["line"], error["col"], error["service"]) == (5, 1, "api") and NO_IMAGE in error["message"]
    else:
        assert f"services.toml:5:1: services.api: {NO_IMAGE}" in err, err


def test_render_without_a_version_locates_the_service(tmp_path, capsys):
    """A local file's service whose image is REGISTRY/NAME:VERSION: render needs the version."""
    from supervisor import cli

    path = tmp_path / "services.toml"
    path.write_text('[supervise]\nkubernetes = { registry = "127.0.0.1:5000" }\n[services.api]\ncommand = ["api"]\n')
    assert cli.main(["render", "--config", str(path)]) == 2
    assert "services.toml:3:1: services.api: has no image for Kubernetes: name the version pushed to 127.0.0.1:5000 " \
           "(`supervise render --tag TAG`)" in capsys.readouterr().err


def manifests_to_validate(tmp_path):
    rendered = render(load(tmp_path, FULL), versions={"worker": "abc123def456-0a1b2c3d"})
    example = config.load(Path(__file__).resolve().parents[2] / "examples" / "services.toml",
                          runtimes=config.RUNTIMES)
    return list(rendered.manifests) + list(render(example, versions={"hello": "v1", "worker": "v1"}).manifests)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(tmp_path, version):
    manifests = manifests_to_validate(tmp_path)
    assert len(manifests) >= 4
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)  # raises ValidationError


def test_the_validator_is_not_a_no_op(tmp_path):
    manifest = manifests_to_validate(tmp_path)[1]
    manifest["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, _NEWEST, strict=True)


def test_yaml_round_trips(tmp_path):
    import yaml

    manifests = manifests_to_validate(tmp_path)
    assert list(yaml.safe_load_all(to_yaml(manifests))) == manifests


def test_every_kubernetes_key_has_a_man_page_entry():
    from supervisor.kube import schema

    roff = (Path(__file__).resolve().parents[2] / "man" / "services.toml.5").read_text()
    section = roff.split(".SH KUBERNETES\n", 1)[1].split("\n.SH ", 1)[0]
    for key in schema.SETTINGS_KEYS + schema.SERVICE_KEYS:
        assert f".TP\n.B {key}\n" in section, key
