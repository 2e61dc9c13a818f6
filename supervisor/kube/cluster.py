"""The effects, thin: talk to a Kubernetes API server through the official ``kubernetes`` client.

Objects go in and come out as plain dicts (the API's own JSON: ``_preload_content=False``),
so the policy and read-back code never see the client's model classes. Endpoints used (and
nothing else; the test double in tests/kube serves exactly these):

- ``PATCH`` Deployments and Services with ``Content-Type: application/apply-patch+yaml``,
  ``fieldManager=supervise`` (server-side apply; ``force`` false: conflicts are reported)
- ``GET`` list of Deployments, Services, Pods by label selector; ``GET`` core/v1 Events
- ``DELETE`` a Deployment or a Service
- ``GET`` a Pod's ``/log`` (``tailLines``, ``follow``)
- ``GET`` core/v1 Events and our Deployments with ``watch=true`` from a ``resourceVersion``
  (``supervise events``; the rollouts of services of a local file)

Errors: :class:`ClusterUnreachable` for anything that is not an HTTP answer (refused,
timeout, DNS, TLS) and for 5xx/429 answers (transient: retry with backoff);
:class:`ApplyConflict` for a 409 from server-side apply (another manager owns fields);
:class:`ClusterError` for any other refusal (4xx: RBAC, a missing namespace, invalid object).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping

from .policy import FIELD_MANAGER, KINDS
from .render import LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY

APPLY = "application/apply-patch+yaml"
#: (connect, read) seconds for every call but a followed log.
TIMEOUT = (5.0, 30.0)


class ClusterError(Exception):
    """The API server refused a request; the message is the server's, in one line."""


class ClusterUnreachable(ClusterError):
    """No answer from the API server, or a transient one (5xx, 429): retry later."""


class ApplyConflict(ClusterError):
    """Server-side apply found fields owned by another field manager (HTTP 409)."""


def connect(context: str | None = None, kubeconfig: str | None = None):
    """An ``ApiClient`` from ``kubeconfig`` (default ``$KUBECONFIG``, then ``~/.kube/config``)
    and ``context`` (default: the current one); inside a pod with no kubeconfig, the in-cluster
    service account. Raises :class:`ClusterError` when neither is there, or when the kubeconfig
    cannot be read or is not a kubeconfig (one line naming the file, never a traceback)."""
    from kubernetes import client, config

    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        if os.path.exists(path.split(os.pathsep)[0]) or context:
            api = config.new_client_from_config(config_file=path, context=context)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api = client.ApiClient(configuration)
        else:
            raise ClusterError(f"no kubeconfig at {path} and not inside a cluster: set KUBECONFIG")
    except ClusterError:
        raise
    except config.ConfigException as exc:
        raise ClusterError(f"kubeconfig {path}: {exc}") from None
    except OSError as exc:  # a folder, an unreadable file
        raise ClusterError(f"kubeconfig {path}: cannot read it: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - not YAML, or YAML of the wrong shape: the client
        # library raises whatever its parsing meets (YAMLError, TypeError, AttributeError...)
        raise ClusterError(f"kubeconfig {path}: not a valid kubeconfig ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]})") from None
    # Our own backoff paces retries (policy.Reachability): one attempt per call, no hidden waits.
    api.configuration.retries = 0
    api.rest_client.pool_manager.connection_pool_kw["retries"] = 0
    return api


class Cluster:
    """One namespace of one cluster. Thread-safe as the underlying ``ApiClient`` is."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)

    # -- calls ------------------------------------------------------------------------------

    def _call(self, method, *args, **kwargs) -> Any:
        """Run one client call; return the decoded JSON body (or the raw text for logs)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        raw = kwargs.pop("_raw", False)
        kwargs.setdefault("_request_timeout", TIMEOUT)
        try:
            response = method(*args, _preload_content=False, **kwargs)
            data = response.data
        except ApiException as exc:
            message = _status_message(exc)
            if exc.status == 409:
                raise ApplyConflict(message) from None
            if exc.status in (429,) or (exc.status or 0) >= 500 or not exc.status:
                raise ClusterUnreachable(f"API server answered {exc.status}: {message}") from None
            raise ClusterError(f"{exc.status} {exc.reason}: {message}") from None
        except (HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"cannot reach the API server at {self.api_client.configuration.host}: "
                                     f"{_root_cause(exc)}") from None
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        if raw:
            return text
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return text

    def apply(self, manifest: Mapping[str, Any], *, force: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply ``manifest`` as field manager ``supervise``; the object as stored.
        Raises :class:`ApplyConflict` when another manager owns fields we set (unless ``force``)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        method = {"Deployment": self.apps.patch_namespaced_deployment,
                  "Service": self.core.patch_namespaced_service}[kind]
        extra = {"dry_run": "All"} if dry_run else {}
        return self._call(method, name, self.namespace, dict(manifest), field_manager=FIELD_MANAGER,
                          force=force, _content_type=APPLY, **extra)

    def delete(self, kind: str, name: str) -> None:
        """Delete one object (its pods go with it: background propagation). 404 is success."""
        method = {"Deployment": self.apps.delete_namespaced_deployment,
                  "Service": self.core.delete_namespaced_service}[kind]
        try:
            self._call(method, name, self.namespace, propagation_policy="Background")
        except ClusterError as exc:
            if not str(exc).startswith("404"):
                raise

    def owned(self) -> list[dict[str, Any]]:
        """Every Deployment and Service in the namespace carrying our managed-by label
        (``kind`` and ``apiVersion`` filled in: list items do not carry them)."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        found: list[dict[str, Any]] = []
        for kind in KINDS:
            method, version = ((self.apps.list_namespaced_deployment, "apps/v1") if kind == "Deployment"
                               else (self.core.list_namespaced_service, "v1"))
            for item in self._call(method, self.namespace, label_selector=selector).get("items", []):
                found.append({"apiVersion": version, "kind": kind, **item})
        return found

    def pods(self, service: str | None = None) -> list[dict[str, Any]]:
        """Our pods (of one service, or all), as the API returns them."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}" + (f",{LABEL_NAME}={service}" if service else "")
        return self._call(self.core.list_namespaced_pod, self.namespace, label_selector=selector).get("items", [])

    def events(self) -> list[dict[str, Any]]:
        """The namespace's core/v1 Events (the cluster keeps about an hour of them)."""
        return self._call(self.core.list_namespaced_event, self.namespace).get("items", [])

    def watch_events(self, stop: Any = None, timeout: int = 60) -> Iterator[dict[str, Any] | None]:
        """The namespace's Events, as :meth:`watch` streams them (new and changed ones)."""
        return self.watch("Event", stop, timeout)

    def watch(self, kind: str, stop: Any = None, timeout: int = 60) -> Iterator[dict[str, Any] | None]:
        """Objects of ``kind`` (``"Event"``: the namespace's; ``"Deployment"``: ours, by label):
        the ones there now (a list, then one ``None``: the stream is live from there), then
        each one as it changes, through a watch from the list's ``resourceVersion``
        (``watch=true``; no polling): added or modified, and for Deployments deleted ones too.
        Each watch request lasts ``timeout`` seconds (``timeoutSeconds``) and the next one
        resumes from the last resourceVersion seen; a 410 Gone (the version was compacted
        away) lists again and watches from there, as client-go's reflector does, never
        yielding the same version of an object twice. Ends when ``stop`` (a
        ``threading.Event``) is set (checked between objects and at each request's end).
        Raises :class:`ClusterError` (:class:`ClusterUnreachable` when the server does not
        answer)."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        method: Any
        extra: dict[str, Any]
        types: tuple[str, ...]
        if kind == "Event":
            method, extra, types = self.core.list_namespaced_event, {}, ("ADDED", "MODIFIED")
        else:
            method, types = self.apps.list_namespaced_deployment, ("ADDED", "MODIFIED", "DELETED")
            extra = {"label_selector": f"{LABEL_MANAGED_BY}={MANAGED_BY}"}
        seen: dict[str, str] = {}  # uid (or name) -> resourceVersion already yielded
        version: str | None = None

        def fresh(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            key, rv = meta.get("uid") or meta.get("name", ""), meta.get("resourceVersion", "")
            if seen.get(key) == rv:
                return False
            seen[key] = rv
            return True

        while stop is None or not stop.is_set():
            if version is None:
                listing = self._call(method, self.namespace, **extra)
                version = (listing.get("metadata") or {}).get("resourceVersion") or "0"
                for item in listing.get("items", []):
                    if fresh(item):
                        yield item
                yield None
            stream = watch.Watch()
            try:
                for event in stream.stream(method, self.namespace, resource_version=version, timeout_seconds=timeout,
                                           _request_timeout=(TIMEOUT[0], timeout + 10), **extra):
                    obj = event["raw_object"]
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] in types and fresh(obj):
                        yield obj
                    if stop is not None and stop.is_set():
                        stream.stop()
                        break
            except ApiException as exc:
                if exc.status == 410:  # Gone: our resourceVersion was compacted; list again
                    version = None
                    continue
                if (exc.status or 0) >= 500 or exc.status == 429 or not exc.status:
                    raise ClusterUnreachable(f"API server answered {exc.status}: {exc.reason}") from None
                raise ClusterError(f"{exc.status} {exc.reason}") from None
            except (HTTPError, OSError) as exc:
                raise ClusterUnreachable(f"cannot reach the API server at {self.api_client.configuration.host}: "
                                         f"{_root_cause(exc)}") from None

    def log(self, pod: str, *, tail: int | None = None, container: str | None = None) -> str:
        """The last ``tail`` lines (all when None) of a pod's log, as text."""
        extra: dict[str, Any] = {}
        if tail is not None:
            extra["tail_lines"] = tail
        if container:
            extra["container"] = container
        return self._call(self.core.read_namespaced_pod_log, pod, self.namespace, _raw=True, **extra)

    def follow(self, pod: str, *, tail: int | None = None) -> Iterator[str]:
        """A pod's log lines as they come (``follow=true``), until the pod's log ends."""
        from kubernetes.client.exceptions import ApiException

        extra: dict[str, Any] = {"tail_lines": tail} if tail is not None else {}
        try:
            # no read timeout: a quiet pod is not a dead connection
            # with _preload_content=False the client returns the raw urllib3 response
            response: Any = self.core.read_namespaced_pod_log(pod, self.namespace, follow=True,
                                                              _preload_content=False, **extra)
        except ApiException as exc:
            raise ClusterError(f"{exc.status} {exc.reason}: {_status_message(exc)}") from None
        pending = b""
        try:
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")
        finally:
            response.release_conn()


def _status_message(exc) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the HTTP reason."""
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _root_cause(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _root_cause(reason)
    text = str(exc)
    return text.split(": ", 1)[-1] if "Failed to establish a new connection" in text else text
