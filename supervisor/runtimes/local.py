"""The local Runtime: services as processes on this machine, in a Python program.

It builds the same :class:`~supervisor.engine.Engine` as ``supervise`` does, on an event
loop in a thread of its own (exits are noticed by pidfd there, so the host program's signal
handlers are left alone). Service definitions go through the same validation as
``services.toml``: a bad one raises with the same messages.

    runtime = LocalRuntime(state_dir=".supervise")
    runtime.start()
    runtime.create(Service("api", source="https://example.org/api.git", version="main",
                           metadata={"build": "make", "poll": "30s"}), command=["./api"])
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
from ..engine import Engine
from ..sources import SourceError
from ..sources.git import GitSource
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
        self.engine: Engine | None = None
        self._stopped: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._adoption_checked: set[str] = set()

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
        engine = Engine(self._desired(), bus=self.bus, watch_sources=False)
        try:
            self._stopped = asyncio.Event()
            await engine.open()  # one runtime or daemon per state dir: the engine's lock
        except BaseException as exc:  # reported to start()
            failure.append(exc)
            ready.set()
            return
        self.engine = engine
        runner = asyncio.ensure_future(engine.run(self._load))
        ready.set()
        await self._stopped.wait()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        # replicas a previous host left running for services this one never created: stop them too
        await engine.reconciler.adopt(self._desired(), only=None)
        await engine.apply(self._desired())
        await engine.close()
        self.bus.close()
        engine.release()

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

    async def _load(self) -> Desired:
        """The desired state of the services created so far (adopting, first, what a previous
        host of this state dir left running for new names: adopted, not duplicated)."""
        assert self.engine is not None
        desired = self._desired()
        new = {n for n in desired.services if n not in self._adoption_checked}
        if new:
            self._adoption_checked |= new
            await self.engine.reconciler.adopt(desired, only=new)
        for name, stream in self.outputs.items():
            sink = self.engine.reconciler.logs.sink(name)
            if stream not in sink.tees:
                sink.tees.append(stream)
        return desired

    async def _apply(self) -> None:
        assert self.engine is not None
        await self.engine.apply(await self._load())

    async def _update(self, name: str) -> None:
        assert self.engine is not None
        spec = self.specs[name]
        if spec.source.kind == "git":
            source = GitSource(spec.source, source_root(self.state_dir, name))
            try:
                commit = await asyncio.to_thread(source.remote_revision)
            except SourceError as exc:
                raise RuntimeError_(str(exc)) from None
        else:
            from ..sources.path import content_hash

            assert spec.source.path is not None
            commit = await asyncio.to_thread(content_hash, spec.source.path, [self.state_dir])
        self.engine.new_revision(name, commit)
        await self._apply()

    async def _read(self, name: str | None, version: str | None, type: str | None) -> list[Service]:
        assert self.engine is not None
        out = []
        for service_name, controller in self.engine.reconciler.controllers.items():
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
        if source and is_git:
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
