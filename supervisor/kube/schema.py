"""The Kubernetes keys of ``services.toml``: validated into a :class:`KubeConfig`.

The schema (documented in services.toml(5))::

    [supervise]
    runtime = "kubernetes"
    kubernetes = { namespace = "shop", context = "prod", registry = "registry.example.org/shop",
                   progress_deadline = "10m", users = { app = 1000 } }

    [services.api]
    kubernetes = { image = "registry.example.org/shop/api:1.4", ports = ["8000", "80:8000/tcp"] }

Every key is optional. ``namespace`` defaults to ``"default"``; ``context`` to the kubeconfig's
current context; ``progress_deadline`` to 600 s (the Deployment default,
``progressDeadlineSeconds``); ``interval`` to 5 s between two converge passes of ``supervise
run``. ``users`` maps the user names of ``user = "..."`` to numeric uids
(Kubernetes' ``runAsUser`` takes numbers only). A service's image is its ``kubernetes.image``,
else ``REGISTRY/NAME:VERSION`` once a version is built and pushed.

:func:`validate` checks the raw (already TOML-parsed) document and reports every mistake
through the config validator's ``error(keys, message)``, so each one is located like the rest
of ``check``'s diagnostics. It never raises for a bad file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ..desired.durations import parse_duration

#: Keys of ``[supervise] kubernetes = {...}`` and of a service's ``kubernetes = {...}``.
SETTINGS_KEYS = ("namespace", "context", "registry", "progress_deadline", "users", "interval")
SERVICE_KEYS = ("image", "ports")

#: RFC 1123 label: what a namespace, a Service name and a container name must be (Kubernetes
#: validation, ``IsDNS1123Label``); service names must also not start with a digit (RFC 1035).
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SERVICE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
#: ``"8000"``, ``"80:8000"``, ``"80:8000/udp"``: service port, target (container) port, protocol.
PORT_RE = re.compile(r"^(?:(\d{1,5}):)?(\d{1,5})(?:/(tcp|udp|sctp))?$", re.IGNORECASE)
#: Well-known names that need no ``users`` entry (their uid is the same on every Linux image).
WELL_KNOWN_UIDS = MappingProxyType({"root": 0, "nobody": 65534})
_TAG_BAD = re.compile(r"[^A-Za-z0-9_.-]")

Error = Callable[[tuple[str, ...], str], None]


@dataclass(frozen=True)
class Port:
    """One exposed port: the Service listens on ``port`` and forwards to the container's
    ``target`` (its ``containerPort``); ``protocol`` is ``TCP``, ``UDP`` or ``SCTP``."""

    port: int
    target: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class KubeService:
    """A service's ``kubernetes = { image, ports }`` (both optional); ``image`` defaults to
    the service's ``source = { image = "..." }``."""

    image: str | None = None
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class KubeConfig:
    """``[supervise] kubernetes`` plus every service's ``kubernetes`` table.

    ``progress_deadline`` is seconds (a whole number, as ``progressDeadlineSeconds``);
    ``interval`` seconds between converge passes;
    ``users`` maps user names to uids; ``services`` holds an entry for every service (empty
    :class:`KubeService` where the service has no ``kubernetes`` table).
    """

    namespace: str = "default"
    context: str | None = None
    registry: str | None = None
    progress_deadline: int = 600
    interval: float = 5.0
    users: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    services: Mapping[str, KubeService] = field(default_factory=lambda: MappingProxyType({}))

    def service(self, name: str) -> KubeService:
        """The service's options (empty ones for a service without a ``kubernetes`` table)."""
        return self.services.get(name, KubeService())

    def image(self, name: str, version: str | None = None) -> str | None:
        """The image reference of service ``name``: its ``kubernetes.image``, else
        ``REGISTRY/NAME:VERSION`` when both are known, else None."""
        own = self.service(name).image
        if own:
            return own
        if self.registry and version:
            return f"{self.registry.rstrip('/')}/{name}:{tag_of(version)}"
        return None

    def uid(self, user: str) -> tuple[int, int | None] | None:
        """``(uid, gid or None)`` for a ``user`` value: ``"1000"``, ``"1000:1000"``, a name in
        ``users`` or a well-known name (root, nobody); None when it has no numeric mapping."""
        name, _, group = user.partition(":")
        if name.isdigit():
            uid = int(name)
        elif name in self.users:
            uid = self.users[name]
        elif name in WELL_KNOWN_UIDS:
            uid = WELL_KNOWN_UIDS[name]
        else:
            return None
        if not group:
            return uid, None
        return (uid, int(group)) if group.isdigit() else None


def validate(data: Mapping[str, Any], error: Error) -> KubeConfig:
    """Check the Kubernetes keys of the parsed document ``data``; report each mistake with
    ``error(keys, message)`` and return what is valid (defaults in place of bad values).

    Service names, ``user`` mappings and images are only required to fit Kubernetes when the
    file's ``runtime`` is ``"kubernetes"`` (or, in a local file, the service's own); the ``kubernetes`` tables themselves are always
    checked (a typo there is a typo whichever runtime runs the file).
    """
    raw_supervise = data.get("supervise")
    supervise: dict[str, Any] = raw_supervise if isinstance(raw_supervise, dict) else {}
    on_cluster = supervise.get("runtime") == "kubernetes"
    settings = _settings(supervise.get("kubernetes", {}), error)
    services: dict[str, KubeService] = {}
    raw_services = data.get("services")
    table: dict[str, Any] = raw_services if isinstance(raw_services, dict) else {}
    for name, service in table.items():
        if not isinstance(service, dict):
            continue
        keys = ("services", name)
        options = _service(keys + ("kubernetes",), service.get("kubernetes", {}), error)
        source = service.get("source")
        if options.image is None and isinstance(source, dict) and isinstance(source.get("image"), str):
            # source = { image = "redis:7" }: on a cluster that image is the pod's (as its own
            # kubernetes.image would say); a user's report had render refuse it
            options = replace(options, image=source["image"])
        services[name] = options
        if not (on_cluster or service.get("runtime") == "kubernetes"):
            continue
        if not SERVICE_NAME_RE.match(name):
            error(keys, f'"{name}" is not a Kubernetes object name: use lowercase letters, digits and "-", '
                        'starting with a letter, at most 63 characters')
        user = service.get("user")
        if isinstance(user, str) and settings.uid(user) is None:
            error(keys + ("user",), f'user "{user}" has no numeric id for Kubernetes: write a uid '
                                    f'like "1000" or map it in [supervise] kubernetes.users = {{ {user.partition(":")[0]} = 1000 }}')
        problem = image_problem(options.image, settings.registry, isinstance(service.get("build"), dict))
        if problem is not None:
            error(keys, problem)
    return KubeConfig(namespace=settings.namespace, context=settings.context, registry=settings.registry,
                      progress_deadline=settings.progress_deadline, interval=settings.interval, users=settings.users,
                      services=MappingProxyType(services))


def tag_of(version: str) -> str:
    """A version as a Docker tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``): other characters
    become ``_``, as :func:`supervisor.executors.container.image_tag` does."""
    return _TAG_BAD.sub("_", version)[:128] or "_"


def image_problem(image: str | None, registry: str | None, builds: bool) -> str | None:
    """Why a service that runs on a cluster has no image, or None when it has one: its own
    ``kubernetes.image``, or a Dockerfile ``build`` whose images are pushed to ``registry``
    (``REGISTRY/NAME:VERSION``, one per version). The one message ``check``, ``render`` and
    ``plan`` give (``render`` and ``plan`` through :mod:`.render`)."""
    if image:
        return None
    if registry is None:
        return ('has no image for Kubernetes: set kubernetes = { image = "..." }, or [supervise] '
                'kubernetes.registry and build = { dockerfile = "Dockerfile" } to build and push one per version')
    if not builds:
        return (f'has no image for Kubernetes: nothing builds one to push to {registry}: add build = '
                '{ dockerfile = "Dockerfile" } or set kubernetes = { image = "..." }')
    return None


def _settings(value: Any, error: Error) -> KubeConfig:
    keys = ("supervise", "kubernetes")
    if not isinstance(value, dict):
        error(keys, '"kubernetes" must be a table { namespace = "...", context = "...", registry = "..." }')
        return KubeConfig()
    _unknown(keys, value, SETTINGS_KEYS, error)
    result: dict[str, Any] = {}
    namespace = value.get("namespace", "default")
    if not isinstance(namespace, str) or not DNS_LABEL_RE.match(namespace):
        error(keys + ("namespace",), f'"namespace" must be a Kubernetes namespace name (lowercase letters, digits '
                                     f'and "-", at most 63), got {namespace!r}')
    else:
        result["namespace"] = namespace
    for key in ("context", "registry"):
        if key in value:
            if isinstance(value[key], str) and value[key].strip() and not any(c.isspace() for c in value[key]):
                result[key] = value[key]
            else:
                error(keys + (key,), f'"{key}" must be a non-empty string without spaces, got {value[key]!r}')
    if "progress_deadline" in value:
        try:
            seconds = parse_duration(value["progress_deadline"])
        except (ValueError, TypeError) as exc:
            error(keys + ("progress_deadline",), f'"progress_deadline": {exc}')
        else:
            if seconds < 1:
                error(keys + ("progress_deadline",), '"progress_deadline" must be at least 1s')
            else:
                result["progress_deadline"] = int(-(-seconds // 1))  # whole seconds, rounded up
    if "interval" in value:
        try:
            seconds = parse_duration(value["interval"])
        except (ValueError, TypeError) as exc:
            error(keys + ("interval",), f'"interval": {exc}')
        else:
            if seconds < 0.1:
                error(keys + ("interval",), '"interval" must be at least 100ms')
            else:
                result["interval"] = seconds
    if "users" in value:
        users = value["users"]
        if not isinstance(users, dict):
            error(keys + ("users",), '"users" must be a table of NAME = UID, like { app = 1000 }')
        else:
            good = {}
            for name, uid in users.items():
                if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= 2**31 - 1:
                    error(keys + ("users", name), f'uid of "{name}" must be a whole number 0-2147483647, got {uid!r}')
                else:
                    good[name] = uid
            result["users"] = MappingProxyType(good)
    return KubeConfig(**result)


def _service(keys: tuple[str, ...], value: Any, error: Error) -> KubeService:
    if not isinstance(value, dict):
        error(keys, '"kubernetes" must be a table { image = "...", ports = ["8000"] }')
        return KubeService()
    _unknown(keys, value, SERVICE_KEYS, error)
    image = None
    if "image" in value:
        if isinstance(value["image"], str) and value["image"].strip() and not any(c.isspace() for c in value["image"]):
            image = value["image"]
        else:
            error(keys + ("image",), f'"image" must be an image reference like "registry/app:1.0", got {value["image"]!r}')
    ports: list[Port] = []
    if "ports" in value:
        raw = value["ports"]
        if not isinstance(raw, list):
            error(keys + ("ports",), '"ports" must be a list like ["8000", "80:8000/tcp"]')
            raw = []
        for item in raw:
            port = parse_port(item)
            if port is None:
                error(keys + ("ports",), f'bad port {item!r}: write PORT or SERVICE_PORT:CONTAINER_PORT[/tcp|udp|sctp], '
                                         'each 1-65535')
            elif any(p.port == port.port and p.protocol == port.protocol for p in ports):
                error(keys + ("ports",), f'port {port.port}/{port.protocol.lower()} is listed twice')
            else:
                ports.append(port)
    return KubeService(image=image, ports=tuple(ports))


def parse_port(item: Any) -> Port | None:
    """``8000``, ``"8000"``, ``"80:8000"``, ``"80:8000/udp"`` -> :class:`Port`; None if bad."""
    if isinstance(item, int) and not isinstance(item, bool):
        item = str(item)
    if not isinstance(item, str):
        return None
    match = PORT_RE.match(item.strip())
    if not match:
        return None
    target = int(match.group(2))
    port = int(match.group(1)) if match.group(1) else target
    if not (0 < port < 65536 and 0 < target < 65536):
        return None
    return Port(port=port, target=target, protocol=(match.group(3) or "tcp").upper())


def _unknown(keys: tuple[str, ...], table: Mapping[str, Any], allowed: tuple[str, ...], error: Error) -> None:
    from ..desired.config import suggest

    for key in table:
        if key not in allowed:
            error(keys + (key,), f'unknown key "{key}"{suggest(key, allowed)}')
