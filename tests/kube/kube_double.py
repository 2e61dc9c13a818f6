"""An in-process stand-in for a Kubernetes API server: it stands in for a cluster, which cannot
run on this machine.

A tiny HTTP server on loopback that speaks the apiserver's JSON for the few endpoints
``supervisor.kube.cluster`` calls, so the real ``kubernetes`` client code path runs (kubeconfig
loading, URL and query building, content types, status codes, error bodies):

- ``PATCH`` apps/v1 Deployments and v1 Services: ``application/apply-patch+yaml`` is
  server-side apply (field ownership per manager, 409 Conflict without ``force``, ``dryRun``);
  ``application/merge-patch+json`` is an Update by another ``fieldManager`` (``kubectl edit``)
- ``GET`` lists with ``labelSelector`` (equality terms), ``GET`` one object, ``DELETE``
- ``GET`` core/v1 Pods, a Pod's ``/log``, core/v1 Events
- ``GET`` core/v1 Events and apps/v1 Deployments with ``watch=true&resourceVersion=N``: a
  chunked stream of ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": ...}`` lines from
  resourceVersion N on (one sequence for every kind, as etcd's revision), open until
  ``timeoutSeconds``; a resourceVersion older than the last :meth:`ApiDouble.compact` gets
  the apiserver's ``ERROR`` event with a 410 ``Expired`` Status (etcd compacted it)

A toy controller stands in for the Deployment controller and the kubelet: applying a
Deployment bumps ``metadata.generation``; unless its image is in ``broken_images`` the rollout
completes at once (pods Running and Ready, conditions Available and Progressing
``NewReplicaSetAvailable``); a broken image leaves the new pods in ``CrashLoopBackOff`` and the
rollout progressing until :meth:`ApiDouble.expire` sets ``Progressing=False,
reason=ProgressDeadlineExceeded`` as the real controller does after ``progressDeadlineSeconds``.
Field ownership uses the same path encoding as the code under test (supervisor.kube.fields);
it is a simplification of the apiserver's structured-merge-diff, enough for conflicts on the
fields we set.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from supervisor.kube import fields

PLURALS = {"deployments": ("apps/v1", "Deployment"), "services": ("v1", "Service"), "pods": ("v1", "Pod"),
           "events": ("v1", "Event")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ApiDouble:
    """The double's state and its server. ``objects[(plural, namespace, name)]`` holds objects;
    ``owners[(plural, namespace, name)]`` is ``{manager: (operation, leaf paths)}``;
    ``requests`` records ``(method, path)`` of every call, for assertions."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.owners: dict[tuple[str, str, str], dict[str, tuple[str, set]]] = {}
        self.broken_images: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.logs: dict[str, list[str]] = {}
        self.down = False  # True: every connection is closed without an answer (an outage)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified on every new Event object
        self.version = 10  # the resourceVersion of the last change (Events only are watchable)
        self.compacted = 0  # watches from a resourceVersion below this get 410 Gone
        self.tombstones: list[tuple[str, str, dict[str, Any]]] = []  # deleted objects, for DELETED events
        self.closing = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), name="api-double", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "ApiDouble":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.closing = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context points at this double."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester",
                                                         "namespace": namespace}}],
        }))
        return path

    # -- what tests look at and do ---------------------------------------------------------

    def get(self, plural: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            return copy.deepcopy(self._with_fields((plural, namespace, name), obj)) if obj else None

    def edit(self, plural: str, name: str, patch: dict[str, Any], manager: str = "kubectl-edit",
             namespace: str = "default") -> None:
        """What ``kubectl edit`` does: a merge patch as another field manager."""
        with self.lock:
            self._update((plural, namespace, name), patch, manager)

    def expire(self, name: str, namespace: str = "default") -> None:
        """The Deployment controller's verdict after progressDeadlineSeconds without progress."""
        with self.lock:
            obj = self.objects[("deployments", namespace, name)]
            conditions = [c for c in obj["status"].get("conditions", []) if c["type"] != "Progressing"]
            conditions.append({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                               "message": f'ReplicaSet "{name}-{self._rs_hash(obj)}" has timed out progressing.',
                               "lastUpdateTime": _now(), "lastTransitionTime": _now()})
            obj["status"]["conditions"] = conditions
            self.version += 1  # a status change is a new resourceVersion (watches see it)
            obj["metadata"]["resourceVersion"] = str(self.version)
            self._event(obj, "Warning", "ProgressDeadlineExceeded", conditions[-1]["message"])

    def compact(self) -> None:
        """What etcd's compaction does to watches: every resourceVersion seen so far is too old
        (a watch from one gets 410 Gone and must list again)."""
        with self.lock:
            self.version += 1  # the compaction's own revision: lists answer it, older ones are gone
            self.compacted = self.version
            self.changed.notify_all()

    def names(self, plural: str, namespace: str = "default") -> list[str]:
        with self.lock:
            return sorted(n for (p, ns, n) in self.objects if p == plural and ns == namespace)

    # -- the apiserver's rules (under self.lock) --------------------------------------------

    def _with_fields(self, key, obj):
        obj = copy.deepcopy(obj)
        obj["metadata"]["managedFields"] = [
            {"manager": manager, "operation": operation, "apiVersion": obj.get("apiVersion", "v1"),
             "fieldsType": "FieldsV1", "fieldsV1": fields.to_fields_v1(leaves), "time": _now()}
            for manager, (operation, leaves) in self.owners.get(key, {}).items() if leaves]
        return obj

    def _apply(self, key, body: dict[str, Any], manager: str, force: bool, dry_run: bool) -> tuple[int, dict]:
        plural, namespace, name = key
        old = self.objects.get(key)
        mine = fields.paths(body)
        owners = copy.deepcopy(self.owners.get(key, {}))
        conflicts: dict[str, list] = {}
        if old is not None:
            for other, (_, leaves) in owners.items():
                if other == manager:
                    continue
                for leaf in leaves:
                    if any(fields.overlaps(leaf, p) and fields.value_at(old, p) != fields.value_at(body, p)
                           for p in mine):
                        conflicts.setdefault(other, []).append(leaf)
        if conflicts and not force:
            count = sum(len(v) for v in conflicts.values())
            detail = "; ".join(f'conflict with "{m}" using {body.get("apiVersion")}: '
                               + ", ".join("." + ".".join(s[2:] for s in leaf) for leaf in leaves)
                               for m, leaves in conflicts.items())
            return 409, _status(409, "Conflict", f"Apply failed with {count} conflict{'s' * (count > 1)}: {detail}")
        for other, leaves in conflicts.items():
            owners[other] = (owners[other][0], owners[other][1] - set(leaves))
        new = copy.deepcopy(body)
        if old is not None:  # fields others own and we do not set stay as they are
            for other, (_, leaves) in owners.items():
                if other == manager:
                    continue
                for leaf in leaves:
                    if not any(fields.overlaps(leaf, p) for p in mine):
                        _set_at(new, leaf, fields.value_at(old, leaf))
        owners[manager] = ("Apply", mine)
        stored = self._store(key, new, old)
        if not dry_run:
            self.objects[key] = stored
            self.owners[key] = owners
            if plural == "deployments":
                self._control(stored, old)
        result = copy.deepcopy(stored)
        result["metadata"]["managedFields"] = []
        return (200 if old else 201), result

    def _update(self, key, patch: dict[str, Any], manager: str) -> dict[str, Any]:
        old = self.objects[key]
        new = _merge_patch(copy.deepcopy(old), patch)
        changed = fields.paths(patch)
        owners = self.owners.setdefault(key, {})
        for other, (operation, leaves) in list(owners.items()):
            owners[other] = (operation, {leaf for leaf in leaves if not any(fields.overlaps(leaf, c) for c in changed)})
        operation, leaves = owners.get(manager, ("Update", set()))
        owners[manager] = ("Update", leaves | changed)
        stored = self._store(key, new, old)
        self.objects[key] = stored
        if key[0] == "deployments":
            self._control(stored, old)
        return stored

    def _store(self, key, new, old):
        plural, namespace, name = key
        meta = new.setdefault("metadata", {})
        meta.update(name=name, namespace=namespace)
        meta.pop("managedFields", None)
        self.version += 1  # one resourceVersion sequence for every kind, as etcd's revision
        self.changed.notify_all()
        if old is None:
            meta.update(uid=hashlib.sha1(f"{key}{time.time()}".encode()).hexdigest(), creationTimestamp=_now(),
                        generation=1, resourceVersion=str(self.version))
        else:
            for field in ("uid", "creationTimestamp"):
                meta[field] = old["metadata"][field]
            changed = new.get("spec") != old.get("spec")
            meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
            meta["resourceVersion"] = str(self.version)
            new["status"] = old.get("status", {})
        new.setdefault("status", {})
        return new

    @staticmethod
    def _rs_hash(obj) -> str:
        return hashlib.sha1(json.dumps(obj["spec"]["template"], sort_keys=True).encode()).hexdigest()[:10]

    def _control(self, obj, old) -> None:
        """The toy Deployment controller and kubelet (see the module docstring)."""
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        if old is not None and old["metadata"]["generation"] == obj["metadata"]["generation"]:
            return
        spec = obj["spec"]
        replicas = spec.get("replicas", 1)
        container = spec["template"]["spec"]["containers"][0]
        broken = container["image"] in self.broken_images
        template_hash = self._rs_hash(obj)
        old_ready = [p for (pl, ns, _), p in self.objects.items() if pl == "pods" and ns == namespace
                     and p["metadata"]["labels"].get("app.kubernetes.io/name") == name
                     and p["metadata"]["labels"].get("pod-template-hash") != template_hash
                     and p["status"]["containerStatuses"][0]["ready"]]
        for key in [k for k, p in self.objects.items() if k[0] == "pods" and k[1] == namespace
                    and p["metadata"]["labels"].get("app.kubernetes.io/name") == name
                    and (not broken or p["metadata"]["labels"].get("pod-template-hash") == template_hash)]:
            del self.objects[key]
        for index in range(replicas):
            pod = f"{name}-{template_hash}-{index}"
            labels = dict(spec["template"]["metadata"]["labels"], **{"pod-template-hash": template_hash})
            state = ({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}
                     if broken else {"running": {"startedAt": _now()}})
            self.objects[("pods", namespace, pod)] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": namespace, "labels": labels, "creationTimestamp": _now()},
                "spec": {"containers": [container]},
                "status": {"phase": "Running", "startTime": _now(),
                           "conditions": [{"type": "Ready", "status": "False" if broken else "True"}],
                           "containerStatuses": [{
                               "name": container["name"], "image": container["image"], "ready": not broken,
                               "restartCount": 3 if broken else 0, "state": state,
                               **({"lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}} if broken else {}),
                           }]},
            }
            self.logs[pod] = [f"{name} replica {index} of {container['image']}", "listening"] if not broken else \
                ["fatal: cannot start"]
        available = len(old_ready) if broken else replicas
        progressing = ({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                        "message": f'ReplicaSet "{name}-{template_hash}" is progressing.'} if broken else
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                        "message": f'ReplicaSet "{name}-{template_hash}" has successfully progressed.'})
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"], "replicas": replicas + (len(old_ready) if broken else 0),
            "updatedReplicas": replicas, "readyReplicas": available, "availableReplicas": available,
            **({"unavailableReplicas": replicas} if broken else {}),
            "conditions": [{"type": "Available", "status": "True" if available >= replicas else "False",
                            "reason": "MinimumReplicasAvailable" if available >= replicas else "MinimumReplicasUnavailable"},
                           dict(progressing, lastUpdateTime=_now(), lastTransitionTime=_now())],
        }
        self._event(obj, "Normal", "ScalingReplicaSet", f"Scaled up replica set {name}-{template_hash} to {replicas}")
        if broken:
            self._event({"kind": "Pod", "metadata": {"name": f"{name}-{template_hash}-0", "namespace": namespace}},
                        "Warning", "BackOff", "Back-off restarting failed container")

    def _event(self, obj, type_: str, reason: str, message: str) -> None:
        namespace = obj["metadata"]["namespace"]
        count = sum(1 for k in self.objects if k[0] == "events")
        name = f"{obj['metadata']['name']}.{count:08x}"
        self.version += 1  # called with self.lock held (from _control)
        self.changed.notify_all()
        self.objects[("events", namespace, name)] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self.version)},
            "involvedObject": {"kind": obj["kind"], "name": obj["metadata"]["name"], "namespace": namespace},
            "type": type_, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": _now(), "lastTimestamp": _now(), "source": {"component": "deployment-controller"},
        }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


def _set_at(obj: Any, path: fields.Path, value: Any) -> None:
    node = obj
    for index, segment in enumerate(path):
        last = index == len(path) - 1
        if segment.startswith("f:"):
            name = segment[2:]
            if last:
                node[name] = copy.deepcopy(value)
                return
            node = node.setdefault(name, [] if path[index + 1].startswith("k:") else {})
        else:
            wanted = json.loads(segment[2:])
            item = next((i for i in node if all(i.get(k) == v for k, v in wanted.items())), None)
            if item is None:
                item = dict(wanted)
                node.append(item)
            if last:
                item.update(copy.deepcopy(value) or {})
                return
            node = item


def _selects(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _handler(double: ApiDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()  # headers and body go out in separate writes: no Nagle delay on them
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            segments = [s for s in parts.path.split("/") if s]
            # /api/v1/namespaces/NS/PLURAL[/NAME[/log]] or /apis/apps/v1/namespaces/NS/PLURAL[/NAME]
            if segments[:2] == ["api", "v1"]:
                rest = segments[2:]
            elif segments[:3] == ["apis", "apps", "v1"]:
                rest = segments[3:]
            else:
                return None
            if len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in PLURALS:
                return None
            namespace, plural = rest[1], rest[2]
            name = rest[3] if len(rest) > 3 else None
            sub = rest[4] if len(rest) > 4 else None
            return namespace, plural, name, sub, query

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")  # JSON is the YAML the client sends

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_PATCH(self) -> None:
            self._dispatch("PATCH")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def _chunk(self, line: dict) -> None:
            data = json.dumps(line).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _watch(self, plural: str, namespace: str, query: dict) -> None:
            """A watch of Events or Deployments (see the module doc), as the apiserver streams one."""
            if plural not in ("events", "deployments"):
                self._send(405, _status(405, "MethodNotAllowed", "the double watches events and deployments only"))
                return
            selector = query.get("labelSelector")
            since = int(query.get("resourceVersion") or double.version)
            deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    with double.lock:
                        if since < double.compacted:
                            self._chunk({"type": "ERROR", "object": _status(
                                410, "Expired", f"too old resource version: {since} ({double.compacted})")})
                            break
                        live = [("ADDED" if o["metadata"].get("generation", 1) == 1 else "MODIFIED", o)
                                for k, o in double.objects.items() if k[0] == plural and k[1] == namespace]
                        live += [("DELETED", o) for p, ns, o in double.tombstones if p == plural and ns == namespace]
                        new = sorted(((int(o["metadata"]["resourceVersion"]), kind, copy.deepcopy(o)) for kind, o in live
                                      if int(o["metadata"]["resourceVersion"]) > since
                                      and _selects(selector, o["metadata"].get("labels") or {})),
                                     key=lambda item: item[0])
                        if not new:
                            if double.closing or time.monotonic() >= deadline:
                                break
                            double.changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                            continue
                    for version, kind, obj in new:
                        self._chunk({"type": kind, "object": obj})
                        since = version
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:  # the client went away
                self.close_connection = True

        def _dispatch(self, method: str) -> None:
            double.requests.append((method, self.path))
            if double.down:  # no answer at all, as from a cluster that is not there
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            route = self._route()
            if route is None:
                self._send(404, _status(404, "NotFound", f"the server could not find the requested resource ({self.path})"))
                return
            namespace, plural, name, sub, query = route
            key = (plural, namespace, name)
            if method == "GET" and name is None and query.get("watch") in ("true", "True", "1"):
                self._watch(plural, namespace, query)
                return
            with double.lock:
                if method == "GET" and name is None:
                    items = [double._with_fields(k, o) for k, o in sorted(double.objects.items())
                             if k[0] == plural and k[1] == namespace
                             and _selects(query.get("labelSelector"), o["metadata"].get("labels") or {})]
                    for item in items:
                        item.pop("kind", None), item.pop("apiVersion", None)  # as in a real list
                    api_version, kind = PLURALS[plural]
                    body = {"apiVersion": api_version, "kind": f"{kind}List",
                            "metadata": {"resourceVersion": str(double.version)}, "items": items}
                    self._send(200, body)
                    return
                obj = double.objects.get(key)
                if method == "GET" and sub == "log":
                    if obj is None:
                        self._send(404, _status(404, "NotFound", f'pods "{name}" not found'))
                        return
                    lines = double.logs.get(name, [])
                    if "tailLines" in query:
                        lines = lines[-int(query["tailLines"]):] if int(query["tailLines"]) else []
                    self._send(200, "".join(line + "\n" for line in lines), "text/plain")
                    return
                if method == "GET":
                    if obj is None:
                        self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
                    else:
                        self._send(200, double._with_fields(key, obj))
                    return
                if method == "DELETE":
                    if obj is None:
                        self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
                        return
                    gone = double.objects.pop(key)
                    double.owners.pop(key, None)
                    double.version += 1
                    gone["metadata"]["resourceVersion"] = str(double.version)
                    double.tombstones.append((plural, namespace, gone))  # for watches: DELETED
                    double.changed.notify_all()
                    if plural == "deployments":
                        for pod in [k for k, p in double.objects.items() if k[0] == "pods" and k[1] == namespace
                                    and p["metadata"]["labels"].get("app.kubernetes.io/name") == name]:
                            del double.objects[pod]
                    self._send(200, _status(200, "", "") | {"status": "Success"})
                    return
                content_type = self.headers.get("Content-Type", "")
                body = self._body()
                manager = query.get("fieldManager")
                if content_type.startswith("application/apply-patch"):
                    if not manager:
                        self._send(422, _status(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: "
                                                                 "Required value: is required for apply patch"))
                        return
                    code, result = double._apply(key, body, manager, query.get("force") == "true",
                                                 query.get("dryRun") == "All")
                    self._send(code, result)
                    return
                if content_type == "application/merge-patch+json":
                    if obj is None:
                        self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
                        return
                    self._send(200, double._update(key, body, manager or "kubectl-edit"))
                    return
                self._send(415, _status(415, "UnsupportedMediaType", "the body of the request was in an unknown format"
                                                                      " - accepted media types include: application/"
                                                                      "apply-patch+yaml, application/merge-patch+json"))

    return Handler
