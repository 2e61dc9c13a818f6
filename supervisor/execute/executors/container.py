"""Replicas as containers, through the Docker Engine API (the ``docker`` SDK), served by Docker
or by podman (``podman system service``).

The operations map one to one onto the engine's executor seam:

=====================  ==========================================================================
seam                   here
=====================  ==========================================================================
prepare artifact       :meth:`ContainerExecutor.build_version` (a checkout's Dockerfile +
                       context, tagged with the version) or
                       :meth:`ContainerExecutor.ensure_image` (inspect, else pull)
start replica          :meth:`ContainerExecutor.start` (a :class:`ContainerSpec`)
stop / signal          :meth:`ContainerExecutor.stop` (stop signal, ``stop_timeout``, SIGKILL,
                       then remove) / :meth:`ContainerExecutor.signal`
observe exits          :meth:`ContainerExecutor.watch_exits` (the engine's events API, ``die``;
                       no polling), each exit reported once, after the container's logs drained
adopt after restart    :meth:`ContainerExecutor.owned` (by label) + :meth:`ContainerExecutor.follow`
read logs              :meth:`ContainerExecutor.follow` (stdout and stderr followed separately,
                       partial lines kept per stream, a cursor on disk so nothing is lost or
                       repeated across a supervisor restart)
=====================  ==========================================================================

Every container and image we make carries the labels ``io.supervise.instance`` (a hash of the
state dir: one supervisor's own), ``.service``, ``.replica`` and ``.version``; nothing without
our instance label is ever stopped or removed (Docker Compose finds its containers the same way,
by ``com.docker.compose.project`` labels).

The SDK is blocking: call these methods from a thread (``asyncio.to_thread``). Log lines and
exits are delivered from helper threads; pass ``loop`` to have them delivered on an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import signal as _signal
import stat
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import docker
import docker.errors
from docker.types.daemon import CancellableStream

from ...observe import safefs

log = logging.getLogger("supervise")

LABEL = "io.supervise"
L_INSTANCE, L_SERVICE, L_REPLICA, L_VERSION = (f"{LABEL}.{k}" for k in ("instance", "service", "replica", "version"))

#: Where an engine usually listens, tried in order when neither the setting nor $DOCKER_HOST
#: names one (Docker's default, then rootful and rootless podman, then rootless Docker).
USUAL_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock",
                 "$XDG_RUNTIME_DIR/podman/podman.sock", "$XDG_RUNTIME_DIR/docker.sock")
#: Seconds for one API call (a build or a pull streams, and has no such limit).
API_TIMEOUT = 60
#: How many of a failed build's last output lines its error carries.
TAIL_LINES = 10
#: Seconds an exit report waits for the container's last log lines to be read.
DRAIN_TIMEOUT = 5.0
#: What an engine's container id looks like (Docker and podman: 64 hex digits; 12 at least).
_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")


class EngineError(Exception):
    """The container engine is absent, unreachable, or refused a request. One line, for users."""


class ImageBuildError(EngineError):
    """A Dockerfile build failed; ``tail`` holds its last output lines."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


class BuildCancel:
    """Lets another thread (the event loop, when the prepare that waits for a build is
    cancelled) end an image build under way: the build's API stream is cut (the SDK's
    ``CancellableStream.close``: the socket shut down), so the thread reading it returns at
    once and the engine, whose client went away, stops the build (Docker's documented
    behaviour for ``POST /build``). Thread-safe; a cancel before the stream opens applies
    when it does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._close: Callable[[], None] | None = None
        self.cancelled = False

    def attach(self, close: Callable[[], None]) -> None:
        """The build's stream is open: ``close`` cuts it."""
        with self._lock:
            self._close = close
            cancelled = self.cancelled
        if cancelled:
            self._cut(close)

    def cancel(self) -> None:
        """Cut the stream now (or as soon as it opens)."""
        with self._lock:
            self.cancelled = True
            close = self._close
        if close is not None:
            self._cut(close)

    @staticmethod
    def _cut(close: Callable[[], None]) -> None:
        with contextlib.suppress(Exception):  # already ended, or not a socket we can shut
            close()


class LineSink(Protocol):
    """Where a container's output goes: ``logs.LogSink`` has this shape. ``data`` is whole
    lines (bytes ending in ``\\n``); ``label`` names the replica (``NAME`` or ``NAME.i``)."""

    def write(self, data: bytes, source: int | None = None, label: str | None = None) -> None: ...


# -- pure helpers (table-tested) ------------------------------------------------------------

def engine_url(setting: str | None = None, environ: Mapping[str, str] | None = None,
               exists: Callable[[str], bool] | None = None) -> str:
    """The Engine API address: ``setting`` (``[supervise] docker_host``), else ``$DOCKER_HOST``,
    else the first of :data:`USUAL_SOCKETS` that is a socket. A bare path becomes ``unix://``.

    Raises EngineError naming what was tried when there is none.
    """
    environ = os.environ if environ is None else environ
    exists = exists or _is_socket
    for candidate in (setting, environ.get("DOCKER_HOST")):
        if candidate:
            return candidate if "://" in candidate else f"unix://{candidate}"
    tried = []
    for pattern in USUAL_SOCKETS:
        if "$XDG_RUNTIME_DIR" in pattern:
            if not environ.get("XDG_RUNTIME_DIR"):
                continue
            pattern = pattern.replace("$XDG_RUNTIME_DIR", environ["XDG_RUNTIME_DIR"])
        tried.append(pattern)
        if exists(pattern):
            return f"unix://{pattern}"
    raise EngineError("no container engine: set [supervise] docker_host or $DOCKER_HOST, or start Docker "
                      f"or `podman system service` (no socket at {', '.join(tried)})")


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def instance_id(state_dir: Path) -> str:
    """12 hex digits naming one supervisor's containers: a hash of its (absolute) state dir, so
    the next supervisor on the same state dir finds them again."""
    return hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]


def image_repository(service: str) -> str:
    """``localhost/supervise-NAME``: where the images built for ``service`` are tagged. Docker
    repository names are lowercase ``[a-z0-9]`` runs joined by ``.``, ``_`` or ``-``."""
    name = re.sub(r"[^a-z0-9]+", "-", service.lower()).strip("-") or "service"
    if name != service:  # two services must not share a repository after folding
        name = f"{name}-{hashlib.sha1(service.encode()).hexdigest()[:6]}"
    return f"localhost/supervise-{name}"


def image_tag(service: str, version: str) -> str:
    """``localhost/supervise-NAME:VERSION`` (a Docker tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{,127}``)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", version)[:128]
    return f"{image_repository(service)}:{tag}"


_PORT = re.compile(r"^(?:(?:(?P<ip>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<host>\d{1,5})?:)?(?P<ctr>\d{1,5})(?:/(?P<proto>tcp|udp|sctp))?$")


def parse_port(text: str) -> tuple[str, tuple[str, int] | int | None]:
    """``"8080:80"`` -> ``("80/tcp", 8080)``; ``"127.0.0.1:8080:80/udp"`` -> ``("80/udp",
    ("127.0.0.1", 8080))``; ``"80"`` -> ``("80/tcp", None)`` (a port the engine picks).
    Docker's ``-p [IP:][HOST:]CONTAINER[/PROTO]`` syntax, one port a string. Raises ValueError.
    """
    match = _PORT.match(text.strip()) if len(text) <= 64 else None
    if not match:
        raise ValueError(f'bad port {_clip(text)}: use "HOST:CONTAINER", "IP:HOST:CONTAINER" or "CONTAINER", with an optional "/udp"')
    ctr = int(match["ctr"])
    host = int(match["host"]) if match["host"] else None
    for port in (ctr, host):
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"bad port {_clip(text)}: {port} is not between 1 and 65535")
    key = f"{ctr}/{match['proto'] or 'tcp'}"
    if match["ip"]:
        return key, (match["ip"].strip("[]"), host or 0)
    return key, host


def parse_volume(text: str, base: Path) -> tuple[str, dict[str, str]]:
    """``"./data:/data:ro"`` -> ``("BASE/data", {"bind": "/data", "mode": "ro"})``: Docker's
    ``-v SOURCE:TARGET[:ro|rw]``. A SOURCE starting with ``.`` or ``/`` is a host folder (a
    relative one against ``base``); another SOURCE is a named volume. Raises ValueError."""
    if "\0" in text:
        raise ValueError(f"bad volume {_clip(text)}: it holds a NUL character")
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise ValueError(f'bad volume {_clip(text)}: use "SOURCE:/container/path" or "SOURCE:/container/path:ro"')
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f'bad volume {_clip(text)}: the mode must be "ro" or "rw"')
    source = parts[0]
    if source.startswith((".", "/", "~")):
        source = str((base / os.path.expanduser(source)).resolve())
    elif not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", source):
        raise ValueError(f"bad volume {_clip(text)}: {_clip(source)} is neither a path nor a volume name")
    return source, {"bind": parts[1], "mode": mode}


def _clip(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to ``limit`` characters (an error message echoes what it refuses)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def exit_of(code: int) -> tuple[int | None, int | None]:
    """(code, signal) from a container's exit status: Docker reports a signal as 128+N."""
    if 128 < code < 128 + 65:
        return None, code - 128
    return code, None


# -- shapes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContainerSpec:
    """One replica as a container. ``command`` None keeps the image's CMD. ``stop_signal`` is a
    signal number, ``stop_timeout`` seconds (rounded up: the API takes whole seconds)."""

    service: str
    replica: int
    version: str
    image: str
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    volume_base: Path = Path(".")
    user: str | None = None
    stop_signal: int = _signal.SIGTERM
    stop_timeout: float = 10.0


@dataclass(frozen=True)
class Owned:
    """A container of ours as the engine lists it. ``status`` is Docker's (``running``,
    ``exited``, ``created``...); ``exit_code`` is set once it has exited."""

    id: str
    name: str
    service: str
    replica: int
    version: str
    status: str
    exit_code: int | None


class _Follower:
    """Follows one stream (stdout or stderr) of one container in a thread.

    The engine keeps each write as a record (conmon splits them at newlines). Lines are passed
    on whole; a record without a newline waits for the rest of its line. ``cursor`` counts the
    records consumed up to the last line boundary, so a follower resumed with it (after a
    supervisor restart) neither repeats nor drops a line.
    """

    def __init__(self, executor: "ContainerExecutor", container_id: str, stream: str, skip: int,
                 deliver: Callable[[bytes, str, int | None], None]):
        self.executor, self.container_id, self.stream = executor, container_id, stream
        self.skip, self.deliver = skip, deliver
        self.response = None
        self.thread = threading.Thread(target=self._run, name=f"logs-{container_id[:12]}-{stream}", daemon=True)
        self.done = threading.Event()

    def _run(self) -> None:
        seen = self.skip
        pending = b""
        try:
            stream = self.executor.api.logs(self.container_id, stdout=self.stream == "stdout",
                                            stderr=self.stream == "stderr", stream=True, follow=True)
            self.response = stream
            for index, record in enumerate(stream):
                if index < self.skip:
                    continue
                seen = index + 1
                pending += record
                cut = pending.rfind(b"\n") + 1
                if cut:
                    data, pending = pending[:cut], pending[cut:]
                    self.deliver(data, self.stream, None if pending else seen)
        except Exception as exc:  # the engine went away, or close() cut the stream
            if not self.executor.closing:
                log.debug("logs of %s (%s) ended: %s", self.container_id[:12], self.stream, exc)
        finally:
            if pending and not self.executor.closing:  # the last line had no newline
                self.deliver(pending + b"\n", self.stream, seen)
            self.done.set()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.response is not None:
                self.response.close()


class ContainerExecutor:
    """One supervisor's containers on one engine (see the module doc for the seam it offers).

    ``state_dir``: the supervisor's (names the instance; log cursors go to
    ``STATE_DIR/containers/``). ``docker_host``: the ``[supervise] docker_host`` setting.
    ``loop``: when given, log lines and exits are delivered on it; otherwise on helper threads
    (one lock serialises the log deliveries). Raises EngineError when no engine answers.
    """

    def __init__(self, state_dir: Path, docker_host: str | None = None, environ: Mapping[str, str] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.state_dir = Path(state_dir)
        self.instance = instance_id(self.state_dir)
        self.url = engine_url(docker_host, environ)
        self.loop = loop
        self.closing = False
        self.followers: dict[str, list[_Follower]] = {}
        self.cursors: dict[str, dict[str, int]] = {}
        self.cursor_failed: set[str] = set()  # containers whose cursor could not be saved (said once)
        self.cursor_folder_checked = False
        self.reported: set[str] = set()
        self.deliver_lock = threading.Lock()
        self.events_stream = None
        try:
            self.client = docker.DockerClient(base_url=self.url, timeout=API_TIMEOUT)
            self.client.ping()
        except Exception as exc:
            raise EngineError(f"cannot reach the container engine at {self.url}: {_short(exc)}") from None
        self.api = self.client.api

    # -- prepare -------------------------------------------------------------------------

    def build(self, context: Path, dockerfile: str, tag: str, service: str,
              on_output: Callable[[bytes], None] | None = None, cancel: BuildCancel | None = None) -> str:
        """Build ``context`` with ``dockerfile`` (relative to it) into ``tag``; the image id.

        The build's output goes to ``on_output`` line by line. A failed build raises
        ImageBuildError with its last lines; the tag then still names the previous image, so
        whatever runs keeps running. ``cancel``: another thread may end the build with it
        (then ImageBuildError "image build cancelled"); the build then has an API client of its
        own, whose response is caught with a requests response hook.
        """
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        image_id = None
        api = self.api
        if cancel is not None:
            api = docker.APIClient(base_url=self.url, version=self.api.api_version, timeout=API_TIMEOUT)
            responses: list = []
            api.hooks["response"].append(lambda response, *args, **kwargs: responses.append(response))
        try:
            stream = api.build(path=str(context), dockerfile=dockerfile, tag=tag, rm=True, forcerm=True,
                               decode=True, labels={L_INSTANCE: self.instance, L_SERVICE: service})
            if cancel is not None and responses:
                cancel.attach(CancellableStream(stream, responses[-1]).close)
            for chunk in stream:
                text = chunk.get("stream") or ""
                if "error" in chunk:
                    text = (chunk.get("error") or "").rstrip("\n") + "\n"
                    tail.append(text.strip())
                    if on_output:
                        on_output(text.encode())
                    raise ImageBuildError(f"image build failed: {text.strip()}", list(tail))
                if text:
                    for line in text.splitlines():
                        if line.strip():
                            tail.append(line.strip())
                    if on_output:
                        on_output(text.encode())
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = aux["ID"]
        except ImageBuildError:
            raise
        except docker.errors.BuildError as exc:
            raise ImageBuildError(f"image build failed: {_short(exc)}", list(tail)) from None
        except Exception as exc:  # noqa: BLE001 - the SDK and urllib3 raise many kinds on a cut stream
            if cancel is not None and cancel.cancelled:
                raise ImageBuildError("image build cancelled", list(tail)) from None
            if not isinstance(exc, (docker.errors.DockerException, OSError)):
                raise
            raise ImageBuildError(f"image build failed: {_short(exc)}", list(tail)) from None
        finally:
            if api is not self.api:
                api.close()
        if cancel is not None and cancel.cancelled:
            raise ImageBuildError("image build cancelled", list(tail))
        try:
            return image_id or self.api.inspect_image(tag)["Id"]
        except docker.errors.DockerException as exc:
            raise ImageBuildError(f"image build produced no image {tag}: {_short(exc)}", list(tail)) from None

    def build_version(self, service: str, version: str, workdir: Path, dockerfile: str = "Dockerfile",
                      context: str = ".", on_output: Callable[[bytes], None] | None = None,
                      cancel: BuildCancel | None = None) -> str:
        """Build the image of one version of ``service`` from its checkout (or folder)
        ``workdir``: ``context`` relative to it, ``dockerfile`` relative to the context (Docker
        Compose's ``build.context`` / ``build.dockerfile``). Returns the tag,
        :func:`image_tag`. Both paths must stay inside ``workdir`` (EngineError otherwise);
        a failed build raises ImageBuildError and leaves every other tag as it was."""
        root = Path(workdir).resolve()
        folder = (root / context).resolve()
        file = (folder / dockerfile).resolve()
        if not folder.is_relative_to(root) or not file.is_relative_to(folder):
            raise EngineError(f"{service}: build context {context!r} and dockerfile {dockerfile!r} must stay inside the source")
        if not file.is_file():
            raise ImageBuildError(f"{service}: no {dockerfile} in {folder}", [])
        tag = image_tag(service, version)
        self.build(folder, str(file.relative_to(folder)), tag, service, on_output, cancel)
        return tag

    def ensure_image(self, ref: str) -> str:
        """The id of image ``ref``, pulled first when the engine does not have it. EngineError."""
        try:
            return self.api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot inspect image {ref}: {_short(exc)}") from None
        try:  # the SDK splits NAME[:TAG|@DIGEST] and pulls "latest" when no tag is named
            self.client.images.pull(ref)
            return self.api.inspect_image(ref)["Id"]
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot pull image {ref}: {_short(exc)}") from None

    def prune_images(self, service: str, keep: Iterable[str]) -> list[str]:
        """Remove the images built for ``service`` whose tags are not in ``keep`` (full tags:
        the running and the newest ``keep_versions``); an image still in use stays. Returns the
        removed tags."""
        keep = set(keep)
        removed = []
        repository = image_repository(service)
        for image in self.api.images(filters={"label": f"{L_INSTANCE}={self.instance}"}):
            for tag in image.get("RepoTags") or []:
                if tag.rsplit(":", 1)[0] == repository and tag not in keep:
                    with contextlib.suppress(docker.errors.DockerException):
                        self.api.remove_image(tag)
                        removed.append(tag)
        return removed

    # -- start / stop -------------------------------------------------------------------

    def start(self, spec: ContainerSpec, sink: LineSink | None = None, label: str | None = None) -> str:
        """Create and start a container for ``spec``; its id. Its output is followed into
        ``sink`` from its first line. Raises EngineError (the half-made container removed)."""
        self.ensure_image(spec.image)
        port_bindings: dict[str, object] = {}
        for text in spec.ports:
            key, binding = parse_port(text)
            port_bindings[key] = binding
        binds = dict(parse_volume(text, spec.volume_base) for text in spec.volumes)
        name = f"supervise-{self.instance}-{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.service)}-{spec.replica}-{os.urandom(3).hex()}"
        try:
            host_config = self.api.create_host_config(port_bindings=port_bindings or None, binds=binds or None)
            created = self.api.create_container(
                spec.image, command=list(spec.command) if spec.command is not None else None, name=name,
                environment=dict(spec.env), working_dir=spec.working_dir, user=spec.user or None,
                ports=[(int(k.split("/")[0]), k.split("/")[1]) for k in port_bindings] or None,
                labels=self.labels(spec.service, spec.replica, spec.version), host_config=host_config,
                stop_signal=_signal.Signals(spec.stop_signal).name, stop_timeout=math.ceil(spec.stop_timeout))
        except (docker.errors.DockerException, ValueError) as exc:
            raise EngineError(f"cannot create a container for {spec.service}[{spec.replica}]: {_short(exc)}") from None
        container_id = created["Id"]
        try:
            self.api.start(container_id)
        except docker.errors.DockerException as exc:
            with contextlib.suppress(docker.errors.DockerException):
                self.api.remove_container(container_id, force=True)
            raise EngineError(f"cannot start {spec.service}[{spec.replica}]: {_short(exc)}") from None
        if sink is not None:
            self.follow(container_id, sink, label or spec.service)
        return container_id

    def labels(self, service: str, replica: int, version: str) -> dict[str, str]:
        """The labels that mark a container as this supervisor's replica."""
        return {L_INSTANCE: self.instance, L_SERVICE: service, L_REPLICA: str(replica), L_VERSION: version}

    def signal(self, container_id: str, signum: int) -> None:
        """Send ``signum`` to the container's main process. EngineError."""
        self._own(container_id)
        try:
            self.api.kill(container_id, signal=_signal.Signals(signum).name)
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot signal container {container_id[:12]}: {_short(exc)}") from None

    def stop(self, container_id: str, timeout: float) -> int | None:
        """Stop (its stop signal, then SIGKILL after ``timeout`` s, as ``docker stop``), read
        its last log lines, and remove it. Returns its exit status (None if it was gone)."""
        self._own(container_id)
        try:
            self.api.stop(container_id, timeout=math.ceil(timeout))
            code = self.api.wait(container_id, timeout=math.ceil(timeout) + API_TIMEOUT).get("StatusCode")
        except docker.errors.NotFound:
            code = None
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot stop container {container_id[:12]}: {_short(exc)}") from None
        self.remove(container_id)
        return code

    def remove(self, container_id: str) -> None:
        """Remove one container of ours (forcibly), after its output was read; its cursor goes
        too. A container without our instance label is refused (EngineError)."""
        self._own(container_id)
        self._drain(container_id)
        try:
            self.api.remove_container(container_id, force=True, v=False)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot remove container {container_id[:12]}: {_short(exc)}") from None
        self.cursors.pop(container_id, None)
        self.cursor_failed.discard(container_id)
        name = self._cursor_name(container_id)
        if name is not None:
            safefs.unlink_in(self.state_dir / "containers", name)

    def _own(self, container_id: str) -> None:
        try:
            labels = self.api.inspect_container(container_id)["Config"].get("Labels") or {}
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot inspect container {container_id[:12]}: {_short(exc)}") from None
        if labels.get(L_INSTANCE) != self.instance:
            raise EngineError(f"container {container_id[:12]} is not ours (label {L_INSTANCE} is "
                              f"{labels.get(L_INSTANCE)!r}, ours {self.instance!r}): left alone")

    # -- observe / adopt --------------------------------------------------------------

    def owned(self, service: str | None = None) -> list[Owned]:
        """Our containers (every state), optionally of one service, oldest first."""
        filters = [f"{L_INSTANCE}={self.instance}"] + ([f"{L_SERVICE}={service}"] if service else [])
        try:
            listed = self.api.containers(all=True, filters={"label": filters})
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot list containers: {_short(exc)}") from None
        found = []
        for item in sorted(listed, key=lambda c: c.get("Created", 0)):
            labels = item.get("Labels") or {}
            status = (item.get("State") or "").lower()
            code = None
            if status in ("exited", "dead", "stopped"):
                with contextlib.suppress(docker.errors.DockerException):
                    code = self.api.inspect_container(item["Id"])["State"].get("ExitCode")
            names = item.get("Names") or [""]
            found.append(Owned(id=item["Id"], name=names[0].lstrip("/"), service=labels.get(L_SERVICE, ""),
                               replica=int(labels.get(L_REPLICA, "0") or 0), version=labels.get(L_VERSION, ""),
                               status=status, exit_code=code))
        return found

    def watch_exits(self, on_exit: Callable[[str, int], None]) -> None:
        """Call ``on_exit(container_id, status)`` once for each container of ours that exits,
        from the engine's event stream (``die``), after its last log lines were delivered.
        Exits that happened while nobody listened (found by :meth:`owned`) are reported too.
        Returns at once; :meth:`close` ends the watch."""
        try:
            # (the "die" filter is applied here: podman 4.3 matches an event filter against its
            # own name for it, "died")
            stream = self.client.events(decode=True, filters={"type": "container",
                                                              "label": f"{L_INSTANCE}={self.instance}"})
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot read the engine's events: {_short(exc)}") from None
        self.events_stream = stream

        def report(container_id: str, code: int) -> None:
            if container_id in self.reported:
                return
            self.reported.add(container_id)
            self._drain(container_id)
            self._call(on_exit, container_id, code)

        def run() -> None:
            try:
                for event in stream:
                    if (event.get("Action") or event.get("status")) not in ("die", "died"):
                        continue
                    actor = event.get("Actor") or {}
                    container_id = actor.get("ID") or event.get("id")
                    code = (actor.get("Attributes") or {}).get("exitCode")
                    if container_id:
                        code = int(code) if code not in (None, "") else self._exit_code(container_id)
                        threading.Thread(target=report, args=(container_id, code), daemon=True).start()
            except Exception as exc:
                if not self.closing:
                    log.warning("container engine event stream ended: %s", _short(exc))

        threading.Thread(target=run, name="engine-events", daemon=True).start()
        for item in self.owned():  # after subscribing: an exit is either here or in the stream
            if item.exit_code is not None:
                threading.Thread(target=report, args=(item.id, item.exit_code), daemon=True).start()

    def _exit_code(self, container_id: str) -> int:
        try:
            return int(self.api.inspect_container(container_id)["State"].get("ExitCode") or 0)
        except docker.errors.DockerException:
            return -1

    # -- logs --------------------------------------------------------------------------

    def follow(self, container_id: str, sink: LineSink, label: str) -> None:
        """Follow the container's stdout and stderr into ``sink`` (whole lines, each stream on
        its own), resuming after the cursor a previous supervisor left in the state dir."""
        if container_id in self.followers:
            return
        cursor = self._load_cursor(container_id)
        self.cursors[container_id] = dict(cursor)

        def write(data: bytes, stream: str, count: int | None) -> None:
            # the lines first, then the cursor past them: a supervisor killed in between
            # repeats these lines at most, and never loses one
            sink.write(data, None, label)
            if count is not None:
                self.cursors.setdefault(container_id, {})[stream] = count
                self._save_cursor(container_id)

        def deliver(data: bytes, stream: str, count: int | None) -> None:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(write, data, stream, count)
            else:
                with self.deliver_lock:
                    write(data, stream, count)

        followers = [_Follower(self, container_id, stream, cursor.get(stream, 0), deliver)
                     for stream in ("stdout", "stderr")]
        self.followers[container_id] = followers
        for follower in followers:
            follower.thread.start()

    def _drain(self, container_id: str) -> None:
        """Wait (bounded) until the container's followers have read its last output."""
        for follower in self.followers.pop(container_id, []):
            if not follower.done.wait(DRAIN_TIMEOUT):
                follower.close()

    def _cursor_name(self, container_id: str) -> str | None:
        """``ID.json``, the cursor file's name in ``STATE_DIR/containers``, or None for an id
        that is not an engine's hex id (names are checked before they become paths: an id with
        ``/`` or ``..`` from a strange engine never becomes one)."""
        return f"{container_id}.json" if _CONTAINER_ID.match(container_id) else None

    def _cursor_folder(self) -> Path:
        """``STATE_DIR/containers``, made or checked through safefs (a real folder of ours,
        0700; raises ``safefs.UnsafeStateDir`` otherwise). Checked once per executor."""
        folder = self.state_dir / "containers"
        if not self.cursor_folder_checked:
            safefs.ensure_dirs(self.state_dir, "containers")
            self.cursor_folder_checked = True
        return folder

    def _load_cursor(self, container_id: str) -> dict[str, int]:
        name = self._cursor_name(container_id)
        if name is None:
            return {}
        try:
            data = json.loads(safefs.read_regular(self.state_dir / "containers", name))
            return {k: int(v) for k, v in data.items() if k in ("stdout", "stderr")}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _save_cursor(self, container_id: str) -> None:
        """Write the container's cursor (safefs.write_atomic: a new file renamed into place, no
        symlink followed). A cursor that cannot be written is kept in memory and said once in
        the log: the lines still flow, a restart may repeat some of them."""
        name = self._cursor_name(container_id)
        try:
            if name is None:
                raise OSError(errno.EINVAL, "not an engine's container id")
            safefs.write_atomic(self._cursor_folder(), name, json.dumps(self.cursors.get(container_id, {})).encode())
        except OSError as exc:
            if container_id not in self.cursor_failed:
                self.cursor_failed.add(container_id)
                log.warning("container %s: cannot save its log cursor: %s", container_id[:12], exc)

    # -- the end --------------------------------------------------------------------------

    def _call(self, fn: Callable, *args: object) -> None:
        if self.loop is not None:
            if self.loop.is_closed():  # an exit seen after the supervisor's loop ended: nobody waits
                return
            with contextlib.suppress(RuntimeError):  # the loop closed between the look and the call
                self.loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    def close(self) -> None:
        """Stop watching events and following logs (the containers keep running; a next
        executor on the same state dir adopts them)."""
        self.closing = True
        if self.events_stream is not None:
            with contextlib.suppress(Exception):
                self.events_stream.close()
        for followers in self.followers.values():
            for follower in followers:
                follower.close()
        self.followers.clear()
        with contextlib.suppress(Exception):
            self.client.close()


def _short(exc: BaseException) -> str:
    """The useful last line of an SDK error (they carry whole HTTP responses)."""
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
