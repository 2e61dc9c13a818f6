"""The command line on a ``runtime = "kubernetes"`` file: ``render``, ``check``, and ``plan``,
``status``, ``logs`` and ``run`` against ``kube_double.ApiDouble``, which stands in for a
cluster (none can run here); ``KUBECONFIG`` names it, as it would name a real one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import kubernetes_validate
import pytest
import yaml
from conftest import wait_until
from kube_double import ApiDouble

from supervisor import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "services.toml"


def test_render_prints_valid_manifests_and_notes(capsys):
    assert cli.main(["render", "--config", str(EXAMPLE), "--tag", "v1"]) == 0
    out, err = capsys.readouterr()
    documents = list(yaml.safe_load_all(out))
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("Service", "hello"), ("Deployment", "hello"), ("Deployment", "worker")]
    for document in documents:
        kubernetes_validate.validate(document, "1.37.0", strict=True)
    image = documents[1]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.org/supervise/hello:v1"
    assert "note: services.worker: depends_on is not carried over" in err


def test_render_without_an_image_is_a_usage_error(capsys):
    assert cli.main(["render", "--config", str(EXAMPLE)]) == 2
    err = capsys.readouterr().err
    assert "services.hello: has no image for Kubernetes" in err and "--tag TAG" in err


def write(tmp_path: Path, namespace: str = "default", image: str = "registry.example/web:1", extra: str = "") -> Path:
    path = tmp_path / "services.toml"
    path.write_text(textwrap.dedent(f"""
        [supervise]
        runtime = "kubernetes"
        kubernetes = {{ namespace = "{namespace}" }}
        [services.web]
        command = ["httpd", "-f"]
        replicas = 2
        kubernetes = {{ image = "{image}", ports = ["80"] }}
    """) + extra)
    return path


def test_check_accepts_the_kubernetes_runtime_and_locates_mistakes(tmp_path, capsys):
    assert cli.main(["check", "--config", str(write(tmp_path))]) == 0
    path = write(tmp_path, extra='[services.db]\ncommand = "db"\nuser = "postgres"\nkubernetes = { image = "db:1" }\n')
    assert cli.main(["check", "--config", str(path)]) == 2
    assert f"{path}:11:1: services.db: user \"postgres\" has no numeric id for Kubernetes" in capsys.readouterr().err


@pytest.fixture
def double(tmp_path, monkeypatch):
    with ApiDouble() as double:
        monkeypatch.setenv("KUBECONFIG", str(double.kubeconfig(tmp_path / "kubeconfig")))
        yield double


def test_plan_status_and_logs_read_the_cluster(double, tmp_path, capsys):
    path = write(tmp_path)
    assert cli.main(["plan", "--config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["apply Service/web: missing", "apply Deployment/web: missing"]
    assert cli.main(["status", "--config", str(path)]) == 3  # nothing on the cluster yet
    assert "not on the cluster" in capsys.readouterr().out

    from supervisor.kube.cli import manifests
    from supervisor.kube.cluster import Cluster, connect
    from supervisor.kube.converge import Converger

    converger = Converger(Cluster(connect(), "default"))
    converger.step(manifests(path)[0])
    assert cli.main(["status", "--json", "--config", str(path)]) == 0
    rows = json.loads(capsys.readouterr().out)["services"]
    assert [(r["service"], r["phase"], r["version"]) for r in rows] == [("web", "ready", "1")] * 2
    assert cli.main(["logs", "-n", "1", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith("web-") and line.endswith(" | listening") for line in out)
    double.edit("deployments", "web", {"spec": {"replicas": 4}})
    assert cli.main(["plan", "--json", "--config", str(path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["against"] == "cluster" and plan["actions"] == [
        "drift Deployment/web: edited outside supervise (kubectl-edit changed spec.replicas); not overwritten"]


def test_an_unreachable_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    double = ApiDouble()  # bound, never served, then closed: nothing listens there
    monkeypatch.setenv("KUBECONFIG", str(double.kubeconfig(tmp_path / "kubeconfig")))
    double.server.server_close()
    assert cli.main(["status", "--config", str(write(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("supervise: status: cannot reach the API server at http://127.0.0.1:") and err.count("\n") == 1


@contextlib.contextmanager
def running(tmp_path: Path, interval: str) -> Iterator[tuple[Path, Path]]:
    """``supervise run`` on the example file with ``[kubernetes] interval``: yields (the file,
    the run's log); at the end SIGTERM, which must end it at once with status 0."""
    path = write(tmp_path)
    path.write_text(path.read_text().replace('namespace = "default"', f'namespace = "default", interval = "{interval}"'))
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run", "--config", str(path)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield path, log
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_run_converges_the_cluster_until_sigterm(double, tmp_path):
    with running(tmp_path, "100ms") as (path, log):
        wait_until(lambda: "ready web 1" in log.read_text(), timeout=20, message="the rollout to be reported ready")
        assert double.names("deployments") == ["web"] and double.names("services") == ["web"]
        path.write_text(path.read_text().replace("replicas = 2", "replicas = 3"))  # a save applies next pass
        wait_until(lambda: double.get("deployments", "web")["spec"]["replicas"] == 3, timeout=20,
                   message="the edited file to be applied")
    text = log.read_text()
    assert "create web 1: missing" in text and "update web 1: spec changed" in text
    assert double.names("deployments") == ["web"]  # the cluster's objects outlive the loop


def test_run_sees_a_rollout_end_through_a_watch_not_at_the_next_interval(double, tmp_path):
    """With an interval of an hour only the watch of our Deployments (watch=true, streamed by
    the double) can wake the loop to see the rollout complete; the SIGTERM at the end must
    end it at once, not after the hour (it wakes the loop)."""
    with running(tmp_path, "1h") as (path, log):
        wait_until(lambda: "ready web 1" in log.read_text(), timeout=20, message="the rollout to be reported ready")
        assert any(m == "GET" and "/deployments?" in p and "watch=" in p for m, p in double.requests)


def test_events_prints_the_clusters_events_as_json_lines(double, tmp_path):
    path = write(tmp_path)
    from supervisor.kube.cli import manifests
    from supervisor.kube.cluster import Cluster, connect
    from supervisor.kube.converge import Converger

    Converger(Cluster(connect(), "default")).step(manifests(path)[0])
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "events", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        event = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        proc.stdout.close(), proc.stderr.close()
    assert (event["type"], event["service"], event["reason"]) == ("update", "web", "ScalingReplicaSet")
    assert event["object"] == "Deployment/web" and event["message"].startswith("Scaled up replica set web-")


BAD_KUBECONFIGS = {
    "not YAML": "clusters: [\n",
    "a string": "just words\n",
    "the wrong shapes": "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                        "clusters: [{name: c, cluster: {server: 5}}]\nusers: [{name: u, user: {token: [1]}}]\n",
    "not UTF-8": b"\x00\xff\xfe",
}


@pytest.mark.parametrize("verb, kind", [(verb, "not YAML") for verb in ("plan", "status", "logs", "events", "run")]
                         + [("status", kind) for kind in BAD_KUBECONFIGS if kind != "not YAML"])
def test_a_broken_kubeconfig_is_one_line_not_a_traceback(tmp_path, verb, kind):
    """No cluster is involved: the kubeconfig is read (and refused) before any request."""
    kubeconfig = tmp_path / "kubeconfig"
    content = BAD_KUBECONFIGS[kind]
    kubeconfig.write_bytes(content if isinstance(content, bytes) else content.encode())
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    result = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(write(tmp_path)), verb],
                            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if not line.startswith("supervise | ")]
    assert len(errors) == 1 and errors[0].startswith(f"supervise: kubeconfig {kubeconfig}: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_kubeconfig_that_is_a_folder_says_kubeconfig(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path))
    assert cli.main(["status", "--config", str(write(tmp_path))]) == 1
    assert capsys.readouterr().err == f"supervise: kubeconfig {tmp_path}: cannot read it: Is a directory\n"


@pytest.mark.parametrize("verb", [["top"], ["status", "--watch"], ["status", "-w", "web"]])
def test_the_live_view_is_refused_in_one_line_on_kubernetes(tmp_path, verb):
    """``top`` used to wait for a local supervisor that never comes ("connecting", forever);
    no cluster is needed to refuse it."""
    result = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(write(tmp_path)), *verb],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    shown = "top" if verb == ["top"] else "status --watch"
    assert result.stderr == f"supervise: {shown} shows a local supervisor; on Kubernetes, use status (a row per pod)\n"
    assert result.stdout == ""


@pytest.mark.parametrize("verb, message", [
    (["run", "--exit-when-done"], "run --exit-when-done and --exit-when run local services; not on Kubernetes"),
    (["run", "--exit-when", "web"], "run --exit-when-done and --exit-when run local services; not on Kubernetes"),
    (["events", "--since", "10m"], "events --since replays the local supervisor's history; not on Kubernetes yet"),
])
def test_run_once_and_the_event_history_are_refused_in_one_line_on_kubernetes(tmp_path, verb, message):
    """Run once and ``events --since`` are the local supervisor's; no cluster is needed to refuse them."""
    result = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(write(tmp_path)), *verb],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and result.stderr == f"supervise: {message}\n" and result.stdout == ""
