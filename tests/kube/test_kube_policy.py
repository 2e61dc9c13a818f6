"""The cluster policy, pure: (desired manifests, observed objects, records, now) -> actions.
Table tests in milliseconds; no cluster and no double involved."""

from __future__ import annotations

import copy

import pytest

from supervisor.kube import fields, policy
from supervisor.kube.policy import Action, Reachability, Record, advance, decide, drift, rollout_state

LABELS = {"app.kubernetes.io/name": "api", "app.kubernetes.io/managed-by": "supervise"}


def deployment(version: str = "v1", replicas: int = 1, deadline: int = 60, image: str | None = None) -> dict:
    labels = dict(LABELS, **{"app.kubernetes.io/version": version})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "default", "labels": labels},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": deadline,
                 "selector": {"matchLabels": dict(LABELS)},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "api", "image": image or f"reg/api:{version}",
                                                       "env": [{"name": "PORT", "value": "8000"}]}]}}},
    }


def service(port: int = 80) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "default",
                                                                "labels": dict(LABELS)},
            "spec": {"selector": dict(LABELS), "ports": [{"name": "tcp", "port": port, "targetPort": 8000,
                                                          "protocol": "TCP"}]}}


def seen(manifest: dict, state: str = "complete", generation: int = 1, observed: int | None = None,
         managers: dict | None = None) -> dict:
    """An object as read back: applied by us (hash annotation, managedFields), with a status."""
    obj = policy.stamped(manifest)
    obj["metadata"]["generation"] = generation
    owners = {"supervise": fields.paths(obj)}
    for manager, leaves in (managers or {}).items():
        owners["supervise"] -= leaves
        owners[manager] = leaves
    obj["metadata"]["managedFields"] = [{"manager": m, "operation": "Apply" if m == "supervise" else "Update",
                                         "fieldsV1": fields.to_fields_v1(p)} for m, p in owners.items()]
    replicas = manifest.get("spec", {}).get("replicas", 1)
    status = {"observedGeneration": generation if observed is None else observed, "replicas": replicas,
              "updatedReplicas": replicas, "availableReplicas": replicas,
              "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
    if state == "progressing":
        status.update(availableReplicas=0, conditions=[{"type": "Progressing", "status": "True",
                                                        "reason": "ReplicaSetUpdated"}])
    elif state == "failed":
        status.update(availableReplicas=0, conditions=[{"type": "Progressing", "status": "False",
                                                        "reason": "ProgressDeadlineExceeded",
                                                        "message": 'ReplicaSet "api-1" has timed out progressing.'}])
    if manifest["kind"] == "Deployment":
        obj["status"] = status
    return obj


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.target[0]) for a in actions]


V1, V2 = deployment("v1"), deployment("v2")
GOOD = Record(applied=V1, applied_at=0.0, done=True, good=V1)
ROLLING = Record(applied=V2, applied_at=100.0, good=V1)

# (name, desired, observed, records, now, expected (kind, object kind) list, reason fragment)
TABLE = [
    ("nothing there: apply", [V1], [], {}, 0, [("apply", "Deployment")], "missing"),
    ("Service first, then the Deployment", [service(), V1], [], {}, 0,
     [("apply", "Service"), ("apply", "Deployment")], "missing"),
    ("applied and available: remember it as good", [V1], [seen(V1)], {"api": Record(applied=V1)}, 5,
     [("available", "Deployment")], "1 of 1 replicas available"),
    ("available and known good: nothing", [V1], [seen(V1)], {"api": GOOD}, 5, [], ""),
    ("a new version: apply", [V2], [seen(V1)], {"api": GOOD}, 5, [("apply", "Deployment")], "new version v2"),
    ("rolling out: wait", [V2], [seen(V2, "progressing", 2)], {"api": ROLLING}, 110,
     [("wait", "Deployment")], "rolling out v2: 0 of 1 updated replicas available"),
    ("controller has not seen the spec yet: wait, even with an old failed condition", [V2],
     [seen(V2, "failed", 3, observed=2)], {"api": ROLLING}, 110, [("wait", "Deployment")], "waiting for the controller"),
    ("deadline exceeded (the controller says so): roll back to the good version", [V2],
     [seen(V2, "failed", 2)], {"api": ROLLING}, 130, [("rollback", "Deployment")], "back to v1"),
    ("deadline passed on our clock with no verdict: roll back", [V2], [seen(V2, "progressing", 2)],
     {"api": ROLLING}, 100 + 60 + policy.GRACE + 1, [("rollback", "Deployment")], "not available 60s after"),
    ("just inside our clock's grace: wait", [V2], [seen(V2, "progressing", 2)],
     {"api": ROLLING}, 100 + 60 + policy.GRACE - 1, [("wait", "Deployment")], "rolling out"),
    ("first version fails: nothing to roll back to", [V1], [seen(V1, "failed")],
     {"api": Record(applied=V1, applied_at=0)}, 70, [("failed", "Deployment")], "no good version"),
    ("rolled back: the failed version is not applied again", [V2], [seen(V1, "complete", 3)],
     {"api": Record(applied=V1, applied_at=200, done=True, good=V1, failed=policy.spec_hash(V2))}, 300,
     [("keep", "Deployment")], "not retried until the file or the source changes"),
    ("rolled back, then a newer version: apply it", [deployment("v3")], [seen(V1, "complete", 3)],
     {"api": Record(applied=V1, applied_at=200, done=True, good=V1, failed=policy.spec_hash(V2))}, 300,
     [("apply", "Deployment")], "new version v3"),
    ("the rollback itself does not become available: failed, no loop", [V2], [seen(V1, "failed", 3)],
     {"api": Record(applied=V1, applied_at=200, good=V1, failed=policy.spec_hash(V2))}, 300,
     [("keep", "Deployment"), ("failed", "Deployment")], "rollback did not become available"),
    ("a Service's ports changed: apply", [service(81)], [seen(service(80))], {}, 0, [("apply", "Service")],
     "spec changed"),
    ("removed from the file: delete what we own", [], [seen(service()), seen(V1)], {"api": GOOD}, 0,
     [("delete", "Service"), ("delete", "Deployment")], "no longer in the file"),
]


@pytest.mark.parametrize("name, desired, observed, records, now, expected, reason", TABLE, ids=[t[0] for t in TABLE])
def test_decide(name, desired, observed, records, now, expected, reason):
    actions = decide(desired, observed, records, now)
    assert kinds(actions) == expected
    assert reason in " ".join(a.reason for a in actions)


def test_rollback_carries_the_good_spec():
    [action] = decide([V2], [seen(V2, "failed", 2)], {"api": ROLLING}, 130)
    assert action.manifest == V1 and action.version == "v1" and action.details["from"] == "v2"


def test_a_held_service_is_not_deleted():
    """In the file but without a manifest this pass (its first image not pushed yet)."""
    observed = [seen(service()), seen(V1)]
    assert decide([], observed, {"api": GOOD}, 0, hold={"api"}) == []
    assert [a.kind for a in decide([], observed, {"api": GOOD}, 0, hold={"other"})] == ["delete", "delete"]


def test_delete_only_what_we_own():
    by_label_only = seen(V1, managers={"helm": set()})
    by_label_only["metadata"]["managedFields"] = [{"manager": "helm", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
    not_labelled = seen(V1)
    del not_labelled["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert decide([], [by_label_only], {}, 0) == []
    assert decide([], [not_labelled], {}, 0) == []
    assert kinds(decide([], [seen(V1)], {}, 0)) == [("delete", "Deployment")]


REPLICAS = ("f:spec", "f:replicas")
IMAGE = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"api"}', "f:image")
OTHER_ENV = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"api"}', "f:env", 'k:{"name":"DEBUG"}',
             "f:value")


@pytest.mark.parametrize("edit, owned, expected", [
    ({"replicas": 5}, {REPLICAS}, {"kubectl-edit": ["spec.replicas"]}),
    ({"image": "reg/api:hotfix"}, {IMAGE}, {"kubectl-edit": ['spec.template.spec.containers[{"name":"api"}].image']}),
    ({}, {REPLICAS}, {}),              # another manager set the same value: shared, not drift
    ({"env": "DEBUG"}, {OTHER_ENV}, {}),  # a field we do not set: theirs, not drift
])
def test_drift(edit, owned, expected):
    obj = seen(V1, managers={"kubectl-edit": owned})
    if "replicas" in edit:
        obj["spec"]["replicas"] = edit["replicas"]
    if "image" in edit:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = edit["image"]
    if "env" in edit:
        obj["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "DEBUG", "value": "1"})
    assert drift(V1, obj) == expected
    actions = decide([V1], [obj], {"api": GOOD}, 0)
    if expected:
        assert kinds(actions) == [("drift", "Deployment")]
        assert "not overwritten" in actions[0].reason and "kubectl-edit changed" in actions[0].reason
    else:
        assert actions == []


@pytest.mark.parametrize("status, state", [
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, "complete"),
    ({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}, "progressing"),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}, "progressing"),
    ({"observedGeneration": 0, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, "progressing"),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}, "progressing"),
    ({"observedGeneration": 1, "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}, "failed"),
])
def test_rollout_state_follows_kubectl_rollout_status(status, state):
    obj = {"metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": status}
    assert rollout_state(obj)[0] == state


def test_advance_records_the_good_and_the_failed_version():
    records = advance({}, Action("apply", ("Deployment", "api"), "missing", V1, "api"), 10)
    assert records["api"] == Record(applied=V1, applied_at=10)
    records = advance(records, Action("available", ("Deployment", "api"), "ok", service="api"), 20)
    assert records["api"].good == V1 and records["api"].done
    records = advance(records, Action("apply", ("Deployment", "api"), "new", V2, "api"), 30)
    records = advance(records, Action("rollback", ("Deployment", "api"), "failed", V1, "api"), 100)
    assert records["api"] == Record(applied=V1, applied_at=100, good=V1, failed=policy.spec_hash(V2))
    fixed = deployment("v3")
    after = advance(records, Action("apply", ("Deployment", "api"), "new", fixed, "api"), 200)
    assert after["api"] == Record(applied=fixed, applied_at=200, good=V1)  # the file changed: v2 forgotten
    assert advance(records, Action("delete", ("Deployment", "api"), "gone", service="api"), 110) == {}
    # a Service's actions leave the Deployment's record alone
    assert advance(records, Action("apply", ("Service", "api"), "missing", service(), "api"), 120) == records


def test_adopt_after_a_restart_restarts_the_deadline_and_reads_what_the_object_remembers():
    records = policy.adopt({}, [V1], [seen(V1, "progressing")], now=500)
    assert records == {"api": Record(applied=V1, applied_at=500)}
    assert policy.adopt({}, [V2], [seen(V1)], now=500) == {"api": Record()}
    rolling = policy.stamped(V2, Record(good=V1))
    rolling["status"] = seen(V2, "failed")["status"]
    assert policy.adopt({}, [V2], [rolling], now=500) == {"api": Record(applied=V2, applied_at=500, good=V1)}
    rolled_back = policy.stamped(V1, Record(good=V1, failed=policy.spec_hash(V2)))
    assert policy.adopt({}, [V2], [rolled_back], now=500) == {
        "api": Record(applied=V1, applied_at=500, good=V1, failed=policy.spec_hash(V2))}


def test_spec_hash_ignores_our_own_annotations():
    record = Record(good=V2, failed="0123456789abcdef")
    assert policy.spec_hash(policy.stamped(V1, record)) == policy.spec_hash(V1) != policy.spec_hash(V2)
    assert policy.remembered(policy.stamped(V1, record)) == record
    assert policy.spec_hash(copy.deepcopy(V1)) == policy.spec_hash(V1)


def test_unreachable_is_reported_once_and_retried_with_backoff():
    reach = Reachability(rng=lambda: 0.0)
    times, reports = [], []
    now = 0.0
    for _ in range(10):
        retry_at, report = reach.failed(now)
        times.append(retry_at - now)
        reports.append(report)
        assert not reach.due(now) and reach.due(retry_at)
        now = retry_at
    assert reports == [True] + [False] * 9
    assert times == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert reach.succeeded() is True and reach.succeeded() is False
    assert reach.failed(now)[1] is True  # a new outage is reported again
