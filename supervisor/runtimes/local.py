"""The local Runtime: services as processes on this machine, in a Python program.

It runs the same :class:`~supervisor.reconciler.Reconciler` as ``supervise`` does, on an event
loop in a thread of its own (exits are noticed by pidfd there, so the host program's signal
handlers are left alone). Service definitions go through the same validation as
``services.toml``: a bad one raises with the same messages.

    runtime = LocalRuntime(state_dir=".supervise")
    runtime.start()
    runtime.create(Service("api", source="https://example.org/api.git", version="main",
                           metadata={"build": "make", "poll": "30s"}), command=["./api"])

Other sources go in ``metadata``: ``{"pip": "REQUIREMENT", "index": URL, "extra_index": "URL,URL"}``
(a package from an index, one venv per version), ``{"image": "NAME:TAG"}`` or ``{"dockerfile":
"Dockerfile", "context": "."}`` (containers: refused by this version, as in services.toml).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Iterator, Mapping, Sequence

import tomlkit

from .. import config
from ..builds import source_root
from ..config import ConfigError
from ..events import Event, EventType, Notifier as Bus
from ..model import Desired, RestartPolicy, ServiceSpec, Settings
from ..daemon import StateLock
from ..reconciler import Reconciler
from ..sources import SourceError
from ..sources.git import GitSource
from ..watch import GitPoller
from .base import Notifier, Runtime, RuntimeError_, Service

#: Seconds a create/update/delete may take before it raises (fetch + build + start).
CALL_TIMEOUT = 600.0


class LocalRuntime(Runtime):
    """Runs services as local processes. ``state_dir`` holds their logs, checkouts and state;
    ``poll`` is the default seconds between checks of git sources for new commits."""

    def __init__(self, state_dir: str | Path = ".supervise", poll: float = 60.0):
        self.state_dir = Path(state_dir).resolve()
        self.poll = poll
        self.specs: dict[str, ServiceSpec] = {}
        self.types: dict[str, str] = {}
        self.outputs: dict[str, IO[Any]] = {}
        self.bus = Bus()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.reconciler: Reconciler | None = None
        self.poller: GitPoller | None = None
        self._stopped: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._adoption_checked: set[str] = set()
        self.lock = StateLock(self.state_dir)

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self.thread is not None:
                return
            ready = threading.Event()
            failure: list[BaseException] = []
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self._thread, args=(ready, failure), name="supervise-runtime",
                                           daemon=True)
            self.thread.start()
            ready.wait()
            if failure:
                raise RuntimeError_(f"cannot start the runtime: {failure[0]}")

    def _thread(self, ready: threading.Event, failure: list[BaseException]) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main(ready, failure))
        finally:
            self.loop.close()

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            self._stopped = asyncio.Event()
            self.lock.acquire()  # one runtime or daemon per state dir, as for the daemon
            self.reconciler = Reconciler(self._desired(), self.bus)
            await self.reconciler.start()
            self.poller = GitPoller(lambda name: source_root(self.state_dir, name),
                                    lambda spec: spec.source.poll or self.poll,
                                    self._new_commit, self._poll_error)
        except BaseException as exc:  # reported to start()
            failure.append(exc)
            self.lock.release()
            ready.set()
            return
        ready.set()
        await self._stopped.wait()
        self.poller.stop()
        # replicas a previous host left running for services this one never created: stop them too
        await self.reconciler.adopt(self._desired(), only=None)
        await self.reconciler.apply(self._desired())
        await self.reconciler.shutdown()
        self.bus.close()
        self.lock.release()

    def stop(self) -> None:
        with self._lock:
            if self.thread is None or self.loop is None:
                return
            if self._stopped is not None:
                self.loop.call_soon_threadsafe(self._stopped.set)
            self.thread.join(timeout=CALL_TIMEOUT)
            self.thread = None

    def __enter__(self) -> "LocalRuntime":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the interface ---------------------------------------------------------------------

    def create(self, service: Service, *, command: Sequence[str], env: Mapping[str, str] | None = None,
               output: IO[bytes] | IO[str] | None = None, type: str = "service") -> None:
        if type not in ("service", "job"):
            raise RuntimeError_(f'type must be "service" or "job", got {type!r}')
        spec = self._spec(service, command, env or {}, type)
        self.types[service.name] = type
        if output is not None:
            self.outputs[service.name] = output
        self.specs[service.name] = spec
        self._call(self._apply())
        self._raise_if_failed(service.name)

    def read(self, *, service: str | None = None, version: str | None = None,
             type: str | None = None) -> list[Service]:
        return self._call(self._read(service, version, type))

    def update(self, service: Service) -> None:
        if service.name not in self.specs:
            raise RuntimeError_(f"unknown service: {service.name}")
        self._call(self._update(service.name))
        self._raise_if_failed(service.name)

    def delete(self, service: Service) -> None:
        if self.specs.pop(service.name, None) is None:
            raise RuntimeError_(f"unknown service: {service.name}")
        self.types.pop(service.name, None)
        self.outputs.pop(service.name, None)
        self._call(self._apply())

    def notifier(self) -> "QueueNotifier":
        notifier = QueueNotifier(self)
        self._ensure_started()
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.bus.add_listener, notifier.put)
        return notifier

    # -- inside the loop -------------------------------------------------------------------

    def _desired(self) -> Desired:
        return Desired(settings=Settings(state_dir=self.state_dir, poll=self.poll),
                       services=MappingProxyType(dict(self.specs)))

    async def _apply(self) -> None:
        assert self.reconciler is not None and self.poller is not None
        desired = self._desired()
        new = {n for n in desired.services if n not in self._adoption_checked}
        if new:  # a previous host of this state dir may have left them running: adopt, not duplicate
            self._adoption_checked |= new
            await self.reconciler.adopt(desired, only=new)
        for name, stream in self.outputs.items():
            sink = self.reconciler.logs.sink(name)
            if stream not in sink.tees:
                sink.tees.append(stream)
        await self.reconciler.apply(desired)
        self.poller.set_services(desired.services.values())

    async def _update(self, name: str) -> None:
        assert self.reconciler is not None
        spec = self.specs[name]
        if spec.source.kind == "git":
            source = GitSource(spec.source, source_root(self.state_dir, name))
            try:
                commit = await asyncio.to_thread(source.remote_revision)
            except SourceError as exc:
                raise RuntimeError_(str(exc)) from None
            self.reconciler.revisions[name] = commit
        elif spec.source.kind == "pip":
            from ..sources.pip import PipSource

            try:
                version = await asyncio.to_thread(PipSource(spec.source, source_root(self.state_dir, name)).latest)
            except SourceError as exc:
                raise RuntimeError_(str(exc)) from None
            self.reconciler.revisions[name] = version
        else:
            from ..sources.path import content_hash

            assert spec.source.path is not None
            self.reconciler.revisions[name] = await asyncio.to_thread(content_hash, spec.source.path, [self.state_dir])
        await self._apply()

    async def _read(self, name: str | None, version: str | None, type: str | None) -> list[Service]:
        assert self.reconciler is not None
        out = []
        for service_name, controller in self.reconciler.controllers.items():
            if name is not None and service_name != name:
                continue
            spec = controller.spec
            running = controller.artifact.version if controller.artifact else ""
            kind = self.types.get(service_name, "service")
            if version is not None and not running.startswith(version):
                continue
            if type is not None and kind != type:
                continue
            pids = [str(r.pid) for _, r in sorted(controller.replicas.items()) if r.pid]
            out.append(Service(name=service_name, version=running, source=spec.source.describe(), metadata={
                "phase": controller.phase.value, "pids": ",".join(pids), "replicas": str(spec.replicas),
                "type": kind, "build_failed": "true" if controller.build_failed else "false"}))
        return out

    def _new_commit(self, name: str, commit: str) -> None:
        assert self.reconciler is not None and self.loop is not None
        self.reconciler.revisions[name] = commit
        self.loop.create_task(self._apply())

    def _poll_error(self, name: str, message: str) -> None:
        self.bus.emit(EventType.FETCH_FAILED, name, None, error=message)

    # -- helpers ---------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self.thread is None:
            self.start()

    def _call(self, coro: Any) -> Any:
        self._ensure_started()
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def _raise_if_failed(self, name: str) -> None:
        services = self.read(service=name)
        if services and services[0].metadata.get("build_failed") == "true":
            raise RuntimeError_(f"{name}: fetch or build failed; see {self.state_dir / 'logs' / (name + '.log')}")

    def _spec(self, service: Service, command: Sequence[str], env: Mapping[str, str], type: str) -> ServiceSpec:
        """Validate through the services.toml rules: one implementation of every check."""
        meta = dict(service.metadata)
        table: dict[str, Any] = {"command": [str(a) for a in command]}
        source = service.source
        is_git = meta.pop("git", "") == "true" or "://" in source or source.endswith(".git") or (
            "@" in source and ":" in source)
        if "pip" in meta or "image" in meta:  # a package on an index, or a published image
            kind = "pip" if "pip" in meta else "image"
            other_table: dict[str, Any] = {kind: meta.pop(kind)}
            for key in ("index", "poll"):
                if key in meta:
                    other_table[key] = meta.pop(key)
            if "extra_index" in meta:
                other_table["extra_index"] = [u for u in meta.pop("extra_index").split(",") if u]
            table["source"] = other_table
        elif source and is_git:
            git_table: dict[str, Any] = {"git": source, "ref": service.version or meta.pop("ref", "HEAD")}
            if "poll" in meta:
                git_table["poll"] = meta.pop("poll")
            table["source"] = git_table
        elif source:
            table["source"] = source
        if env:
            table["env"] = dict(env)
        for key in ("build", "cwd", "restart", "stop_timeout", "stop_signal", "update"):
            if key in meta:
                table[key] = meta.pop(key)
        if "dockerfile" in meta:  # an image built from the source (a container service)
            table["build"] = {"dockerfile": meta.pop("dockerfile"), "context": meta.pop("context", ".")}
        if "replicas" in meta:
            table["replicas"] = int(meta.pop("replicas"))
        if type == "job" and "restart" not in table:
            table["restart"] = RestartPolicy.ON_FAILURE.value
        document = {"supervise": {"state_dir": str(self.state_dir)}, "services": {service.name: table}}
        try:
            desired = config.parse(tomlkit.dumps(document), Path.cwd() / "runtime.toml")
        except ConfigError as exc:
            raise RuntimeError_("\n".join(d.message if not d.service else f"{d.service}: {d.message}"
                                          for d in exc.diagnostics)) from None
        return desired.services[service.name]


class QueueNotifier(Notifier):
    """Events of one LocalRuntime, handed across threads through a queue."""

    def __init__(self, runtime: LocalRuntime):
        self.runtime = runtime
        self.queue: queue.Queue[Event | None] = queue.Queue()
        self.closed = False

    def put(self, event: Event) -> None:
        if not self.closed:
            self.queue.put(event)

    def notify(self) -> Iterator[Event]:
        while True:
            event = self.queue.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        self.closed = True
        self.queue.put(None)
