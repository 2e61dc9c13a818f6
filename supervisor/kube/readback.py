"""Read back from the cluster (pure): status rows, events and library ``Service`` records from
the objects :class:`~supervisor.kube.cluster.Cluster` returns.

The shapes are the local runtime's, so ``supervise status``, ``events`` and the library's
``read``/``list`` show a cluster the way they show processes:

- a status row per pod: ``service, replica`` (the pod name), ``phase``, ``pid`` (None),
  ``version`` (the pod's version label), ``uptime`` (seconds), ``restarts``, ``last_exit``,
  ``ready``, ``message``, ``desired`` (the Deployment's replicas);
- pod phases map as: deleting -> ``stopping``; ``Pending`` -> ``starting`` (``pending`` while
  unscheduled); ``Running`` -> ``ready`` when the container is ready, ``backoff`` in
  ``CrashLoopBackOff``, else ``running``; ``Succeeded`` -> ``exited``; ``Failed`` ->
  ``failed``; a waiting image pull (``ErrImagePull``, ``ImagePullBackOff``) -> ``failed``;
- Kubernetes Events become supervise events (``BackOff`` -> ``backoff``, ``Started`` ->
  ``started``, ``Killing`` -> ``stopping``, ``ScalingReplicaSet`` -> ``update``,
  ``ProgressDeadlineExceeded`` -> ``failed``; any other reason -> ``cluster-event``), with the
  Kubernetes ``reason``, ``message``, ``object`` and ``count``.
"""

from __future__ import annotations

import calendar
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..observe.events import Event, EventType
from ..desired.model import Phase
from .render import LABEL_NAME, LABEL_VERSION

_EVENT_TYPES = {
    "BackOff": EventType.BACKOFF, "Started": EventType.STARTED, "Killing": EventType.STOPPING,
    "ScalingReplicaSet": EventType.UPDATE, "ProgressDeadlineExceeded": EventType.FAILED,
}
_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError")


def parse_time(text: str | None) -> float | None:
    """An RFC 3339 timestamp as the API writes it (``2026-11-30T13:00:00Z``) -> epoch seconds."""
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def pod_phase(pod: Mapping[str, Any]) -> tuple[Phase, str]:
    """``(phase, message)`` of a pod (see the module docstring for the mapping)."""
    status = pod.get("status") or {}
    container = (status.get("containerStatuses") or [{}])[0]
    waiting = (container.get("state") or {}).get("waiting") or {}
    message = " ".join(filter(None, (waiting.get("reason"), waiting.get("message"))))
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return Phase.STOPPING, message
    phase = status.get("phase", "Pending")
    if waiting.get("reason") in _PULL_FAILURES:
        return Phase.FAILED, message
    if phase == "Pending":
        scheduled = any(c.get("type") == "PodScheduled" and c.get("status") == "False"
                        for c in status.get("conditions") or [])
        return (Phase.PENDING if scheduled else Phase.STARTING), message
    if phase == "Running":
        if waiting.get("reason") == "CrashLoopBackOff":
            return Phase.BACKOFF, message
        return (Phase.READY if container.get("ready") else Phase.RUNNING), message
    if phase == "Succeeded":
        return Phase.EXITED, message
    return Phase.FAILED, message or status.get("reason", "")


def last_exit(pod: Mapping[str, Any]) -> str | None:
    """``"exit 1 (Error)"``, ``"exit 137 (OOMKilled)"`` from the container's last termination."""
    container = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
    terminated = (container.get("lastState") or {}).get("terminated")
    if not terminated:
        return None
    text = f"exit {terminated.get('exitCode')}"
    return f"{text} ({terminated['reason']})" if terminated.get("reason") else text


def status_rows(deployments: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]],
                now: float | None = None, services: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One row per pod of each Deployment (file order when ``services`` is given), and one row
    with ``replica`` None for a Deployment with no pod. ``now`` is epoch seconds."""
    now = time.time() if now is None else now
    by_name = {d["metadata"]["name"]: d for d in deployments}
    names = [n for n in services if n in by_name] + [n for n in by_name if n not in set(services)]
    rows: list[dict[str, Any]] = []
    for name in names:
        deployment = by_name[name]
        desired = (deployment.get("spec") or {}).get("replicas", 1)
        mine = sorted((p for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_NAME) == name),
                      key=lambda p: p["metadata"]["name"])
        for pod in mine:
            phase, message = pod_phase(pod)
            container = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
            started = parse_time(((container.get("state") or {}).get("running") or {}).get("startedAt"))
            rows.append({
                "service": name, "replica": pod["metadata"]["name"], "phase": phase.value, "pid": None,
                "version": (pod["metadata"].get("labels") or {}).get(LABEL_VERSION),
                "uptime": max(0.0, now - started) if started is not None else None,
                "restarts": container.get("restartCount", 0), "last_exit": last_exit(pod),
                "ready": bool(container.get("ready")), "message": message, "desired": desired,
            })
        if not mine:
            rows.append({
                "service": name, "replica": None, "phase": (Phase.STOPPED if desired == 0 else Phase.PENDING).value,
                "pid": None, "version": (deployment["metadata"].get("labels") or {}).get(LABEL_VERSION),
                "uptime": None, "restarts": 0, "last_exit": None, "ready": False, "message": "", "desired": desired,
            })
    return rows


def service_of(object_name: str, services: Iterable[str]) -> str | None:
    """The service an object belongs to: the Deployment itself, or its ReplicaSets and pods
    (``NAME-HASH``, ``NAME-HASH-ID``); the longest matching name wins."""
    best = None
    for name in services:
        if (object_name == name or object_name.startswith(name + "-")) and (best is None or len(name) > len(best)):
            best = name
    return best


def events(items: Sequence[Mapping[str, Any]], services: Iterable[str]) -> list[Event]:
    """Kubernetes Events about our services' objects, oldest first, as supervise events."""
    names = list(services)
    result: list[Event] = []
    for item in items:
        involved = item.get("involvedObject") or {}
        service = service_of(involved.get("name", ""), names)
        if service is None:
            continue
        reason = item.get("reason") or ""
        stamp = parse_time(item.get("lastTimestamp") or item.get("eventTime") or item.get("firstTimestamp"))
        result.append(Event(
            type=_EVENT_TYPES.get(reason, EventType.CLUSTER_EVENT), service=service, version=None,
            data={"reason": reason, "message": item.get("message", ""), "warning": item.get("type") == "Warning",
                  "object": f"{involved.get('kind', '?')}/{involved.get('name', '?')}", "count": item.get("count", 1)},
            timestamp=stamp if stamp is not None else 0.0))
    result.sort(key=lambda e: e.timestamp)
    return result


def log_lines(cluster, services: Sequence[str], tail: int | None = 10) -> Iterator[tuple[str, str]]:
    """``(pod, line)`` for the last ``tail`` lines of each pod of ``services`` (pod logs
    through the API: ``GET .../pods/NAME/log``)."""
    for service in services:
        for pod in sorted(cluster.pods(service), key=lambda p: p["metadata"]["name"]):
            name = pod["metadata"]["name"]
            for line in cluster.log(name, tail=tail).splitlines():
                yield name, line


def library_services(deployments: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]):
    """The library's ``read``/``list`` records (:class:`supervisor.runtimes.base.Service`):
    ``version`` is the Deployment's version label; ``metadata`` has ``phase`` (the best pod
    phase: ready > running > the rest), ``replicas`` (``"ready/desired"``), ``type``
    (``service``) and ``image``."""
    from ..runtimes.base import Service

    order = [Phase.READY, Phase.RUNNING, Phase.STARTING, Phase.BACKOFF, Phase.PENDING, Phase.STOPPING,
             Phase.FAILED, Phase.EXITED, Phase.STOPPED]
    result = []
    for row_group in _group(status_rows(deployments, pods)):
        name = row_group[0]["service"]
        deployment = next(d for d in deployments if d["metadata"]["name"] == name)
        phases = [Phase(r["phase"]) for r in row_group]
        phase = min(phases, key=order.index)
        ready = sum(1 for r in row_group if r["ready"])
        image = deployment["spec"]["template"]["spec"]["containers"][0].get("image", "")
        result.append(Service(name=name, version=(deployment["metadata"].get("labels") or {}).get(LABEL_VERSION) or "",
                              source=image, metadata={"phase": phase.value, "replicas": f"{ready}/{row_group[0]['desired']}",
                                                      "type": "service", "image": image}))
    return result


def _group(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["service"], []).append(row)
    return list(groups.values())
