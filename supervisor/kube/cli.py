"""The verbs of ``supervise`` for a file with ``runtime = "kubernetes"``: ``render``, ``plan``,
``run``, ``status``, ``logs`` and ``events`` talk to the cluster (no local supervisor or
control socket is involved). ``supervisor.cli`` dispatches here; errors are raised as
``supervisor.cli.CliError`` (exit 1) or ``ConfigError`` (exit 2) like every other verb.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from ..desired import config
from ..desired.config import ConfigError
from .render import RenderError, render, to_yaml
from .schema import KubeConfig

log = logging.getLogger("supervise")


def runtime_of(path: Path) -> str:
    """``[supervise] runtime`` of the file, quickly (see :func:`supervisor.desired.config.runtime_of`:
    tomli, no validation, read with :func:`config.read_regular_file` so that a FIFO or a device
    under the file's name is refused instead of blocking the verb; "local" when the file cannot
    be read that way, and the local verbs then report why)."""
    return config.runtime_of(path)


def load(path: Path):
    """The validated file and its :class:`KubeConfig` (defaults when it has no kubernetes keys)."""
    desired = config.load(path, runtimes=config.RUNTIMES)
    kube = desired.kubernetes if isinstance(desired.kubernetes, KubeConfig) else KubeConfig()
    return desired, kube


def manifests(path: Path, tag: str | None = None) -> tuple[list[dict[str, Any]], KubeConfig, list[str]]:
    """``(manifests, kube config, notes)`` of the file; a service that cannot be rendered is a
    ConfigError naming the file (exit 2)."""
    desired, kube = load(path)
    versions = {name: tag for name in desired.services} if tag else {}
    try:
        rendered = render(desired, kube, versions)
    except RenderError as exc:
        raise config.located(path, exc.located) from None
    return list(rendered.manifests), kube, list(rendered.notes)


def images_for(path: Path, notifier=None):
    """An :class:`.images.Images` for the file's services whose images are built and pushed
    to ``kubernetes.registry`` (None when it has none): sources fetched into its state dir,
    images built by the container engine (``[supervise] docker_host``)."""
    from .images import Images, Publisher, builds_image

    desired, kube = load(path)
    if kube.registry is None or not any(builds_image(spec, kube.service(name).image)
                                        for name, spec in desired.services.items()):
        return None
    def output(service: str, data: bytes) -> None:  # the build and push output, at -v
        log.debug("%s | %s", service, data.decode("utf-8", "replace").rstrip())

    return Images(Publisher(desired.settings.state_dir, kube.registry, desired.settings.docker_host, output), notifier)


def built_manifests(path: Path, images, build: bool = True) -> tuple[list[dict[str, Any]], KubeConfig, list[str], set[str]]:
    """``(manifests, kube config, notes, held)``: as :func:`manifests`, each built service at
    the version ``images`` (an :class:`.images.Images`, or None) publishes now (``build``
    False: the source's version, not built); ``held`` names the built services with no version
    pushed yet, left out of the manifests (their objects stay as they are)."""
    desired, kube = load(path)
    versions: dict[str, str] = {}
    held: set[str] = set()
    if images is not None:
        versions, held = images.versions(desired, kube, build=build)
    if held:
        from dataclasses import replace
        from types import MappingProxyType

        desired = replace(desired, services=MappingProxyType({n: s for n, s in desired.services.items() if n not in held}))
    try:
        rendered = render(desired, kube, versions)
    except RenderError as exc:
        raise config.located(path, exc.located) from None
    return list(rendered.manifests), kube, list(rendered.notes), held


def cmd_render(path: Path, tag: str | None = None) -> int:
    """``supervise render``: the manifests as YAML on stdout; notes on stderr."""
    objects, _, notes = manifests(path, tag)
    for note in notes:
        print(f"supervise: note: {note}", file=sys.stderr)
    sys.stdout.write(to_yaml(objects))
    return 0


def _cluster(kube: KubeConfig):
    from ..cli import CliError
    from .cluster import Cluster, ClusterError, connect

    try:
        return Cluster(connect(kube.context), kube.namespace)
    except ClusterError as exc:
        raise CliError(str(exc)) from None


def _calling(what: str, call, *args, **kwargs):
    from ..cli import CliError
    from .cluster import ClusterError

    try:
        return call(*args, **kwargs)
    except ClusterError as exc:
        raise CliError(f"{what}: {exc}") from None


def cmd_plan(path: Path, as_json: bool = False) -> int:
    """``supervise plan`` against the cluster: one action and its reason a line (drift too);
    ``--json``: ``{"ok": true, "against": "cluster", "actions": [line, ...]}``."""
    from .converge import Converger

    images = images_for(path)
    try:  # a built service at its source's version now (fetched, not built): what run would push
        objects, kube, _, held = built_manifests(path, images, build=False)
    finally:
        if images is not None:
            images.publisher.close()
    cluster = _cluster(kube)
    actions = _calling("plan", Converger(cluster).plan, objects, held)
    if as_json:
        print(json.dumps({"ok": True, "against": "cluster", "actions": [a.line() for a in actions]}, indent=2))
        return 0
    for action in actions:
        print(action.line())
    if not actions:
        print("nothing to do")
    return 0


def _observe(kube: KubeConfig):
    cluster = _cluster(kube)
    objects = _calling("status", cluster.owned)
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    return cluster, deployments


def cmd_status(path: Path, services: list[str], as_json: bool) -> int:
    """``supervise status`` from the cluster: a row per pod (exit 3 unless all run)."""
    from ..cli import CliError
    from ..control.verbs.base import print_status
    from .readback import status_rows

    desired, kube = load(path)
    unknown = [s for s in services if s not in desired.services]
    if unknown:
        raise CliError("unknown service: " + ", ".join(unknown))
    cluster, deployments = _observe(kube)
    wanted = services or list(desired.services)
    rows = status_rows([d for d in deployments if d["metadata"]["name"] in wanted],
                       _calling("status", cluster.pods), services=wanted)
    present = {row["service"] for row in rows}
    for name in wanted:  # in the file, not (yet) on the cluster
        if name not in present:
            rows.append({"service": name, "replica": None, "phase": "pending", "pid": None, "version": None,
                         "uptime": None, "restarts": 0, "last_exit": None, "ready": False,
                         "message": "not on the cluster", "desired": desired.services[name].replicas})
    if as_json:
        print(json.dumps({"services": rows, "runtime": "kubernetes", "namespace": kube.namespace}, indent=2))
    else:
        print_status(rows)
    up = all(row["phase"] in ("running", "ready") or (row.get("desired") == 0 and row["replica"] is None)
             for row in rows)
    return 0 if up else 3


def cmd_logs(path: Path, services: list[str], lines: int, follow: bool) -> int:
    """``supervise logs [-f]`` from the pods' logs through the API: ``POD | line``."""
    from ..cli import CliError
    from .readback import log_lines

    desired, kube = load(path)
    unknown = [s for s in services if s not in desired.services]
    if unknown:
        raise CliError("unknown service: " + ", ".join(unknown))
    cluster = _cluster(kube)
    names = services or list(desired.services)
    if not follow:
        for pod, line in _calling("logs", lambda: list(log_lines(cluster, names, tail=lines))):
            print(f"{pod} | {line}")
        return 0
    pods = [p["metadata"]["name"] for name in names for p in _calling("logs", cluster.pods, name)]
    lock = threading.Lock()

    def pump(pod: str) -> None:
        try:
            for line in cluster.follow(pod, tail=lines):
                with lock:
                    print(f"{pod} | {line}", flush=True)
        except Exception as exc:  # one pod's stream ending badly must not end the others
            log.warning("logs of %s: %s", pod, exc)

    threads = [threading.Thread(target=pump, args=(pod,), daemon=True) for pod in pods]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_events(path: Path, services: list[str]) -> int:
    """``supervise events`` from the cluster's Events (one JSON object a line): the ones there
    now, oldest first, then new ones as a watch streams them (:meth:`.cluster.Cluster.watch_events`:
    no polling; a 410 Gone lists again), until interrupted."""
    from .readback import events

    desired, kube = load(path)
    cluster = _cluster(kube)
    names = services or list(desired.services)
    backlog: list[dict[str, Any]] | None = []  # None once live
    for item in _calling_each("events", cluster.watch_events()):
        if item is None:  # the first list ended: print it in time order, then stream
            for event in events(backlog or [], names):
                print(event.to_json(), flush=True)
            backlog = None
        elif backlog is not None:
            backlog.append(item)
        else:
            for event in events([item], names):
                print(event.to_json(), flush=True)
    return 0


def _calling_each(what: str, iterator):
    from ..cli import CliError
    from .cluster import ClusterError

    try:
        yield from iterator
    except ClusterError as exc:
        raise CliError(f"{what}: {exc}") from None


def _watch_deployments(cluster, stop: threading.Event, wake: threading.Event) -> None:
    """Wake the converge loop at each change of our Deployments (a rollout completing, an
    edit), through a watch (:meth:`.cluster.Cluster.watch`); a broken watch starts again
    after a backoff (1 s doubling to 60 s) while the interval passes go on."""
    from .cluster import ClusterError

    delay = 1.0
    while not stop.is_set():
        try:
            for _ in cluster.watch("Deployment", stop, timeout=30):
                delay = 1.0
                wake.set()
        except ClusterError as exc:
            log.debug("kubernetes: watch of Deployments: %s", exc)
        stop.wait(delay)
        delay = min(delay * 2, 60.0)


def cmd_run(path: Path, quiet: bool = False) -> int:
    """``supervise run`` for ``runtime = "kubernetes"``: converge the cluster to the file and
    keep it there, a pass every ``kubernetes.interval`` and at each change a watch of our
    Deployments reports, re-reading the file each pass (a file that does not
    validate is reported once; the last good one stays in force). Events are printed as
    ``supervise | ...`` lines. SIGINT/SIGTERM end the loop and leave the cluster as it is:
    the objects belong to the cluster, not to this process."""
    import signal

    from ..observe.events import Notifier
    from .converge import Converger

    notifier = Notifier()
    if not quiet:
        notifier.add_listener(lambda e: log.info("%s %s%s%s", e.type.value, e.service or "",
                                                 f" {e.version}" if e.version else "",
                                                 f": {e.data.get('reason') or e.data.get('image') or ''}"
                                                 if e.data.get("reason") or e.data.get("image") else ""))
    _, kube = load(path)
    cluster = _cluster(kube)
    images = images_for(path, notifier)
    objects, kube, notes, held = built_manifests(path, images)
    for note in notes:
        log.info("note: %s", note)
    converger = Converger(cluster, notifier)
    stop, wake = threading.Event(), threading.Event()

    def ending(*_: Any) -> None:
        stop.set()
        wake.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, ending)
    threading.Thread(target=_watch_deployments, args=(cluster, stop, wake), name="kubernetes-watch",
                     daemon=True).start()
    state: dict[str, Any] = {"objects": objects, "held": held, "error": None, "first": True}

    def desired() -> list[dict[str, Any]]:
        if state["first"]:  # the pass above
            state["first"] = False
            return state["objects"]
        try:
            new, new_kube, _, held = built_manifests(path, images)
        except ConfigError as exc:
            if str(exc) != state["error"]:
                state["error"] = str(exc)
                log.error("%s (the last good file stays in force)", exc)
            return state["objects"]
        state["error"] = None
        if new_kube.namespace != kube.namespace or new_kube.context != kube.context:
            log.error("kubernetes namespace or context changed: restart supervise to move (kept %s)", kube.namespace)
            return state["objects"]
        state["objects"], state["held"] = new, held
        return new

    log.info("kubernetes: converging namespace %s at %s", kube.namespace, cluster.api_client.configuration.host)
    try:
        converger.run(desired, stop, kube.interval, hold=lambda: state["held"], wake=wake)
    finally:
        if images is not None:
            images.publisher.close()
    return 0
