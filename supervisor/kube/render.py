"""Render (pure): a :class:`~supervisor.desired.model.Desired` -> Kubernetes manifests (plain dicts).

Each service becomes a ``apps/v1`` Deployment and, where it declares ``kubernetes.ports``, a
``v1`` Service, in file order (a service's Service before its Deployment, as ``kubectl apply``
users write them). The mapping, field by field (see services.toml(5), KUBERNETES):

=====================  =================================================================
services.toml          Kubernetes
=====================  =================================================================
``replicas``           ``spec.replicas``
``command``            ``command`` = argv[0], ``args`` = the rest (``${VAR}`` expanded
                       from the service's env, as locally); ``shell = true``:
                       ``["/bin/sh", "-c", SCRIPT]``
``env``/``env_file``   ``env`` (``[env]`` < ``env_file`` < ``env``), plus
                       ``SUPERVISE_SERVICE``; there is no ``REPLICA`` (Deployment pods
                       are interchangeable)
``ready`` / ``live``   ``readinessProbe`` / ``livenessProbe``: ``http`` -> ``httpGet``,
                       ``tcp`` -> ``tcpSocket``, ``exec`` -> ``exec``; ``interval`` ->
                       ``periodSeconds``, ``timeout`` -> ``timeoutSeconds`` (whole
                       seconds, rounded up, at least 1), ``start_period`` ->
                       ``initialDelaySeconds``, ``retries`` -> ``failureThreshold``
``stop_timeout``       ``terminationGracePeriodSeconds`` (rounded up)
``user``               ``securityContext.runAsUser`` (and ``runAsGroup`` for
                       ``"uid:gid"``); names through ``kubernetes.users``
``update``             ``recreate`` -> ``Recreate``; ``start-first`` ->
                       ``RollingUpdate`` with ``maxSurge: 1, maxUnavailable: 0``
``keep_versions``      ``revisionHistoryLimit``
``kubernetes.ports``   ``containerPort``s, and a ClusterIP Service
=====================  =================================================================

Labels on every object and pod: ``app.kubernetes.io/name`` (the service),
``app.kubernetes.io/version`` (the version, else the image tag), and
``app.kubernetes.io/managed-by: supervise`` (the Kubernetes recommended labels). Selectors use
the name and managed-by labels only, since a selector cannot change after creation.

What has no equivalent is returned as a *note* (not an error): ``stop_signal`` other than
SIGTERM, ``restart`` other than ``always`` (a Deployment's pods always restart),
``depends_on`` (no start order on a cluster: readiness gates traffic instead), a relative
``cwd``, and ``${REPLICA}`` in commands or env.
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..desired.environ import expand
from ..desired.model import Check, Desired, RestartPolicy, ServiceSpec
from .schema import KubeConfig, image_problem

MANAGED_BY = "supervise"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: A label value: at most 63 characters, alphanumerics at both ends, ``-_.`` inside.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LOOPBACK = ("", "127.0.0.1", "localhost", "::1", "0.0.0.0")


class RenderError(Exception):
    """A service cannot be expressed as Kubernetes objects; ``problems`` lists each one as
    ``services.NAME: message``; ``located`` the same as ``(keys, message)``, the keys of the
    table at fault (``("services", NAME)``), for a file:line:col like ``check``'s."""

    def __init__(self, located: list[tuple[tuple[str, ...], str]]):
        self.located = located
        self.problems = [f"{'.'.join(keys[:2])}: {message}" for keys, message in located]
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Rendered:
    """The manifests of a whole file, in apply order, and the notes on what did not carry over
    (``services.NAME: message``)."""

    manifests: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()


def render(desired: Desired, kube: KubeConfig | None = None,
           versions: Mapping[str, str] | None = None) -> Rendered:
    """All manifests of ``desired``. ``kube`` defaults to ``desired.kubernetes`` (then to the
    defaults); ``versions`` maps service names to the version built and pushed for them (used
    for ``REGISTRY/NAME:VERSION`` images and the version label).

    In a local file where some services say ``runtime = "kubernetes"`` (a mixed file), only
    those are rendered: the others run on this machine. Otherwise every service is (the file
    as it would run with ``[supervise] runtime = "kubernetes"``).

    Raises :class:`RenderError` listing every service without an image or with a ``user``
    that has no numeric id.
    """
    if kube is None:
        kube = desired.kubernetes if isinstance(desired.kubernetes, KubeConfig) else KubeConfig()
    versions = versions or {}
    manifests: list[dict[str, Any]] = []
    notes: list[str] = []
    problems: list[tuple[tuple[str, ...], str]] = []
    services = desired.services
    if any(spec.runtime == "kubernetes" for spec in services.values()) and desired.settings.runtime != "kubernetes":
        services = {name: spec for name, spec in services.items() if spec.runtime == "kubernetes"}
    for name, spec in services.items():
        try:
            objects, service_notes = render_service(spec, kube, versions.get(name),
                                                    keep_versions=desired.settings.keep_versions)
        except RenderError as exc:
            problems.extend(exc.located)
            continue
        manifests.extend(objects)
        notes.extend(f"services.{name}: {note}" for note in service_notes)
    if problems:
        raise RenderError(problems)
    return Rendered(tuple(manifests), tuple(notes))


def labels(name: str, version: str | None) -> dict[str, str]:
    """The three recommended labels (version left out when it cannot be a label value)."""
    result = {LABEL_NAME: name}
    if version and _LABEL_VALUE.match(version):
        result[LABEL_VERSION] = version
    result[LABEL_MANAGED_BY] = MANAGED_BY
    return result


def selector(name: str) -> dict[str, str]:
    """The labels that select a service's pods (immutable once a Deployment exists)."""
    return {LABEL_NAME: name, LABEL_MANAGED_BY: MANAGED_BY}


def render_service(spec: ServiceSpec, kube: KubeConfig, version: str | None = None, *,
                   keep_versions: int = 3) -> tuple[list[dict[str, Any]], list[str]]:
    """``([Service?, Deployment], notes)`` for one service; raises :class:`RenderError`."""
    name = spec.name
    problems: list[tuple[tuple[str, ...], str]] = []
    image = kube.image(name, version)
    if image is None:
        problems.append((("services", name), no_image(kube.registry, spec.image_build is not None)))
    security: dict[str, int] = {}
    if spec.user is not None:
        ids = kube.uid(spec.user)
        if ids is None:
            problems.append((("services", name, "user"),
                             f'user "{spec.user}" has no numeric id for Kubernetes: write a uid like "1000" or '
                             f'map it in [supervise] kubernetes.users = {{ {spec.user.partition(":")[0]} = 1000 }}'))
        else:
            security["runAsUser"] = ids[0]
            if ids[1] is not None:
                security["runAsGroup"] = ids[1]
    if problems:
        raise RenderError(problems)
    assert image is not None
    if version is None:
        tag = image.rsplit("/", 1)[-1]
        version = tag.split(":", 1)[1] if ":" in tag and "@" not in tag else None
    notes: list[str] = []
    env = {"SUPERVISE_SERVICE": name}
    for key, value in spec.environment.items():
        env[key] = expand(value, env)
    env["SUPERVISE_SERVICE"] = name
    if spec.shell:
        argv = ["/bin/sh", "-c", spec.command[0]]
    else:
        argv = [expand(arg, env) for arg in spec.command]
    if any("${REPLICA" in part for part in (*spec.command, *spec.environment.values())):
        notes.append("${REPLICA} is empty on Kubernetes: the pods of a Deployment are interchangeable")
    if spec.stop_signal != signal.SIGTERM:
        notes.append(f"stop_signal {signal.Signals(spec.stop_signal).name} is not carried over: the kubelet "
                     "sends SIGTERM (or the image's STOPSIGNAL)")
    if spec.restart != RestartPolicy.ALWAYS:
        notes.append(f'restart = "{spec.restart.value}" is not carried over: a Deployment\'s pods always restart')
    if spec.depends_on:
        notes.append("depends_on is not carried over: a cluster has no start order (readiness gates traffic)")
    ports = kube.service(name).ports
    container: dict[str, Any] = {"name": name, "image": image}
    if argv:  # none: the image's CMD (a Dockerfile build without command)
        container["command"] = argv[:1]
    if argv[1:]:
        container["args"] = argv[1:]
    if spec.cwd.startswith("/"):
        container["workingDir"] = spec.cwd
    elif spec.cwd not in (".", "./", ""):
        notes.append(f'cwd "{spec.cwd}" is relative to a checkout, which an image does not have: '
                     "the image's WORKDIR is used")
    container["env"] = [{"name": key, "value": value} for key, value in env.items()]
    if ports:
        container["ports"] = [{"containerPort": p.target, "protocol": p.protocol} for p in ports]
    if spec.ready is not None:
        container["readinessProbe"] = probe(spec.ready, env)
    if spec.live is not None:
        container["livenessProbe"] = probe(spec.live, env)
    if security:
        container["securityContext"] = security
    strategy: dict[str, Any] = {"type": "Recreate"}
    if spec.update == "start-first":
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    meta = {"name": name, "namespace": kube.namespace, "labels": labels(name, version)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "progressDeadlineSeconds": kube.progress_deadline,
            "revisionHistoryLimit": keep_versions,
            "strategy": strategy,
            "selector": {"matchLabels": selector(name)},
            "template": {
                "metadata": {"labels": labels(name, version)},
                "spec": {
                    "terminationGracePeriodSeconds": math.ceil(spec.stop_timeout),
                    "containers": [container],
                },
            },
        },
    }
    objects: list[dict[str, Any]] = []
    if ports:
        objects.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": dict(meta, labels=labels(name, version)),
            "spec": {
                "selector": selector(name),
                "ports": [{"name": f"{p.protocol.lower()}-{p.port}", "port": p.port, "targetPort": p.target,
                           "protocol": p.protocol} for p in ports],
            },
        })
    objects.append(deployment)
    return objects, notes


def no_image(registry: str | None, builds: bool) -> str:
    """The message for a service rendered without an image: ``check``'s
    (:func:`.schema.image_problem`) when the file cannot give it one, else a request for the
    version to name (``REGISTRY/NAME:VERSION``: ``supervise render --tag TAG``)."""
    problem = image_problem(None, registry, builds)
    if problem is None or (registry and not builds):  # a local file's images may be pushed by CI
        return (f"has no image for Kubernetes: name the version pushed to {registry} "
                "(`supervise render --tag TAG`) or set kubernetes = { image = \"...\" }")
    return problem


def probe(check: Check | Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """A validated ``ready``/``live`` table -> a Kubernetes Probe (see the module table).

    A loopback host (127.0.0.1, localhost, ::1) is dropped: the kubelet probes the pod's own
    IP, which is what a local check of 127.0.0.1 means.
    """
    check = Check.of(check)
    result: dict[str, Any]
    if check.kind == "exec":
        result = {"exec": {"command": [expand(a, env) for a in check.argv]}}
    elif check.kind == "tcp":
        host, _, port = expand(check.target, env).rpartition(":")
        result = {"tcpSocket": {"port": int(port)}}
        if host.strip("[]") not in _LOOPBACK:
            result["tcpSocket"]["host"] = host.strip("[]")
    else:
        parts = urlsplit(expand(check.target, env))
        http: dict[str, Any] = {"path": (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                                "port": parts.port or (443 if parts.scheme == "https" else 80),
                                "scheme": parts.scheme.upper()}
        if (parts.hostname or "") not in _LOOPBACK:
            http["host"] = parts.hostname
        result = {"httpGet": http}
    result["periodSeconds"] = _whole(check.interval)
    result["timeoutSeconds"] = _whole(check.timeout)
    if check.start_period:
        result["initialDelaySeconds"] = math.ceil(check.start_period)
    result["failureThreshold"] = check.retries
    return result


def _whole(seconds: Any) -> int:
    """Seconds rounded up to a whole number, at least 1 (probe fields are whole seconds)."""
    return max(1, math.ceil(float(seconds)))


def to_yaml(manifests: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """The manifests as one multi-document YAML stream (``---`` between documents), keys in
    the order rendered, for ``kubectl apply -f -``, GitOps or ``podman kube play``."""
    import yaml

    return yaml.safe_dump_all(list(manifests), sort_keys=False, default_flow_style=False, explicit_start=True)
