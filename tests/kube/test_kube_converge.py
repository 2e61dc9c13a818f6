"""Apply, rollout, rollback, drift, deletion, an unreachable cluster and the read-back, through
the real ``kubernetes`` client.

Here they run against ``kube_double.ApiDouble``, an in-process HTTP server that stands in for
a cluster (none can run on this machine). The same tests run against a real cluster when
``KUBECONFIG`` points at one (param ``cluster``): each then works in a namespace of its own,
created and deleted by the test, a broken version is an image that cannot be pulled, and the
deadline verdict comes from the real Deployment controller. Without ``KUBECONFIG`` that param is
skipped with that reason, never silently.
"""

from __future__ import annotations

import os
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from conftest import wait_until
from kube_double import ApiDouble

from supervisor.desired import config
from supervisor.observe.events import EventType, Notifier
from supervisor.kube import readback
from supervisor.kube.cluster import Cluster, ClusterError, connect
from supervisor.kube.converge import Converger
from supervisor.kube.policy import GRACE
from supervisor.kube.render import render

GOOD_IMAGE_REAL = "registry.k8s.io/pause:3.9"
DEADLINE = 10


class Backend:
    """The double, or a real cluster (a fresh namespace), behind the same few verbs."""

    def __init__(self, kind: str, tmp_path: Path):
        self.kind = kind
        self.double: ApiDouble | None = None
        if kind == "double":
            self.double = ApiDouble().__enter__()
            self.namespace = "default"
            kubeconfig = self.double.kubeconfig(tmp_path / "kubeconfig")
            self.api = connect(kubeconfig=str(kubeconfig))
        else:
            self.namespace = f"supervise-test-{uuid.uuid4().hex[:8]}"
            self.api = connect()
            from kubernetes import client

            client.CoreV1Api(self.api).create_namespace({"metadata": {"name": self.namespace}})
        self.cluster = Cluster(self.api, self.namespace)

    def close(self) -> None:
        if self.double is not None:
            self.double.__exit__()
        else:
            from kubernetes import client

            client.CoreV1Api(self.api).delete_namespace(self.namespace)
        self.api.close()

    def image(self, version: str, broken: bool = False) -> str:
        if self.kind == "cluster":
            return f"registry.invalid/api:{version}" if broken else GOOD_IMAGE_REAL
        image = f"registry.example/api:{version}"
        if broken:
            self.double.broken_images.add(image)
        return image

    def expire(self, name: str) -> None:
        """The deadline passes: the double is told; a real controller is waited for."""
        if self.double is not None:
            self.double.expire(name)
        else:
            wait_until(lambda: any(c.get("reason") == "ProgressDeadlineExceeded" for c in
                                   (self._get(name).get("status", {}).get("conditions") or [])),
                       timeout=DEADLINE + 60, interval=1, message="ProgressDeadlineExceeded")

    def edit_replicas(self, name: str, replicas: int) -> None:
        """What ``kubectl edit`` or ``kubectl scale`` does: an update by another field manager."""
        from kubernetes import client

        client.AppsV1Api(self.api).patch_namespaced_deployment(
            name, self.namespace, {"spec": {"replicas": replicas}}, field_manager="kubectl-edit",
            _content_type="application/merge-patch+json")

    def _get(self, name: str) -> dict:
        return next(o for o in self.cluster.owned() if o["kind"] == "Deployment" and o["metadata"]["name"] == name)

    def deployment(self, name: str) -> dict:
        return self._get(name)

    def names(self, plural: str) -> list[str]:
        return self.double.names(plural, self.namespace) if self.double else []


@pytest.fixture(params=["double", "cluster"])
def backend(request, tmp_path):
    if request.param == "cluster" and not os.environ.get("KUBECONFIG"):
        pytest.skip("no Kubernetes cluster: KUBECONFIG is not set (these tests ran against the in-process API double)")
    backend = Backend(request.param, tmp_path)
    yield backend
    backend.close()


class Clock:
    """The converger's clock, moved by the test (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manifests(tmp_path: Path, backend: Backend, version: str, broken: bool = False, replicas: int = 2,
              services: str = "api") -> list[dict]:
    """services.toml -> config -> render: the whole chain, as `supervise render` runs it."""
    body = textwrap.dedent(f"""
        [supervise]
        runtime = "kubernetes"
        kubernetes = {{ namespace = "{backend.namespace}", progress_deadline = "{DEADLINE}s" }}
    """)
    for name in services.split():
        body += textwrap.dedent(f"""
            [services.{name}]
            command = ["/pause"]
            replicas = {replicas}
            update = "start-first"
            kubernetes = {{ image = "{backend.image(version, broken)}", ports = ["80:8000"] }}
        """)
    path = tmp_path / "services.toml"
    path.write_text(body)
    desired = config.load(path, runtimes=config.RUNTIMES)
    return list(render(desired, versions={n: version for n in services.split()}).manifests)


def converger(backend: Backend, clock: Clock | None = None):
    notifier = Notifier()
    events: list = []
    notifier.add_listener(events.append)
    return Converger(backend.cluster, notifier, clock=clock or Clock()), events


def until_available(conv: Converger, desired, events, backend: Backend) -> None:
    """Passes until the rollout is reported ready (at once on the double; bounded on a cluster)."""
    wait_until(lambda: conv.step(desired) is not None and any(e.type == EventType.READY for e in events),
               timeout=5 if backend.double else 120, interval=0.01 if backend.double else 1,
               message="the rollout to become available")


def types(events) -> list[str]:
    return [e.type.value for e in events]


def test_apply_then_available_then_nothing_to_do(backend, tmp_path):
    conv, events = converger(backend)
    desired = manifests(tmp_path, backend, "v1")
    actions = conv.step(desired)
    assert [(a.kind, a.target) for a in actions] == [("apply", ("Service", "api")), ("apply", ("Deployment", "api"))]
    until_available(conv, desired, events, backend)
    assert types(events)[:2] == ["create", "create"] and "ready" in types(events)
    deployment = backend.deployment("api")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"
    assert {m["manager"] for m in deployment["metadata"]["managedFields"]} >= {"supervise"}
    assert conv.records["api"].good is not None
    before = len(events)
    assert conv.step(desired) == [] and conv.plan(desired) == []  # converged: no apply, no event
    assert len(events) == before
    if backend.double:  # the real client spoke server-side apply with our field manager, unforced
        patches = [p for m, p in backend.double.requests if m == "PATCH"]
        assert patches and all("fieldManager=supervise" in p and "force=false" in p.lower() for p in patches)


def test_a_new_version_rolls_out(backend, tmp_path):
    conv, events = converger(backend)
    until_available(conv, manifests(tmp_path, backend, "v1"), events, backend)
    events.clear()
    desired = manifests(tmp_path, backend, "v2")
    actions = conv.step(desired)
    assert [(a.kind, a.reason) for a in actions if a.target[0] == "Deployment"] == [("apply", "new version v2")]
    until_available(conv, desired, events, backend)
    assert types(events)[:2] == ["update", "update"]
    assert conv.records["api"].good["metadata"]["labels"]["app.kubernetes.io/version"] == "v2"
    assert readback.status_rows([backend.deployment("api")], backend.cluster.pods())[0]["version"] == "v2"


def test_a_version_that_never_becomes_available_is_rolled_back_and_not_retried(backend, tmp_path):
    clock = Clock()
    conv, events = converger(backend, clock)
    good = manifests(tmp_path, backend, "v1")
    until_available(conv, good, events, backend)
    events.clear()
    bad = manifests(tmp_path, backend, "v2", broken=True)
    conv.step(bad)
    clock.now += 1
    assert [a.kind for a in conv.step(bad)] == ["wait"]
    backend.expire("api")  # progressDeadlineSeconds passed: the controller's verdict
    clock.now += DEADLINE
    actions = conv.step(bad)
    assert [(a.kind, a.version) for a in actions] == [("rollback", "v1")]
    [rolled] = [e for e in events if e.type == EventType.ROLLED_BACK]
    assert rolled.version == "v1" and rolled.data["from"] == "v2" and "ProgressDeadlineExceeded" not in rolled.data["reason"]
    assert "timed out progressing" in rolled.data["reason"] or "deadline" in rolled.data["reason"]
    deployment = backend.deployment("api")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"
    until_available(conv, bad, events, backend)
    # the failed version is kept out until the file changes: no second apply of v2
    for _ in range(3):
        clock.now += 100
        assert [a.kind for a in conv.step(bad)] == ["keep"]
    assert backend.deployment("api")["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"
    assert types(events).count("rolled-back") == 1
    # a fixed version goes out
    fixed = manifests(tmp_path, backend, "v3")
    assert [a.kind for a in conv.step(fixed) if a.target[0] == "Deployment"] == ["apply"]


def test_a_restarted_supervise_rolls_back_and_holds_as_the_one_before_would(backend, tmp_path):
    """The good spec and the failed hash ride on the Deployment (annotations), not on this
    machine: a new Converger with empty records still knows them."""
    first, events = converger(backend)
    until_available(first, manifests(tmp_path, backend, "v1"), events, backend)
    bad = manifests(tmp_path, backend, "v2", broken=True)
    first.step(bad)
    backend.expire("api")
    second, events = converger(backend)  # supervise restarted mid-rollout
    actions = second.step(bad)
    assert [(a.kind, a.version) for a in actions] == [("rollback", "v1")]
    assert backend.deployment("api")["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"
    until_available(second, bad, events, backend)
    third, events = converger(backend)  # and again, after the rollback
    assert [a.kind for a in third.step(bad)] == ["keep", "available"]  # it finds v1 running and good
    assert [a.kind for a in third.step(bad)] == ["keep"]
    assert backend.deployment("api")["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"


def test_plan_asks_the_server_about_objects_that_are_not_ours(backend, tmp_path):
    """A Deployment of the same name applied by someone else (no label of ours): only the
    server knows the conflict; plan's dry run shows it as drift and applies nothing."""
    from kubernetes import client

    desired = manifests(tmp_path, backend, "v1")
    theirs = manifests(tmp_path, backend, "v0")[1]
    theirs["metadata"]["labels"] = {"app": "api"}
    client.AppsV1Api(backend.api).patch_namespaced_deployment(
        "api", backend.namespace, theirs, field_manager="helm", _content_type="application/apply-patch+yaml")
    conv, events = converger(backend)
    lines = [a.line() for a in conv.plan(desired)]
    assert lines[0] == "apply Service/api: missing"
    assert lines[1].startswith('drift Deployment/api: Apply failed with') and 'conflict with "helm"' in lines[1]
    if backend.double:
        assert backend.names("services") == []  # a dry run stores nothing


def test_our_own_clock_rolls_back_when_no_verdict_comes(backend, tmp_path):
    if backend.kind == "cluster":
        pytest.skip("a real controller always gives its verdict; the fallback is for silent ones")
    clock = Clock()
    conv, events = converger(backend, clock)
    until_available(conv, manifests(tmp_path, backend, "v1"), events, backend)
    bad = manifests(tmp_path, backend, "v2", broken=True)
    conv.step(bad)
    clock.now += DEADLINE + GRACE - 1
    assert [a.kind for a in conv.step(bad)] == ["wait"]
    clock.now += 2
    actions = conv.step(bad)
    assert [a.kind for a in actions] == ["rollback"]
    assert f"not available {DEADLINE}s after it was applied" in actions[0].reason


def test_a_first_version_that_fails_is_reported_once_and_left(backend, tmp_path):
    clock = Clock()
    conv, events = converger(backend, clock)
    bad = manifests(tmp_path, backend, "v1", broken=True)
    conv.step(bad)
    backend.expire("api")
    for _ in range(3):
        clock.now += DEADLINE + GRACE
        assert [a.kind for a in conv.step(bad)] == ["failed"]
    failed = [e for e in events if e.type == EventType.FAILED]
    assert len(failed) == 1 and "no good version to roll back to" in failed[0].data["reason"]
    rows = readback.status_rows([backend.deployment("api")], backend.cluster.pods())
    assert {r["phase"] for r in rows} <= {"backoff", "failed", "starting", "pending"}
    if backend.double:
        assert rows[0]["restarts"] == 3 and rows[0]["last_exit"] == "exit 1 (Error)"
        assert rows[0]["message"].startswith("CrashLoopBackOff")


def test_an_object_edited_by_another_manager_is_reported_not_overwritten(backend, tmp_path):
    conv, events = converger(backend)
    desired = manifests(tmp_path, backend, "v1")
    until_available(conv, desired, events, backend)
    events.clear()
    backend.edit_replicas("api", 5)
    [line] = [a.line() for a in conv.plan(desired)]
    assert line == "drift Deployment/api: edited outside supervise (kubectl-edit changed spec.replicas); not overwritten"
    for _ in range(3):
        conv.step(desired)
    assert backend.deployment("api")["spec"]["replicas"] == 5
    drift = [e for e in events if e.type == EventType.DRIFT]
    assert len(drift) == 1 and drift[0].data["managers"] == {"kubectl-edit": ["spec.replicas"]}
    # the file changing something else is still applied? No: the object is held until the drift is resolved
    backend.edit_replicas("api", 2)  # put back by hand: the same value is no conflict
    assert [a.kind for a in conv.plan(desired)] == []


def test_removing_a_service_deletes_only_what_we_own(backend, tmp_path):
    conv, events = converger(backend)
    both = manifests(tmp_path, backend, "v1", services="api web")
    conv.step(both)
    # an object with our label but applied by someone else (helm, say) is not ours to delete
    foreign = manifests(tmp_path, backend, "v1", services="db")
    from kubernetes import client

    client.AppsV1Api(backend.api).patch_namespaced_deployment(
        "db", backend.namespace, foreign[1], field_manager="helm", _content_type="application/apply-patch+yaml")
    only_api = manifests(tmp_path, backend, "v1", services="api")
    actions = conv.step(only_api)
    assert sorted((a.kind, a.target) for a in actions if a.kind == "delete") == [
        ("delete", ("Deployment", "web")), ("delete", ("Service", "web"))]
    names = sorted(o["metadata"]["name"] for o in backend.cluster.owned() if o["kind"] == "Deployment")
    assert names == ["api", "db"]
    assert [e.service for e in events if e.type == EventType.DELETE] == ["web", "web"]


def test_an_unreachable_cluster_is_retried_with_backoff_and_reported_once(backend, tmp_path):
    if backend.kind == "cluster":
        pytest.skip("needs a closed port standing for the cluster; the double provides one")
    clock = Clock()
    conv, events = converger(backend, clock)
    desired = manifests(tmp_path, backend, "v1")
    backend.double.down = True
    for _ in range(6):  # 3 s of passes: attempts at 0 s and 1 s, then the next is due at 3 s
        conv.step(desired)
        clock.now += 0.5
    assert len(backend.double.requests) == 2
    assert types(events) == ["cluster-unreachable"]
    assert "cannot reach the API server" in events[0].data["error"]
    backend.double.down = False
    clock.now = conv.reachability.retry_at
    actions = conv.step(desired)
    assert [a.kind for a in actions] == ["apply", "apply"]
    assert types(events)[-1] == "cluster-reachable" and types(events).count("cluster-unreachable") == 1


def test_read_back_status_events_logs_and_the_library_records(backend, tmp_path):
    if backend.kind == "cluster":
        pytest.skip("the pause image writes no log lines to read back")
    conv, events = converger(backend)
    desired = manifests(tmp_path, backend, "v1")
    until_available(conv, desired, events, backend)
    deployments = [o for o in backend.cluster.owned() if o["kind"] == "Deployment"]
    rows = readback.status_rows(deployments, backend.cluster.pods(), services=["api"])
    assert [(r["service"], r["phase"], r["version"], r["ready"], r["restarts"]) for r in rows] == [
        ("api", "ready", "v1", True, 0)] * 2
    assert all(r["replica"].startswith("api-") and r["uptime"] is not None for r in rows)
    lines = list(readback.log_lines(backend.cluster, ["api"], tail=1))
    assert [line for _, line in lines] == ["listening", "listening"]
    pod = rows[0]["replica"]
    assert list(backend.cluster.follow(pod)) == ["api replica 0 of registry.example/api:v1", "listening"]
    cluster_events = readback.events(backend.cluster.events(), ["api"])
    assert [(e.type.value, e.service, e.data["reason"]) for e in cluster_events] == [("update", "api", "ScalingReplicaSet")]
    [record] = readback.library_services(deployments, backend.cluster.pods())
    assert (record.name, record.version, record.metadata["phase"], record.metadata["replicas"]) == ("api", "v1", "ready", "2/2")


def test_a_converge_loop_stops_when_asked(backend, tmp_path):
    conv, events = converger(backend)
    desired = manifests(tmp_path, backend, "v1")
    stop = threading.Event()
    thread = threading.Thread(target=conv.run, args=(lambda: desired, stop, 0.05))
    thread.start()
    try:
        wait_until(lambda: any(e.type == EventType.READY for e in events), timeout=10 if backend.double else 120)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_refusal_is_a_clear_error(tmp_path):
    """A 4xx from the API server is a ClusterError with the server's message (the double)."""
    with ApiDouble() as double:
        cluster = Cluster(connect(kubeconfig=str(double.kubeconfig(tmp_path / "kubeconfig"))), "default")
        with pytest.raises(ClusterError) as error:
            cluster.log("nope")
        assert str(error.value) == '404 Not Found: pods "nope" not found'


def test_events_stream_through_a_watch_and_a_410_gone_lists_again(tmp_path):
    """``supervise events``' read-back: a list, then a watch from its resourceVersion (no
    polling); a compacted resourceVersion (410 Gone) lists again and watches on, without
    repeating an Event. Against the API double only (it stands in for a cluster; a real one
    cannot be compacted on demand), which streams ``watch=true`` as chunked JSON lines."""
    import queue

    backend = Backend("double", tmp_path)
    assert backend.double is not None
    try:
        conv, _ = converger(backend)
        conv.step(manifests(tmp_path, backend, "v1"))
        stop = threading.Event()
        got: queue.Queue = queue.Queue()

        def consume() -> None:
            for item in backend.cluster.watch_events(stop, timeout=1):
                got.put(item)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        first = got.get(timeout=5)
        assert first["reason"] == "ScalingReplicaSet" and got.get(timeout=5) is None  # the list, then live
        listed = first["metadata"]["resourceVersion"]
        conv.step(manifests(tmp_path, backend, "v2"))
        second = got.get(timeout=5)
        assert second["message"] != first["message"] and second["reason"] == "ScalingReplicaSet"
        assert any(m == "GET" and "watch=" in p and f"resourceVersion={listed}" in p for m, p in backend.double.requests)

        backend.double.compact()  # the open watch's version is gone: ERROR 410 in the stream
        assert got.get(timeout=5) is None  # listed again (nothing new to yield), then live again
        conv.step(manifests(tmp_path, backend, "v3"))
        third = got.get(timeout=5)
        assert int(third["metadata"]["resourceVersion"]) > int(second["metadata"]["resourceVersion"])
        stop.set()
        thread.join(5)
        left = [got.get() for _ in range(got.qsize())]
        assert not thread.is_alive() and left == [], left  # nothing yielded twice
        lists = [p for m, p in backend.double.requests if m == "GET" and p.split("?")[0].endswith("/events")
                 and "watch=" not in p]
        assert len(lists) == 2
    finally:
        backend.close()
