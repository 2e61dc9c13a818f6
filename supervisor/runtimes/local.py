"""The local Runtime: services as processes on this machine, in a Python program.

It builds the same :class:`~supervisor.engine.Engine` as ``supervise`` does, on an event
loop in a thread of its own (exits are noticed by pidfd there, so the host program's signal
handlers are left alone). Service definitions go through the same validation as
``services.toml`` (given as data, not printed and parsed back): a bad one raises with the same
messages. The contract is go-micro's ``runtime`` (see :mod:`supervisor.runtimes.base`)::

    runtime = LocalRuntime(state_dir=".supervise")
    runtime.start()
    runtime.create(Service("api", source="https://example.org/api.git", version="main",
                           metadata={"build": "make", "poll": "30s"}), command=["./api"])

A host program that dies without calling :meth:`LocalRuntime.stop` (SIGKILL, or SIGTERM with
Python's default handler) leaves its services running: the next runtime on the same state dir
shows them in :meth:`~LocalRuntime.list` (``status = "left running"``), adopts the ones it
creates again instead of starting duplicates, and stops the others at its :meth:`stop`.

Other sources go in ``metadata``: ``{"pip": "REQUIREMENT", "index": URL, "extra_index": "URL,URL"}``
(a package from an index, one venv per version), ``{"image": "NAME:TAG"}`` or ``{"dockerfile":
"Dockerfile", "context": "."}`` (containers, through the Docker Engine API, as in services.toml).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Iterator, Mapping, Sequence

from ..desired import config
from ..observe import state
from ..desired.config import ConfigError
from ..engine import Engine
from ..redaction import redact
from ..observe.events import Event, EventType, Notifier as Bus
from ..desired.model import Desired, RestartPolicy, ServiceSpec, Settings
from ..execute.sources import SourceError
from .base import (
    CreateOption, CreateOptions, Notifier, Option, Options, ReadOption, ReadOptions, Runtime, RuntimeError_, Service,
    env_mapping,
)

log = logging.getLogger("supervise")

#: Seconds a create/update/delete may take before it raises (fetch + build + start).
CALL_TIMEOUT = 600.0
#: Service types a runtime can create.
TYPES = ("service", "job")


class LocalRuntime(Runtime):
    """Runs services as local processes. ``state_dir`` holds their logs, checkouts and state;
    ``poll`` is the default seconds between checks of git sources for new commits; ``opts``
    and ``options`` are the runtime's options (:meth:`init`)."""

    def __init__(self, state_dir: str | Path = ".supervise", poll: float = 60.0, *opts: Option,
                 notifier: Notifier | None = None, type: str | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.poll = poll
        self.options = Options()
        self.specs: dict[str, ServiceSpec] = {}
        self.given: dict[str, Service] = {}  # each service as create/update was given it
        self._commands: dict[str, tuple[list[str], dict[str, str]]] = {}  # argv and env, as created
        self.types: dict[str, str] = {}
        self.outputs: dict[str, IO[Any]] = {}
        self.bus = Bus()
        self.streams: list[EventStream] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.engine: Engine | None = None
        self._stopped: asyncio.Event | None = None
        self._lock = threading.RLock()
        self._adoption_checked: set[str] = set()
        self._updates: threading.Thread | None = None
        self.init(*opts, notifier=notifier, type=type)

    def __str__(self) -> str:
        return "local"

    def init(self, *opts: Option, notifier: Notifier | None = None, type: str | None = None) -> None:
        for option in opts:
            option(self.options)
        if notifier is not None:
            self.options.notifier = notifier
        if type is not None:
            self.options.type = type

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self.thread is not None:
                return
            ready = threading.Event()
            failure: list[BaseException] = []
            self.bus = Bus()  # a stopped runtime's bus is closed: events resume on a new one
            self._adoption_checked.clear()
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self._thread, args=(ready, failure), name="supervise-runtime",
                                           daemon=True)
            self.thread.start()
            ready.wait()
            if failure:
                self.thread.join(timeout=CALL_TIMEOUT)
                self.thread = None
                raise RuntimeError_(f"cannot start the runtime: {failure[0]}")
            if self.specs:  # created before a stop(): running again
                self._call(self._apply())
            if self.options.notifier is not None:
                self._updates = threading.Thread(target=self._follow, args=(self.options.notifier,),
                                                 name="supervise-updates", daemon=True)
                self._updates.start()

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
            self.engine = None
            for stream in self.streams:
                stream.close()
            self.streams.clear()
            if self.options.notifier is not None:
                self.options.notifier.close()  # as go-micro's Stop closes its notifier
            if self._updates is not None:
                self._updates.join(timeout=5)
                self._updates = None

    def __enter__(self) -> "LocalRuntime":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the interface ---------------------------------------------------------------------

    def create(self, service: Service, *opts: CreateOption, command: Sequence[str] = (), args: Sequence[str] = (),
               env: Sequence[str] | Mapping[str, str] = (), output: IO[Any] | None = None,
               type: str = "service") -> None:
        options = CreateOptions(command=command, args=args, env=env, output=output, type=type)
        for option in opts:
            option(options)
        if options.type not in TYPES:
            raise RuntimeError_(f'type must be "service" or "job", got {options.type!r}')
        if self.options.type is not None and options.type != self.options.type:
            raise RuntimeError_(f"this runtime manages services of type {self.options.type!r}, not {options.type!r}")
        argv = [*options.command, *options.args]
        if not argv:
            raise RuntimeError_("missing exec command")
        with self._lock:
            if service.name in self.specs:
                raise RuntimeError_(f"service {service.name} already registered (update or apply it)")
            spec = self._spec(service, argv, env_mapping(options.env), options.type)
            self.types[service.name] = options.type
            if options.output is not None:
                self.outputs[service.name] = options.output
            self.specs[service.name] = spec
            self.given[service.name] = Service(service.name, service.version, service.source, dict(service.metadata))
            self._commands[service.name] = (argv, env_mapping(options.env))
        self._call(self._apply())
        self._raise_if_failed(service.name)

    def read(self, *opts: ReadOption, service: str | None = None, version: str | None = None,
             type: str | None = None) -> list[Service]:
        options = ReadOptions(service=service, version=version, type=type)
        for option in opts:
            option(options)
        return self._call(self._read(options))

    def update(self, service: Service) -> None:
        with self._lock:
            if service.name not in self.specs:
                raise RuntimeError_(f"unknown service: {service.name}")
            argv, env = self._commands[service.name]
            old = self.given[service.name]
            version = service.version or old.version
            given = Service(service.name, version, service.source or old.source,
                            dict(service.metadata) if service.metadata else dict(old.metadata))
            spec = self._spec(given, argv, env, self.types[service.name])
            self.specs[service.name] = spec
            self.given[service.name] = given
        self._call(self._update(service.name, version))
        self._raise_if_failed(service.name)

    def delete(self, service: Service) -> None:
        with self._lock:
            if self.specs.pop(service.name, None) is None:
                return  # an unknown name is not an error (go-micro's Delete)
            self.types.pop(service.name, None)
            self.outputs.pop(service.name, None)
            self.given.pop(service.name, None)
            self._commands.pop(service.name, None)
        self._call(self._apply())

    def events(self, timeout: float | None = None) -> "EventStream":
        stream = EventStream(timeout)
        self._ensure_started()
        assert self.loop is not None
        self.streams.append(stream)
        bus = self.bus
        self.loop.call_soon_threadsafe(bus.add_listener, stream.put)
        return stream

    def notifier(self) -> "EventStream":
        """The runtime's own event stream under its old name (see :meth:`events`)."""
        return self.events()

    # -- a notifier for updates: the runtime acts on what it says ----------------------------

    def _follow(self, notifier: Notifier) -> None:
        """Read ``notifier``'s events until it closes; an ``update`` deploys the version it
        names for its service (every service when it names none)."""
        try:
            for event in notifier.notify():
                if event.type is not EventType.UPDATE:
                    continue
                names = [event.service] if event.service else list(self.specs)
                for name in names:
                    if name not in self.specs:
                        log.debug("update for unknown service %s ignored", name)
                        continue
                    try:
                        self.update(Service(name, version=event.version or ""))
                    except RuntimeError_ as exc:
                        log.warning("%s: update from the notifier failed: %s", name, exc)
        except Exception:  # a broken notifier must not take the runtime down
            log.exception("the update notifier failed")

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

    async def _update(self, name: str, version: str) -> None:
        assert self.engine is not None
        try:  # the engine's one way in for a new version (as for the poller and the watcher)
            await self.engine.deploy(name, version or None, spec=self.specs[name], trigger="update")
        except SourceError as exc:
            raise RuntimeError_(str(exc)) from None
        await self._apply()
        self.bus.emit(EventType.UPDATE, name, version or None, reason="update")

    async def _read(self, options: ReadOptions) -> list[Service]:
        assert self.engine is not None
        observed = self.engine.reconciler.observe()
        out = []
        for service_name, obs in observed.services.items():
            given = self.given.get(service_name)
            if given is None:
                continue
            kind = self.types.get(service_name, "service")
            build = obs.version or ""
            if options.service is not None and service_name != options.service:
                continue
            if options.version is not None and options.version != given.version and not (
                    build and build.startswith(options.version)):
                continue
            if options.type is not None and kind != options.type:
                continue
            if self.options.type is not None and kind != self.options.type:
                continue
            pids = [str(r.pid) for _, r in sorted(obs.replicas.items()) if r.pid]
            metadata = {**given.metadata, "build": build, "status": obs.phase.value,
                        "phase": obs.phase.value, "pids": ",".join(pids),
                        "replicas": str(self.specs[service_name].replicas), "type": kind,
                        "build_failed": "true" if obs.build_failed else "false"}
            # as given (pip/image sources are given in metadata), credentials in a URL never shown
            source = redact(given.source or self.specs[service_name].source.describe())
            out.append(Service(name=service_name, version=given.version, source=source, metadata=metadata))
        if options.service is None and options.version is None:
            out.extend(self._left_running(options))
        return out

    def _left_running(self, options: ReadOptions) -> list[Service]:
        """Services a previous host of this state dir left running and this one has not
        created (yet): shown so that nothing runs unseen; :meth:`stop` stops them."""
        out = []
        for name, record in state.load_all(self.state_dir).items():
            if name in self.specs or not record.replicas:
                continue
            if options.type is not None and options.type != "service":
                continue
            pids = ",".join(str(r.handle.get("pid", r.handle.get("id", "?"))) for _, r in sorted(record.replicas.items()))
            out.append(Service(name=name, metadata={"status": "left running", "pids": pids}))
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
        """Validate through the services.toml rules, given as data: one implementation of every
        check. A local git repository is a git source when ``version`` names a ref (never
        built in place, in the caller's work tree)."""
        meta = dict(service.metadata)
        table: dict[str, Any] = {"command": [str(a) for a in command]}
        source = service.source
        is_git = meta.pop("git", "") == "true" or "://" in source or source.endswith(".git") or (
            "@" in source and ":" in source) or (bool(service.version) and _is_git_repository(source))
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
            try:
                table["replicas"] = int(meta.pop("replicas"))
            except ValueError:
                raise RuntimeError_(f"{service.name}: replicas must be a whole number") from None
        if type == "job" and "restart" not in table:
            table["restart"] = RestartPolicy.ON_FAILURE.value
        document = {"supervise": {"state_dir": str(self.state_dir)}, "services": {service.name: table}}
        try:
            desired = config.validate(document, Path.cwd() / "runtime.toml")
        except ConfigError as exc:
            raise RuntimeError_("\n".join(d.message if not d.service else f"{d.service}: {d.message}"
                                          for d in exc.diagnostics)) from None
        return desired.services[service.name]


def _is_git_repository(path: str) -> bool:
    """A local folder that is a git repository (a work tree or a bare one)."""
    folder = Path(path)
    return (folder / ".git").exists() or ((folder / "HEAD").is_file() and (folder / "objects").is_dir())


class EventStream(Notifier):
    """The events of one LocalRuntime, handed across threads through a queue. :meth:`notify`
    ends when the runtime stops, :meth:`close` is called, or ``timeout`` s pass without an
    event."""

    def __init__(self, timeout: float | None = None):
        self.timeout = timeout
        self.queue: queue.Queue[Event | None] = queue.Queue()
        self.closed = False

    def put(self, event: Event) -> None:
        if not self.closed:
            self.queue.put(event)

    def notify(self) -> Iterator[Event]:
        while True:
            try:
                event = self.queue.get(timeout=self.timeout)
            except queue.Empty:
                return
            if event is None:
                return
            yield event

    def close(self) -> None:
        self.closed = True
        self.queue.put(None)


#: The old name of :class:`EventStream`.
QueueNotifier = EventStream
