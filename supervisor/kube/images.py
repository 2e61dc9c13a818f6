"""The images of a cluster's services: a new version -> image build -> push to the registry
named in the file (``[supervise] kubernetes.registry``) -> the reference the Deployment runs.

A service without its own ``kubernetes.image`` and with a Dockerfile ``build`` is built once per
version of its source, the same way as for the container runtime (the source fetched or hashed
by :class:`supervisor.builds.Preparer`, the version ``REVISION12-BUILDHASH8`` of
:func:`supervisor.builds.make_version`, the build by
:meth:`supervisor.executors.container.ContainerExecutor.build_version` through the Docker SDK
against the Engine API of Docker or podman), then tagged ``REGISTRY/NAME:VERSION`` and pushed
with the Docker SDK (``docker push``). The engine reaches the registry with its own settings:
an insecure (plain HTTP) registry is declared to the engine, as ``docker push`` users do
(Docker's ``insecure-registries``, podman's ``registries.conf``), never turned on here.

Effects, thin: what to build when is decided by the caller (a new version: a new reference).
Errors are :class:`PublishError` (one line; ``stage`` "fetch", "build" or "push"); a failed
version leaves the registry and what runs on the cluster as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..execute.builds import PrepareError, Preparer, make_version
from ..execute.logs import LogRegistry
from ..desired.model import ServiceSpec
from .schema import tag_of

log = logging.getLogger("supervise")

class PublishError(Exception):
    """A version could not be fetched, built or pushed; ``stage`` says which, ``tail`` holds a
    failed build's last output lines."""

    def __init__(self, stage: str, message: str, version: str | None = None, tail: list[str] | None = None):
        super().__init__(message)
        self.stage = stage
        self.version = version
        self.tail = tail or []


@dataclass(frozen=True)
class Published:
    """One version of a service in the registry: ``reference`` is ``REGISTRY/NAME:VERSION``."""

    service: str
    version: str
    reference: str


def reference(registry: str, service: str, version: str) -> str:
    """``REGISTRY/NAME:TAG``, the tag being ``version`` with characters a Docker tag cannot hold
    replaced by ``_`` (at most 128), as :func:`supervisor.executors.container.image_tag` does.
    The same reference :meth:`.schema.KubeConfig.image` renders for a version."""
    return f"{registry.rstrip('/')}/{service}:{tag_of(version)}"


def builds_image(spec: ServiceSpec, own_image: str | None) -> bool:
    """Whether the service's image is built and pushed per version (no ``kubernetes.image``,
    a Dockerfile ``build``)."""
    return own_image is None and spec.image_build is not None


class Publisher:
    """Builds and pushes the images of one file's services to ``registry``.

    ``state_dir``: where sources are fetched (``STATE_DIR/sources/NAME``); ``docker_host``: the
    ``[supervise] docker_host`` setting (else ``$DOCKER_HOST``, else the usual sockets).
    ``on_output``: gets the build and push output, a line (bytes) at a time, with the service.
    Not thread-safe: one caller. :meth:`close` releases the engine connection.
    """

    def __init__(self, state_dir: Path, registry: str, docker_host: str | None = None,
                 on_output: Callable[[str, bytes], None] | None = None):
        from ..observe.safefs import ensure_dir

        self.state_dir = ensure_dir(Path(state_dir))  # 0700, ours (safefs.UnsafeStateDir otherwise)
        self.registry = registry
        self.docker_host = docker_host
        self.on_output = on_output
        self.logs = LogRegistry(self.state_dir)
        self.fetcher = Preparer(self.state_dir, None, self.logs)  # git fetches and folder hashes only
        self.client: Any = None
        self.published: dict[str, Published] = {}  # by service: the last version pushed

    def _engine(self):
        from ..execute.executors.container import ContainerExecutor, EngineError

        if self.client is None:
            try:
                self.client = ContainerExecutor(self.state_dir, self.docker_host)
            except EngineError as exc:
                raise PublishError("build", str(exc)) from None
        return self.client

    async def version(self, spec: ServiceSpec) -> tuple[Path, str]:
        """``(checkout or folder, version)`` of the source now (a git source is fetched).
        Raises PublishError (stage "fetch")."""
        try:
            workdir, revision = await self.fetcher.resolve(spec)
        except PrepareError as exc:
            raise PublishError("fetch", f"{spec.name}: {exc}") from None
        return workdir, make_version(revision, spec)

    async def publish(self, spec: ServiceSpec) -> Published:
        """The current version of ``spec`` in the registry: built and pushed unless it was the
        last one pushed. Raises PublishError; a failed build or push leaves the previous
        version the one to run."""
        workdir, version = await self.version(spec)
        last = self.published.get(spec.name)
        if last is not None and last.version == version:
            return last
        return await asyncio.to_thread(self.push, spec, workdir, version)

    def _output(self, service: str, data: bytes) -> None:
        if self.on_output is not None:
            self.on_output(service, data)

    def push(self, spec: ServiceSpec, workdir: Path, version: str) -> Published:
        """Build ``version`` of ``spec`` from ``workdir`` and push it (blocking: call it from a
        thread on an event loop). Raises PublishError."""
        published = self._build_and_push(spec, workdir, version)
        self.published[spec.name] = published
        return published

    def _build_and_push(self, spec: ServiceSpec, workdir: Path, version: str) -> Published:
        import docker.errors

        from ..execute.executors.container import EngineError, ImageBuildError

        assert spec.image_build is not None
        client = self._engine()
        target = reference(self.registry, spec.name, version)
        repository, tag = target.rsplit(":", 1)
        try:
            local = client.build_version(spec.name, version, workdir, spec.image_build.dockerfile,
                                         spec.image_build.context, lambda data: self._output(spec.name, data))
        except ImageBuildError as exc:
            raise PublishError("build", f"{spec.name}: {exc}", version, exc.tail) from None
        except EngineError as exc:
            raise PublishError("build", f"{spec.name}: {exc}", version) from None
        try:
            client.api.tag(local, repository, tag)
            for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
                if chunk.get("error"):  # the Engine API reports a failed push in the stream
                    raise PublishError("push", f"{spec.name}: push of {target} failed: {chunk['error'].strip()}",
                                       version)
                if chunk.get("status"):
                    self._output(spec.name, f"{chunk['status']} {chunk.get('progress') or ''}".rstrip().encode() + b"\n")
        except docker.errors.DockerException as exc:
            raise PublishError("push", f"{spec.name}: push of {target} failed: {_one_line(exc)}", version) from None
        log.info("kubernetes: pushed %s", target)
        return Published(spec.name, version, target)

    def close(self) -> None:
        """Close the engine connection and the log files (nothing else is left open)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self.logs.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


class Images:
    """The images of a file's built services, pass after pass (``supervise run``, ``plan``).

    :meth:`versions` publishes the current version of every service whose image is built (see
    :func:`builds_image`) and says which version each one runs. A version that failed to fetch,
    build or push is reported once (``fetch-failed`` or ``build-failed``) and not tried again
    until its source changes (a new version), as a failed build is locally; meanwhile the
    service keeps the last version pushed, or, with none yet, is *held* (its objects on the
    cluster are left as they are). Events go to ``notifier``: ``building``, ``built`` (with
    ``image``, the reference pushed), ``build-failed``, ``fetch-failed``.
    """

    def __init__(self, publisher: Publisher, notifier: Any = None, clock: Callable[[], float] = time.monotonic):
        self.publisher = publisher
        self.notifier = notifier
        self.clock = clock
        self.failed: dict[str, str] = {}  # by service: the version that failed (or the fetch error)
        #: git sources: (when asked, (checkout, version) or the fetch's error)
        self.checked: dict[str, tuple[float, Any]] = {}

    def _resolve(self, spec: ServiceSpec, poll: float) -> tuple[Path, str]:
        """The source's checkout and version; a git remote is asked at most every ``poll``
        seconds (the source's ``poll``, else ``[supervise] poll``), as the local git poller
        does, not at every converge pass (a failed fetch waits for the next poll too).
        Raises PublishError."""
        now = self.clock()
        git = spec.source.kind == "git"
        last = self.checked.get(spec.name) if git else None
        if last is not None and now - last[0] < (spec.source.poll or poll):
            if isinstance(last[1], PublishError):
                raise last[1]
            return last[1]
        try:
            result = asyncio.run(self.publisher.version(spec))
        except PublishError as exc:
            if git:
                self.checked[spec.name] = (now, exc)
            raise
        if git:
            self.checked[spec.name] = (now, result)
        return result

    def _emit(self, type_: Any, service: str, version: str | None = None, **data: Any) -> None:
        if self.notifier is not None:
            self.notifier.emit(type_, service, version, **data)

    def versions(self, desired: Any, kube: Any, build: bool = True) -> tuple[dict[str, str], set[str]]:
        """``(versions, held)`` for ``desired`` (a :class:`~supervisor.model.Desired`) and its
        :class:`~.schema.KubeConfig`: the version to render for each built service, and the
        built services that have none. ``build`` False (``plan``) only looks: the source's
        version now, built or not."""
        from ..observe.events import EventType

        versions: dict[str, str] = {}
        held: set[str] = set()
        for name, spec in desired.services.items():
            if not builds_image(spec, kube.service(name).image):
                continue
            last = self.publisher.published.get(name)
            try:
                workdir, version = self._resolve(spec, desired.settings.poll)
            except PublishError as exc:
                if self.failed.get(name) != str(exc):
                    self.failed[name] = str(exc)
                    log.warning("kubernetes: %s", exc)
                    self._emit(EventType.FETCH_FAILED, name, error=str(exc))
                if last is not None:
                    versions[name] = last.version
                else:
                    held.add(name)
                continue
            if not build or (last is not None and last.version == version):
                versions[name] = version
                continue
            if self.failed.get(name) == version:  # not again until the source changes
                if last is not None:
                    versions[name] = last.version
                else:
                    held.add(name)
                continue
            self._emit(EventType.BUILDING, name, version)
            try:
                published = self.publisher.push(spec, workdir, version)
            except PublishError as exc:
                self.failed[name] = version
                log.warning("kubernetes: %s", exc)
                self._emit(EventType.BUILD_FAILED, name, version, stage=exc.stage, error=str(exc), tail=exc.tail)
                if last is not None:
                    versions[name] = last.version
                else:
                    held.add(name)
                continue
            self.failed.pop(name, None)
            self._emit(EventType.BUILT, name, published.version, image=published.reference)
            versions[name] = published.version
        return versions, held
