"""Frozen data shapes shared by every layer: desired state, observed state, phases.

Nothing here does I/O. ``config`` builds a :class:`Desired` from ``services.toml``; the
runtime reports an :class:`Observed`; ``plan`` diffs the two.
"""

from __future__ import annotations

import enum
import hashlib
import json
import operator
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ..redaction import redact


class Phase(str, enum.Enum):
    """Life-cycle phase of a service or a replica (the vocabulary of ARCHITECTURE.md)."""

    PENDING = "pending"
    FETCHING = "fetching"
    FETCH_FAILED = "fetch-failed"
    BUILDING = "building"
    BUILD_FAILED = "build-failed"
    STARTING = "starting"
    RUNNING = "running"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    EXITED = "exited"
    FAILED = "failed"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


class RestartPolicy(str, enum.Enum):
    """When an exited replica is started again (systemd ``Restart=``, docker ``restart``)."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class Condition(str, enum.Enum):
    """What a dependent waits for before it starts (docker compose ``depends_on.condition``)."""

    STARTED = "started"
    READY = "ready"
    COMPLETED = "completed"


@dataclass(frozen=True)
class Dependency:
    """``depends_on`` entry: wait for ``service`` to reach ``condition``.

    ``restart`` (compose's ``depends_on.restart``) makes a restart of the dependency cascade to
    the dependent; without it a dependency's restart leaves the dependent alone.
    """

    service: str
    condition: Condition = Condition.STARTED
    restart: bool = False


@dataclass(frozen=True)
class SourceSpec:
    """Where a service's code lives: a local folder (``path``), a git repository, a package
    on an index (``pip``) or a published container image (``image``).

    ``path`` is absolute for a local source. For git, ``url`` is what ``git clone`` takes
    (a relative local path is resolved against the config folder), ``ref`` a branch, tag or
    commit, and ``poll`` the seconds between remote checks (None: the global default). For pip,
    ``requirement`` is a PEP 508 requirement, ``index``/``extra_index`` pip's index URLs (None:
    pip's own configuration), ``poll`` the seconds between index checks. For image, ``image``
    is ``NAME[:TAG]``. ``mode`` (a local folder only): ``"snapshot"`` runs each revision from
    its own immutable copy under STATE_DIR (so a rollback runs the previous files),
    ``"in-place"`` runs the folder itself (no rollback); a service with no ``source`` runs in
    the config's folder in place.
    """

    kind: str  # "path" | "git" | "pip" | "image"
    path: Path | None = None
    url: str | None = None
    ref: str = "HEAD"
    poll: float | None = None
    requirement: str | None = None
    index: str | None = None
    extra_index: tuple[str, ...] = ()
    image: str | None = None
    mode: str = "snapshot"  # "snapshot" | "in-place": local folders only

    @property
    def in_place(self) -> bool:
        """A local folder run as it is (no snapshot, so no rollback)."""
        return self.kind == "path" and self.mode == "in-place"

    def describe(self) -> str:
        """``git URL@REF``, ``pip REQUIREMENT``, ``image NAME:TAG`` or the folder, for
        messages and status (credentials in a URL redacted: redaction.redact)."""
        if self.kind == "git":
            return f"git {redact(str(self.url))}@{self.ref}"
        if self.kind == "pip":
            return f"pip {self.requirement}" + (f" from {redact(str(self.index))}" if self.index else "")
        if self.kind == "image":
            return f"image {self.image}"
        return str(self.path) + (" (in place)" if self.mode == "in-place" else "")


@dataclass(frozen=True)
class Backoff:
    """Exponential restart delay in seconds: ``initial * 2**n`` capped at ``max``, jittered.

    The delay resets to ``initial`` once a replica has stayed up for ``reset`` seconds
    (default: ``max``), like Kubernetes' CrashLoopBackOff which resets after 10 minutes up.
    """

    initial: float = 1.0
    max: float = 60.0
    reset: float | None = None

    @property
    def reset_after(self) -> float:
        """Seconds of uptime after which the backoff starts again from ``initial``."""
        return self.reset if self.reset is not None else max(self.max, 10.0)


@dataclass(frozen=True)
class StartLimit:
    """At most ``burst`` starts within ``interval`` seconds, then phase ``failed``.

    Same rule as systemd's ``StartLimitBurst=`` / ``StartLimitIntervalSec=``.
    """

    burst: int = 10
    interval: float = 60.0


@dataclass(frozen=True)
class LogPolicy:
    """Rotation of one service log: past ``max_bytes`` the file becomes ``NAME.log.1`` (older
    ones shift up to ``backups``; 0 backups truncates). ``timestamps`` prefixes each line with
    the time it was read (ISO 8601, milliseconds, local time)."""

    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    timestamps: bool = False


CHECK_KINDS = ("tcp", "http", "exec")


@dataclass(frozen=True)
class Check:
    """A validated ``ready`` or ``live`` check (Docker's HEALTHCHECK / Kubernetes' probes).

    ``kind`` is ``tcp`` (``target`` is ``"host:port"``), ``http`` (``target`` a URL) or
    ``exec`` (``argv`` the command); ``${VAR}`` in them expands from the replica's environment
    when probed. ``interval``, ``timeout`` and ``start_period`` are seconds; ``retries`` how many
    failures in a row count (liveness) or how many probes a new version gets (readiness).
    """

    kind: str
    target: str = ""
    argv: tuple[str, ...] = ()
    interval: float = 1.0
    timeout: float = 1.0
    start_period: float = 0.0
    retries: int = 3

    @classmethod
    def of(cls, value: "Check | Mapping[str, object]") -> "Check":
        """``value`` itself, or a check table (``{"kind": "tcp", "tcp": "127.0.0.1:80",
        "interval": 1.0, ...}``) parsed. Raises ValueError naming the field that is wrong."""
        if isinstance(value, Check):
            return value
        kind = value.get("kind")
        if kind not in CHECK_KINDS:
            raise ValueError(f"check kind must be one of {', '.join(CHECK_KINDS)}, got {kind!r}")
        target, argv = "", ()
        raw = value.get(str(kind))
        if kind == "exec":
            if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(a, str) for a in raw):
                raise ValueError("exec check: expected a non-empty list of strings")
            argv = tuple(raw)
        elif not isinstance(raw, str) or not raw:
            raise ValueError(f"{kind} check: expected a string target")
        else:
            target = raw

        def number(key: str, default: float) -> float:
            got = value.get(key, default)
            if got is None:
                return default
            if isinstance(got, bool) or not isinstance(got, (int, float)) or got < 0:
                raise ValueError(f"check {key}: expected seconds, got {got!r}")
            return float(got)

        retries = value.get("retries", 3)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise ValueError(f"check retries: expected a count of at least 1, got {retries!r}")
        return cls(kind=str(kind), target=target, argv=argv, interval=number("interval", 1.0),
                   timeout=number("timeout", 1.0), start_period=number("start_period", 0.0), retries=retries)

    def to_dict(self) -> dict[str, object]:
        """The check as its ``services.toml`` table (durations in seconds)."""
        return {"kind": self.kind, self.kind: list(self.argv) if self.kind == "exec" else self.target,
                "interval": self.interval, "timeout": self.timeout, "start_period": self.start_period,
                "retries": self.retries}


@dataclass(frozen=True)
class ImageBuild:
    """``build = { dockerfile = "Dockerfile", context = "." }``: an image built from the source
    (Docker's ``docker build -f DOCKERFILE CONTEXT``, Compose's ``build.dockerfile`` /
    ``build.context``); ``context`` is relative to the source folder or checkout,
    ``dockerfile`` to the context, both inside the source."""

    dockerfile: str = "Dockerfile"
    context: str = "."


@dataclass(frozen=True)
class ServiceSpec:
    """One ``[services.NAME]`` entry, validated, with defaults filled in.

    ``command`` is an argv tuple, or a one-element tuple holding the script when ``shell``.
    ``environment`` is ``[env]`` < ``env_file`` < the service's ``env`` already merged (the
    supervisor's own process environment and ``REPLICA`` are added at start). Durations are
    seconds, ``stop_signal`` a signal number.
    """

    name: str
    command: tuple[str, ...]
    source: SourceSpec
    build: tuple[str, ...] | None = None
    cwd: str = "."
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    env_file: Path | None = None
    replicas: int = 1
    restart: RestartPolicy = RestartPolicy.ALWAYS
    backoff: Backoff = Backoff()
    start_limit: StartLimit = StartLimit()
    stop_signal: int = 15
    stop_timeout: float = 10.0
    depends_on: tuple[Dependency, ...] = ()
    shell: bool = False
    ready: Check | None = None
    live: Check | None = None
    update: str = "recreate"
    watch: tuple[str, ...] = ()
    user: str | None = None
    log: LogPolicy = LogPolicy()
    runtime: str | None = None  # the executor's name; None: [supervise] runtime
    #: Containers: Docker's ``-p`` strings (``"8080:80"``), ``-v`` strings with host folders
    #: made absolute, and the Dockerfile build (None: an image source, or no container).
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    image_build: ImageBuild | None = None
    #: Seconds a replica must be ready (without a ready check: up) without a crash for its
    #: version to count as good, the one a bad update rolls back to (None: 0 with a ready
    #: check, 10 s without; :attr:`supervisor.decide.lifecycle.Policy.good_delay`).
    good_after: float | None = None
    #: ``runtime = "kubernetes"`` in a local file: the service's ``kubernetes`` table and the
    #: file's ``[supervise] kubernetes`` as canonical JSON (so that a change is a change of the
    #: spec: a new image, new ports, another namespace); None for every other service.
    cluster: str | None = None

    @property
    def slots(self) -> int:
        """How many replicas the engine runs: ``replicas``, except for a service on a cluster
        (``cluster`` set), which is one replica to the engine, its Deployment (of ``replicas``
        pods); a Deployment of 0 pods is still one, so that the 0 reaches the cluster."""
        return 1 if self.cluster is not None else self.replicas

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServiceSpec):
            return NotImplemented
        # Every field's value at once (operator.attrgetter, in C): a reload of 2,000 services
        # compares each spec twice, and dataclasses.fields() per call was most of it.
        return self is other or _SPEC_VALUES(self) == _SPEC_VALUES(other)

    __hash__ = None  # type: ignore[assignment]  # holds mappings

    def changed_fields(self, other: "ServiceSpec") -> tuple[str, ...]:
        """Names of the fields whose values differ between ``self`` and ``other``."""
        return tuple(name for name, mine, theirs in zip(_SPEC_FIELDS, _SPEC_VALUES(self), _SPEC_VALUES(other))
                     if mine != theirs)

    @property
    def build_hash(self) -> str:
        """12 hex digits identifying the build step (argv), part of every version."""
        data = json.dumps(list(self.build) if self.build else None)
        if self.image_build is not None:  # a Dockerfile build (older versions had none: same hash)
            data = json.dumps({"dockerfile": self.image_build.dockerfile, "context": self.image_build.context})
        return hashlib.sha256(data.encode()).hexdigest()[:12]


#: ServiceSpec's field names, and a getter of all their values as one tuple.
_SPEC_FIELDS = tuple(f.name for f in fields(ServiceSpec))
_SPEC_VALUES = operator.attrgetter(*_SPEC_FIELDS)


@dataclass(frozen=True)
class Settings:
    """The ``[supervise]`` table. ``poll`` is seconds; ``state_dir`` absolute; ``docker_host``
    the container engine's Engine API address as written; ``event_history`` a count of events;
    ``self_source`` the source of supervise's own new versions (a git or pip :class:`SourceSpec`)."""

    state_dir: Path
    runtime: str = "local"
    poll: float = 60.0
    keep_versions: int = 3
    log: LogPolicy = LogPolicy()
    docker_host: str | None = None  # the Engine API address (None: $DOCKER_HOST, usual sockets)
    event_history: int = 10_000  # events kept in STATE_DIR/events for `events --since`
    #: ``self = { git = ..., ref = ..., poll = ... }`` or ``{ pip = ..., ... }``: where new
    #: versions of supervise itself come from (None: no self-update). Its ``poll`` (seconds)
    #: None means checked by ``supervise upgrade`` only.
    self_source: SourceSpec | None = None


@dataclass(frozen=True)
class Desired:
    """The whole desired state: what the config file says, in file order.

    ``kubernetes`` is the file's :class:`supervisor.kube.schema.KubeConfig` when it runs on, or
    mentions, Kubernetes (else None); the local runtime ignores it.
    """

    settings: Settings
    services: Mapping[str, ServiceSpec]
    path: Path | None = None
    kubernetes: object | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Desired):
            return NotImplemented
        return (self.settings, dict(self.services), self.path) == (
            other.settings, dict(other.services), other.path)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Version:
    """What a build is of: the source revision (a git commit, or a folder's content hash)
    and a hash of the build step. Written ``REVISION12-BUILD8`` (12 and 8 hex digits) in
    status, events and state files; :meth:`parse` is the one place that reads it back."""

    revision: str  # the first 12 characters of the revision
    build: str  # the first 8 of the build step's hash

    @classmethod
    def of(cls, revision: str, build_hash: str) -> "Version":
        """The version of ``revision`` built by the step hashed ``build_hash``."""
        return cls(revision[:12], build_hash[:8])

    @classmethod
    def parse(cls, text: str) -> "Version":
        """Read ``REVISION-BUILD`` back; a text without a build part is all revision."""
        revision, dash, build = text.rpartition("-")
        return cls(revision, build) if dash else cls(text, "")

    def __str__(self) -> str:
        return f"{self.revision}-{self.build}"


@dataclass(frozen=True)
class Exit:
    """How a process ended: ``code`` for a normal exit, ``signal`` when killed by one.

    ``str()`` gives ``"exit 3"`` or ``"signal 9"`` (``SIGKILL``), kept distinct as systemd does
    (``code=exited, status=3`` vs ``code=killed, signal=KILL``).
    """

    code: int | None = None
    signal: int | None = None
    #: Neither is known (a process we adopted is not our child: no wait status reaches us),
    #: but we stopped it: the last signal we sent (``stop_signal``, or SIGKILL after
    #: ``stop_timeout``). ``str()`` then says ``"stopped by supervise (SIGTERM)"``.
    stopped_by: int | None = None

    @property
    def success(self) -> bool:
        """Exited with code 0."""
        return self.code == 0

    def __str__(self) -> str:
        if self.signal is not None:
            return f"signal {self.signal} ({_signal_name(self.signal)})"
        if self.code is None:
            if self.stopped_by is not None:
                return f"stopped by supervise ({_signal_name(self.stopped_by)})"
            return "unknown"
        return f"exit {self.code}"


def _signal_name(number: int) -> str:
    import signal as _signal

    try:
        return _signal.Signals(number).name
    except ValueError:
        return "?"


@dataclass(frozen=True)
class ReplicaObserved:
    """What the runtime sees of one replica. ``pid`` is None when no process runs."""

    index: int
    phase: Phase
    pid: int | None = None
    version: str | None = None
    restarts: int = 0
    last_exit: Exit | None = None
    started_at: float | None = None  # wall clock seconds since the epoch
    stale: bool | str = False  # adopted after a supervisor restart, started from another config (a string: why else to replace it)
    ready: bool = False  # its ready check passed (or it has none) while it runs
    message: str = ""  # why it is in its phase (waiting for, restart in, start limit hit, ...)
    running: bool = False  # a process (or container) of it is held, even while it is stopped
    good: bool = False  # its version proved itself (ready for good_after s without a crash)
    unknown: str = ""  # why its state cannot be observed now (a cluster out of reach); "" when it can


@dataclass(frozen=True)
class ServiceObserved:
    """What runs for one service.

    ``spec`` is the spec the replicas were started with (None: never started). ``held`` is a
    user stop that outlives reloads; ``failed`` means the start limit was hit and nothing starts
    until the spec changes or a user restarts it. ``build_failed`` says the last fetch or build
    failed, for ``failed_revision``; that revision is not tried again until something changes.
    """

    name: str
    spec: ServiceSpec | None
    replicas: Mapping[int, ReplicaObserved] = field(default_factory=dict)
    version: str | None = None
    held: bool = False
    failed: bool = False
    build_failed: bool = False
    failed_revision: str | None = None  # the source revision whose fetch or build failed
    phase: Phase = Phase.STOPPED  # the least advanced of its replicas', or fetching/building
    message: str = ""  # why the newest version is not what runs (failed build, rollback, ...)
    log_error: str = ""  # why its log cannot be written now (disk full, ...), "" when it can
    preparing: str = ""  # "fetching" or "building" while a version is prepared, else ""
    preparing_since: float | None = None  # when that began (seconds since the epoch)
    build_line: str = ""  # the last line of output of the build under way ("" when none)
    good_rule: str = ""  # the rule of a good version in words ("up for 10s without a crash")
    good_versions: tuple[str, ...] = ()  # versions that proved good, oldest first
    rollback_to: str | None = None  # the good version a failing update goes back to (None: none)
    pinned: str | None = None  # the version `supervise rollback` pinned (until the next change)
    in_place: bool = False  # a folder run in place: no snapshot, no rollback


@dataclass(frozen=True)
class Observed:
    """The observed state of every service the runtime knows about."""

    services: Mapping[str, ServiceObserved] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> "Observed":
        """Nothing runs."""
        return cls({})
