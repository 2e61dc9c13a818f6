"""Containers behind the executor seam: ``runtime = "container"`` (or an image source, or a
Dockerfile build) routes a service here.

This adapts the Engine API client (:class:`~supervisor.execute.executors.container.ContainerExecutor`,
blocking, Docker SDK) to :class:`~supervisor.execute.executors.Executor`:

=====================  ==========================================================================
seam                   here
=====================  ==========================================================================
prepare                an image source: inspect, else pull (the artifact's revision is the image
                       id, so a re-tagged image is a new version); a Dockerfile build: fetch the
                       git source (or hash the folder) as for processes, then build the image
                       tagged with the version beside the running one (once per version)
start                  create + start a labelled container; its output is followed into the
                       service's log sink; its exit resolves from the engine's ``die`` events
stop / cleanup         ``docker stop -t`` (the stop signal, then SIGKILL) and remove
record / adopt         the container id; adopted when it still runs and carries our labels;
                       logs resume at the cursor in ``STATE_DIR/containers`` (no line lost)
probe                  tcp/http from the host (published ports); exec inside the container
=====================  ==========================================================================

The engine connection is made on first use: a file without containers never needs an engine,
and with no engine a container service fails with one clear line while the rest runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as _signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, cast

from .. import builds, health, logs
from ..builds import Artifact, PrepareError, Preparer, make_version, source_root
from ...desired.environ import replica_env
from ..logs import LogSink
from ...desired.model import Check, Exit, ServiceSpec
from ..sources.git import GitSource
from ...observe.state import ReplicaRecord
from . import Executor, Running, StartFailed
from .container import (BuildCancel, ContainerExecutor, ContainerSpec, EngineError, ImageBuildError, exit_of,
                        image_tag)

log = logging.getLogger("supervise")


@dataclass(eq=False)
class ContainerHandle:
    """A replica as a container: ``id`` (the engine's), ``host_pid`` its main process as the
    host sees it (for display only: 0 when the engine does not say), ``running`` until its exit
    is seen, ``exited`` resolved from the engine's events (or by our stop)."""

    id: str
    exited: asyncio.Future[Exit]
    stop_signal: int = _signal.SIGTERM
    host_pid: int = 0

    @property
    def pid(self) -> int:
        return self.host_pid

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def ended(self, exit: Exit) -> None:
        if not self.exited.done():
            self.exited.set_result(exit)


class Containers(Executor):
    """Replicas as containers of one engine (``docker_host``: ``[supervise] docker_host``,
    else ``$DOCKER_HOST``, else the usual sockets), for the state dir ``state_dir``."""

    name = "container"

    def __init__(self, state_dir: Path, logs_: logs.LogRegistry, keep_versions: int = 3, docker_host: str | None = None):
        self.state_dir = state_dir
        self.logs = logs_
        self.keep_versions = keep_versions
        self.docker_host = docker_host
        self.client: ContainerExecutor | None = None
        self.handles: dict[str, ContainerHandle] = {}
        self.early: dict[str, int] = {}  # exits seen before their start returned
        self.fetcher = Preparer(state_dir, None, logs_, keep_versions)  # git fetches and folder hashes only
        self._connecting: asyncio.Lock | None = None

    # -- life ------------------------------------------------------------------------------

    async def open(self) -> None:
        self._connecting = asyncio.Lock()

    async def close(self) -> None:
        if self.client is not None:
            await asyncio.to_thread(self.client.close)
            self.client = None

    async def connect(self) -> ContainerExecutor:
        """The engine client, connected and watching exits. Raises EngineError (one line)."""
        if self.client is not None:
            return self.client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.client is None:
                loop = asyncio.get_running_loop()
                client = await asyncio.to_thread(ContainerExecutor, self.state_dir, self.docker_host, None, loop)
                await asyncio.to_thread(client.watch_exits, self._exited)
                self.client = client
        return self.client

    def _sync_client(self) -> ContainerExecutor:
        if self.client is None:
            raise EngineError("no container engine connected")
        return self.client

    def _exited(self, container_id: str, code: int) -> None:
        handle = self.handles.get(container_id)
        if handle is None:
            self.early[container_id] = code
            return
        exit_code, signal = exit_of(code)
        handle.ended(Exit(exit_code, signal) if code >= 0 else Exit())

    # -- artifacts -------------------------------------------------------------------------

    def prepares_in_background(self, spec: ServiceSpec) -> bool:
        return True  # a pull or an image build may take minutes

    async def fast_forward(self, spec: ServiceSpec, old_revision: str, new_revision: str) -> bool:
        return await builds.fast_forward(self.state_dir, spec, old_revision, new_revision)

    async def prepare(self, spec: ServiceSpec, protect: set[str]) -> Artifact:
        try:
            client = await self.connect()
        except EngineError as exc:
            raise PrepareError("fetch", str(exc)) from None
        if spec.source.kind == "image":
            assert spec.source.image is not None
            self.logs.sink(spec.name).note(f"pull {spec.source.image} (when the engine lacks it)")
            try:
                image_id = await asyncio.to_thread(client.ensure_image, spec.source.image)
            except EngineError as exc:
                raise PrepareError("fetch", str(exc)) from None
            revision = image_id.split(":", 1)[-1]
            return Artifact(workdir=self.state_dir, version=make_version(revision, spec), revision=revision)
        if spec.image_build is None:
            raise PrepareError("build", f"{spec.name}: a container needs an image source or build = {{ dockerfile = ... }}")
        workdir, revision = await self.fetcher.resolve(spec)
        version = make_version(revision, spec)
        tag = image_tag(spec.name, version)
        if not await asyncio.to_thread(_has_image, client, tag):
            sink = self.logs.sink(spec.name)
            sink.note(f"build image {tag} from {spec.image_build.dockerfile} in {spec.image_build.context}")
            loop = asyncio.get_running_loop()

            def output(data: bytes) -> None:
                loop.call_soon_threadsafe(sink.write, data if data.endswith(b"\n") else data + b"\n")

            cancel = BuildCancel()
            try:
                await asyncio.to_thread(client.build_version, spec.name, version, workdir, spec.image_build.dockerfile,
                                        spec.image_build.context, output, cancel)
            except asyncio.CancelledError:  # superseded, or a stop: the build must not run on
                cancel.cancel()
                raise
            except ImageBuildError as exc:
                sink.note(f"build {version} failed: {exc}")
                raise PrepareError("build", str(exc), version, exc.tail) from None
            except EngineError as exc:
                raise PrepareError("build", str(exc), version) from None
            sink.note(f"build {version} succeeded")
        keep = {image_tag(spec.name, v) for v in protect} | {tag}  # the running versions and the new one
        await asyncio.to_thread(client.prune_images, spec.name, keep)
        if spec.source.kind == "git":
            kept = {v.split("-")[0] for v in protect} | {revision[:12]}
            await asyncio.to_thread(GitSource(spec.source, source_root(self.state_dir, spec.name)).prune,
                                    self.keep_versions, kept)
        return Artifact(workdir=workdir, version=version, revision=revision)

    # -- replicas --------------------------------------------------------------------------

    def container_spec(self, spec: ServiceSpec, artifact: Artifact, index: int) -> ContainerSpec:
        """The container of replica ``index``: the image by id (an image source) or by the
        version's tag (a build); env is the file's alone (the host's environment stays out)."""
        image = artifact.revision if spec.source.kind == "image" else image_tag(spec.name, artifact.version)
        if spec.source.kind == "image" and len(image) == 64:
            image = f"sha256:{image}"
        env = replica_env(spec.name, spec.environment, index, base={})
        command: tuple[str, ...] | None = spec.command or None
        if command is not None and spec.shell:
            command = ("/bin/sh", "-c", command[0])
        return ContainerSpec(service=spec.name, replica=index, version=artifact.version, image=image, command=command,
                             env=env, working_dir=spec.cwd if spec.cwd.startswith("/") else None, ports=spec.ports,
                             volumes=spec.volumes, user=spec.user, stop_signal=spec.stop_signal,
                             stop_timeout=spec.stop_timeout)

    async def start(self, spec: ServiceSpec, artifact: Artifact, index: int, env: Mapping[str, str], sink: LogSink,
                    label: str) -> Running:
        """Create and start the container in a thread (the engine's API calls take 0.1 to
        0.4 s each: on the loop they stalled every other replica's output and checks)."""
        try:
            client = self._sync_client()
            container_spec = self.container_spec(spec, artifact, index)
            container_id, pid = await asyncio.to_thread(_start_container, client, container_spec, sink, label)
        except EngineError as exc:
            raise StartFailed(str(exc)) from None
        return self._track(container_id, spec.stop_signal, pid)

    def _track(self, container_id: str, stop_signal: int, pid: int = 0) -> ContainerHandle:
        """The handle of a container (on the loop: its exit future); ``pid`` for display."""
        handle = ContainerHandle(container_id, asyncio.get_running_loop().create_future(), stop_signal, pid)
        self.handles[container_id] = handle
        if container_id in self.early:
            self._exited(container_id, self.early.pop(container_id))
        return handle

    def alive(self, running: Running) -> bool:
        return running.running

    def signal(self, running: Running, sig: int) -> None:
        """Sent from a thread (an API call): the caller, a shutdown signalling every replica at
        once, never waits on the engine; the stop that follows waits."""
        handle = _handle(running)
        if not handle.running or self.client is None:
            return
        client = self.client

        def send() -> None:
            with contextlib.suppress(EngineError):
                client.signal(handle.id, sig)

        asyncio.get_running_loop().run_in_executor(None, send)

    async def stop(self, running: Running, sig: int, timeout: float) -> Exit:
        handle = _handle(running)
        client = self._sync_client()
        try:
            if sig != handle.stop_signal and handle.running:  # not the container's own stop signal
                await asyncio.to_thread(client.signal, handle.id, sig)
            code = await asyncio.to_thread(client.stop, handle.id, timeout)
        except EngineError as exc:
            log.error("%s", exc)
            code = None
        self.handles.pop(handle.id, None)
        exit = Exit(*exit_of(code)) if code is not None and code >= 0 else Exit()
        handle.ended(exit)
        return handle.exited.result()

    async def cleanup(self, running: Running, sig: int, timeout: float) -> None:
        handle = _handle(running)
        self.handles.pop(handle.id, None)
        try:
            await asyncio.to_thread(self._sync_client().remove, handle.id)
        except EngineError as exc:
            log.error("%s", exc)

    def kill(self, running: Running) -> None:
        self.signal(running, _signal.SIGKILL)

    def record(self, running: Running) -> dict[str, Any]:
        return {"id": _handle(running).id}

    def adopt(self, record: ReplicaRecord, sink: LogSink, label: str) -> Running | None:
        """The container must still run and carry our instance label (checked with the engine);
        its output resumes after the cursor the previous supervisor saved."""
        container_id = record.handle.get("id")
        if not isinstance(container_id, str) or not container_id or len(container_id) > 128:
            return None
        client = self._connect_now()
        if client is None:
            return None
        try:
            mine = {o.id: o for o in client.owned()}
        except EngineError as exc:
            log.error("%s", exc)
            return None
        found = mine.get(container_id)
        if found is None or found.status != "running":
            return None
        client.follow(container_id, sink, label)
        pid = 0
        with contextlib.suppress(Exception):  # display only
            pid = int(client.api.inspect_container(container_id)["State"].get("Pid") or 0)
        return self._track(container_id, _signal.SIGTERM, pid)

    def _connect_now(self) -> ContainerExecutor | None:
        """Adoption runs before any pass: connect synchronously (None, logged, without an engine)."""
        if self.client is None:
            try:
                client = ContainerExecutor(self.state_dir, self.docker_host, None, asyncio.get_running_loop())
                client.watch_exits(self._exited)
            except EngineError as exc:
                log.error("cannot adopt containers: %s", exc)
                return None
            self.client = client
        return self.client

    def forget(self, record: ReplicaRecord) -> None:
        container_id = record.handle.get("id")
        client = self.client
        if isinstance(container_id, str) and container_id and client is not None:
            with contextlib.suppress(EngineError):
                client.remove(container_id)  # exited while nobody watched: ours, removed

    async def sweep_unrecorded(self) -> int:
        """Containers of ours that run with no replica holding them (a supervisor killed between
        starting one and writing its record): stopped and removed, so none runs twice."""
        client = self.client or self._connect_now()
        if client is None:
            return 0
        try:
            owned = await asyncio.to_thread(client.owned)
        except EngineError as exc:
            log.error("%s", exc)
            return 0
        strays = [o for o in owned if o.id not in self.handles]
        for item in strays:
            log.warning("%s: removing container %s that no record names (a previous supervisor was killed "
                        "while starting it)", item.service, item.id[:12])
            with contextlib.suppress(EngineError):
                await asyncio.to_thread(client.stop, item.id, 5)
        return len(strays)

    def detach(self, running: Running) -> None:
        handle = _handle(running)
        self.handles.pop(handle.id, None)
        client = self.client
        if client is not None:
            for follower in client.followers.pop(handle.id, []):
                follower.close()

    async def probe(self, check: Check, running: Running, env: Mapping[str, str], cwd: Path,
                    user: str | None = None) -> bool:
        """tcp and http checks from the host (against published ports); exec inside the
        container (``docker exec``), as the container's user."""
        if check.kind != "exec":
            return await health.probe(check, dict(env))
        handle = _handle(running)
        client = self._sync_client()
        try:
            return await asyncio.wait_for(asyncio.to_thread(_exec_ok, client, handle.id, list(check.argv)), check.timeout)
        except (asyncio.TimeoutError, Exception):
            return False

    async def sweep(self) -> list[int]:
        return []


def _handle(running: Running) -> ContainerHandle:
    return cast(ContainerHandle, running)


def _start_container(client: ContainerExecutor, spec: ContainerSpec, sink: LogSink, label: str) -> tuple[str, int]:
    """In a thread: create and start the container; its id and (for display, 0 when the
    engine does not say) its main process's host pid. Raises EngineError."""
    container_id = client.start(spec, sink, label)
    pid = 0
    with contextlib.suppress(Exception):  # display only
        pid = int(client.api.inspect_container(container_id)["State"].get("Pid") or 0)
    return container_id, pid


def _has_image(client: ContainerExecutor, tag: str) -> bool:
    try:
        client.api.inspect_image(tag)
        return True
    except Exception:
        return False


def _exec_ok(client: ContainerExecutor, container_id: str, argv: list[str]) -> bool:
    created = client.api.exec_create(container_id, argv)
    client.api.exec_start(created["Id"])
    return client.api.exec_inspect(created["Id"]).get("ExitCode") == 0

