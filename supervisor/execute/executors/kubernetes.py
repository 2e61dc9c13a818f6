"""Services with ``runtime = "kubernetes"`` beside local ones: a cluster behind the executor seam.

A file run by the local supervisor may put single services on a cluster (a service's
``runtime = "kubernetes"``, the cluster settings from ``[supervise] kubernetes``). The engine
then sees such a service as **one replica, the Deployment** (:func:`supervisor.model.ServiceSpec.slots`):

=====================  ==========================================================================
seam                   here
=====================  ==========================================================================
prepare artifact       the image: ``kubernetes.image``, or the source's version built and pushed
                       to ``kubernetes.registry`` (:mod:`supervisor.kube.images`)
start replica          the service's manifests (:func:`supervisor.kube.render.render_service`,
                       ``replicas`` pods) join the desired objects; a converge loop applies them
stop / signal          the replica is let go; its objects stay while the service is in the file
                       (a restart re-applies, a supervisor stop leaves the cluster running it,
                       as ``supervise run`` does on Ctrl-C); a service removed from the file has
                       its objects deleted (only ours: label and field manager)
probe                  the Deployment's rollout completed (``kubectl rollout status``'s rule)
adopt after restart    the objects are on the cluster: the replica is taken over as it is
=====================  ==========================================================================

The converge loop (:class:`supervisor.kube.converge.Converger`, in a thread, one pass every
``kubernetes.interval``, and at once when a replica starts or a watch of our Deployments
reports a change: a rollout's end is seen when it happens) owns every cluster call, so nothing
the engine waits on (a pass, a local service's start) ever waits on the cluster. An
unreachable cluster (no answer, 5xx, or no kubeconfig yet) is a transient error: retried with
backoff (1 s doubling to 60 s), reported once (``cluster-unreachable``, then
``cluster-reachable``), while local services run on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..builds import Artifact, PrepareError, make_version
from ...observe.events import EventType, Notifier
from ..logs import LogRegistry, LogSink
from ...desired.model import Check, Desired, Exit, ServiceSpec
from ...observe.state import ReplicaRecord
from . import Executor, Running, StartFailed

log = logging.getLogger("supervise")


@dataclass(eq=False)
class KubeHandle:
    """A service's Deployment as the engine's one replica: ``manifests`` as last rendered
    (``[Service?, Deployment]``), ``exited`` resolved when the engine lets it go."""

    service: str
    exited: asyncio.Future[Exit]
    manifests: list[dict[str, Any]] = field(default_factory=list)
    live: Check | None = None  # run by the kubelet in the pods (livenessProbe), not from here

    @property
    def pid(self) -> int:
        return 0  # no process on this machine

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def ended(self) -> None:
        if not self.exited.done():
            self.exited.set_result(Exit())


class KubeExecutor(Executor):
    """The ``kubernetes`` runtime of single services. ``desired()`` returns the engine's current
    :class:`~supervisor.model.Desired` (its kube services and ``[supervise] kubernetes``);
    events go to ``notifier``; ``clock`` is monotonic seconds (the rollout deadlines)."""

    name = "kubernetes"
    remote = True

    def __init__(self, state_dir: Path, logs_: LogRegistry, notifier: Notifier, desired: Callable[[], Desired],
                 clock: Callable[[], float] = time.monotonic):
        self.state_dir = state_dir
        self.logs = logs_
        self.notifier = notifier
        self.desired = desired
        self.clock = clock
        self.handles: dict[str, KubeHandle] = {}
        self.images: Any = None  # supervisor.kube.images.Images, made for the first built service
        self.converger: Any = None
        self.available: set[str] = set()
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self._reachability: Any = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._watcher: threading.Thread | None = None
        self._watch_stop = threading.Event()

    # -- the kube settings and the services on the cluster ----------------------------------

    def kube(self):
        from ...kube.schema import KubeConfig

        kube = self.desired().kubernetes
        return kube if isinstance(kube, KubeConfig) else KubeConfig()

    def wanted(self) -> set[str]:
        """The services of the file that run on the cluster."""
        desired = self.desired()
        return {n for n, s in desired.services.items() if (s.runtime or desired.settings.runtime) == self.name}

    # -- life ------------------------------------------------------------------------------

    async def open(self) -> None:
        self._ensure_loop()

    def _ensure_loop(self) -> None:
        """The converge loop, started on the engine's loop at first use (the executor is made
        when the first kubernetes service is, after the others were opened)."""
        from ...kube.policy import Reachability

        if self.task is None:
            self._loop_ref = asyncio.get_running_loop()
            self.wake = asyncio.Event()
            self._reachability = Reachability()
            self.task = asyncio.get_running_loop().create_task(self._loop(), name="kubernetes-converge")

    async def close(self) -> None:
        self._watch_stop.set()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
            self.task = None
        if self.images is not None:
            self.images.publisher.close()
        if self.converger is not None:
            self.converger.cluster.api_client.close()

    async def _loop(self) -> None:
        assert self.wake is not None
        while True:
            try:
                await asyncio.to_thread(self._pass)
            except Exception as exc:  # a bug must not end the loop: log it, try again later
                log.exception("kubernetes: converge pass failed: %s", exc)
            wait = self.kube().interval
            if self._reachability.retry_at:
                wait = max(0.05, min(wait, self._reachability.retry_at - self.clock()))
            try:
                await asyncio.wait_for(self.wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    def _connect(self) -> bool:
        """The converger, connected; False (reported once, retried with backoff) when no
        cluster can be reached or configured yet."""
        from ...kube.cluster import Cluster, ClusterError, connect
        from ...kube.converge import Converger

        if self.converger is not None:
            return True
        now = self.clock()
        if not self._reachability.due(now):
            return False
        kube = self.kube()
        try:
            api = connect(kube.context)
        except ClusterError as exc:
            _, first = self._reachability.failed(now)
            if first:
                log.warning("kubernetes: %s (retrying with backoff)", exc)
                self.notifier.emit(EventType.CLUSTER_UNREACHABLE, error=str(exc))
            return False
        self.converger = Converger(Cluster(api, kube.namespace), self.notifier, self.clock, self._reachability)
        self._watch()
        return True

    def _watch(self) -> None:
        """Watch our Deployments (a thread): each change (a rollout completing, an edit, a
        deletion) asks for a pass at once, so a rollout's end is seen when it happens, not at
        the next ``interval``. A broken watch is started again after a backoff (1 s doubling
        to 60 s); the interval passes go on meanwhile."""
        from ...kube.cluster import ClusterError

        loop, cluster, stop = self._loop_ref, self.converger.cluster, self._watch_stop

        def run() -> None:
            delay = 1.0
            while not stop.is_set():
                try:
                    for _ in cluster.watch("Deployment", stop, timeout=30):
                        delay = 1.0
                        assert loop is not None
                        loop.call_soon_threadsafe(self._request)
                except ClusterError as exc:
                    log.debug("kubernetes: watch of Deployments: %s", exc)
                except RuntimeError:  # the engine's loop is closed: we are done
                    return
                stop.wait(delay)
                delay = min(delay * 2, 60.0)

        self._watcher = threading.Thread(target=run, name="kubernetes-watch", daemon=True)
        self._watcher.start()

    def _pass(self) -> None:
        """One converge pass (in a thread): the started services' manifests applied, the
        services still in the file but not started held, the others' objects deleted."""
        if not self._connect():
            return
        objects: list[dict[str, Any]] = []
        for handle in list(self.handles.values()):
            if handle.running:
                objects.extend(handle.manifests)
        from ...kube.policy import rollout_state

        wanted = self.wanted()
        started = {h.service for h in self.handles.values() if h.running}
        held = wanted - started
        self.converger.step(objects, hold=held)
        # started here: our own rollout record; held (adopted after a restart): the cluster's word
        complete = {o["metadata"]["name"] for o in self.converger.observed
                    if o.get("kind") == "Deployment" and rollout_state(o)[0] == "complete"}
        self.available = ({name for name, record in self.converger.records.items() if record.done and name in started}
                          | (complete & held))

    def _request(self) -> None:
        if self.wake is not None:
            self.wake.set()

    # -- artifacts -------------------------------------------------------------------------

    def prepares_in_background(self, spec: ServiceSpec) -> bool:
        return spec.image_build is not None or spec.source.kind == "git"  # an image build may take minutes

    async def prepare(self, spec: ServiceSpec, protect: set[str]) -> Artifact:
        """The image of the version to run: ``kubernetes.image`` as it is (its version names
        the reference), or the source's version built and pushed to ``kubernetes.registry``."""
        from ...kube.images import Images, Publisher, PublishError, builds_image

        self._ensure_loop()
        kube = self.kube()
        own = kube.service(spec.name).image
        if own is not None:
            revision = hashlib.sha1(own.encode()).hexdigest()
            return Artifact(workdir=self.state_dir, version=make_version(revision, spec), revision=revision)
        if not builds_image(spec, own) or kube.registry is None:
            raise PrepareError("build", f"{spec.name}: no image for Kubernetes (kubernetes.image, or a Dockerfile "
                                        "build and kubernetes.registry)")
        if self.images is None or self.images.publisher.registry != kube.registry:
            settings = self.desired().settings
            self.images = Images(Publisher(self.state_dir, kube.registry, settings.docker_host))
        publisher = self.images.publisher
        sink = self.logs.sink(spec.name)
        try:
            workdir, version = await publisher.version(spec)
            last = publisher.published.get(spec.name)
            if last is None or last.version != version:
                sink.note(f"build {version} and push it to {kube.registry}")
                published = await asyncio.to_thread(publisher.push, spec, workdir, version)
                sink.note(f"pushed {published.reference}")
        except PublishError as exc:
            sink.note(f"{exc}")
            raise PrepareError("fetch" if exc.stage == "fetch" else "build", str(exc), exc.version, exc.tail) from None
        return Artifact(workdir=workdir, version=version, revision=version.rsplit("-", 1)[0])

    # -- replicas --------------------------------------------------------------------------

    async def start(self, spec: ServiceSpec, artifact: Artifact, index: int, env: Mapping[str, str], sink: LogSink,
                    label: str) -> Running:
        """Render the service at ``artifact``'s version and hand it to the converge loop
        (nothing here waits on the cluster). Raises StartFailed when it cannot be rendered."""
        from ...kube.images import builds_image
        from ...kube.render import RenderError, render_service

        self._ensure_loop()
        kube = self.kube()
        version = artifact.version if builds_image(spec, kube.service(spec.name).image) else None
        try:
            manifests, notes = render_service(spec, kube, version, keep_versions=self.desired().settings.keep_versions)
        except RenderError as exc:
            raise StartFailed("; ".join(exc.problems)) from None
        for note in notes:
            sink.note(f"kubernetes: {note}")
        old = self.handles.get(spec.name)
        if old is not None:
            old.ended()
        handle = KubeHandle(spec.name, asyncio.get_running_loop().create_future(), manifests, spec.live)
        self.handles[spec.name] = handle
        sink.note(f"kubernetes: {spec.name} applies to namespace {kube.namespace} ({spec.replicas} pods)")
        self._request()
        return handle

    def alive(self, running: Running) -> bool:
        return _handle(running).running

    def unobservable(self, running: Running) -> str:
        """While the cluster cannot be reached (or configured), what the Deployment does is
        not known here: "cluster unreachable" (retried with backoff, see the module doc)."""
        reach = self._reachability
        if reach is None or (reach.down_since is None and self.converger is not None):
            return ""
        return "cluster unreachable: state unknown (retrying)" if reach.down_since is not None else \
            "cluster not reached yet: state unknown"

    def signal(self, running: Running, sig: int) -> None:
        """Nothing to signal on this machine: the kubelet stops pods."""

    async def stop(self, running: Running, sig: int, timeout: float) -> Exit:
        """Let the replica go; the objects stay while the service is in the file (see the
        module doc) and go with the next pass once it is not."""
        handle = _handle(running)
        handle.ended()
        if self.handles.get(handle.service) is handle:
            del self.handles[handle.service]
        self._request()
        return handle.exited.result()

    async def cleanup(self, running: Running, sig: int, timeout: float) -> None:
        await self.stop(running, sig, timeout)

    def kill(self, running: Running) -> None:
        _handle(running).ended()

    def record(self, running: Running) -> dict[str, Any]:
        return {"kubernetes": _handle(running).service}

    def adopt(self, record: ReplicaRecord, sink: LogSink, label: str) -> Running | None:
        """The Deployment is on the cluster (or will be held there): taken over as it is, its
        manifests rendered again at the next start (a change of the file or the source)."""
        service = record.handle.get("kubernetes")
        if not isinstance(service, str) or not service:
            return None
        self._ensure_loop()
        handle = KubeHandle(service, asyncio.get_running_loop().create_future())
        return handle

    def forget(self, record: ReplicaRecord) -> None:
        """Nothing on this machine to remove."""

    def detach(self, running: Running) -> None:
        handle = _handle(running)
        if self.handles.get(handle.service) is handle:
            del self.handles[handle.service]

    async def probe(self, check: Check, running: Running, env: Mapping[str, str], cwd: Path,
                    user: str | None = None) -> bool:
        """Ready when the Deployment's rollout completed (the kubelet runs ``check`` in the
        pods as their readinessProbe; this machine cannot reach them). A liveness check is
        the kubelet's (livenessProbe: it restarts the pod): always alive from here."""
        handle = _handle(running)
        if handle.live is not None and check == handle.live:
            return True
        return handle.service in self.available

    async def sweep(self) -> list[int]:
        return []


def _handle(running: Running) -> KubeHandle:
    assert isinstance(running, KubeHandle)
    return running
