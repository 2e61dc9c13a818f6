"""The executor seam: the only way the engine reaches replicas.

An :class:`Executor` turns a service's spec into an artifact (:meth:`~Executor.prepare`), runs
replicas of it (:meth:`~Executor.start`), stops or signals them, tells when one ended (the
:attr:`Running.exited` future: no polling), takes over replicas a previous supervisor left
running (:meth:`~Executor.record` / :meth:`~Executor.adopt`), and sends their output to the
engine's log sink (from which ``supervise logs`` and :meth:`Runtime.read` read).

Every decision (restart, backoff, rollback, order) stays above the seam, in the engine and the
pure life cycle; an executor only does what it is told and reports what happened. Local
processes (:mod:`supervisor.execute.executors.local`) are one implementation. A container executor fits
the same shape: ``prepare`` pulls or builds an image (the artifact's version names it),
``start`` creates and starts a container labelled with the service and replica, ``exited``
resolves from the engine's event stream (Docker ``die`` events), ``stop`` is ``docker stop -t``
(the signal, then SIGKILL after the timeout), ``record``/``adopt`` use the container id and
its labels, and output is a log stream pumped into the sink.

``[supervise] runtime`` and a service's ``runtime`` key choose the executor by name
(:func:`executor_names`): ``"local"`` (:mod:`supervisor.execute.executors.local`) and ``"container"``
(:mod:`supervisor.execute.executors.containers`, over the Engine API client in
:mod:`supervisor.execute.executors.container`), and ``"kubernetes"`` for single services of a
local file (:mod:`supervisor.execute.executors.kubernetes`: the service's Deployment is its one
replica).
"""

from __future__ import annotations

import abc
import asyncio
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from ..builds import Artifact
from ..logs import LogSink
from ...desired.model import Check, Exit, ServiceSpec
from ...observe.state import ReplicaRecord


class StartFailed(Exception):
    """A replica could not be started; the message says why in one line (a missing command,
    an unknown user, too many open files, an image that cannot be pulled). ``code`` is the exit
    status a shell gives such a command: 127 (not found, and every other failure to start),
    126 (found but not executable: permission denied, not an executable format)."""

    def __init__(self, message: str, code: int = 127):
        super().__init__(message)
        self.code = code


class Running(Protocol):
    """A started (or adopted) replica as the engine holds it.

    ``pid`` is for display (None when there is no host process id to show); ``running`` is
    False once the main process ended; ``exited`` resolves with its :class:`~supervisor.desired.model.Exit`
    (neither code nor signal when it cannot be known, as for an adopted process).
    """

    @property
    def pid(self) -> int: ...

    @property
    def running(self) -> bool: ...

    @property
    def exited(self) -> asyncio.Future[Exit]: ...


class Executor(abc.ABC):
    """Runs the replicas of services. Methods run on the engine's event loop; blocking work
    (fetches, builds, API calls) goes to threads or subprocesses."""

    #: The name ``runtime`` keys use for this executor.
    name: str = ""

    @abc.abstractmethod
    async def open(self) -> None:
        """Set up (the reaper, a cgroup, a client connection); stop leftovers of a previous
        supervisor that must not survive it (a build it was running)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what :meth:`open` set up; replicas are stopped or detached before."""

    @abc.abstractmethod
    async def prepare(self, spec: ServiceSpec, protect: set[str]) -> Artifact:
        """Fetch and build ``spec``'s source into an artifact; ``protect`` names versions to
        keep. Raises :class:`supervisor.execute.builds.PrepareError` (``stage`` "fetch" or "build")."""

    def prepares_in_background(self, spec: ServiceSpec) -> bool:
        """True when preparing ``spec`` may wait on something remote for long (a git fetch,
        an image pull or build): the daemon then runs it as a task of its own, so one slow
        remote holds that service alone, never a whole pass. The default: a git source."""
        return spec.source.kind == "git"

    async def fast_forward(self, spec: ServiceSpec, old_revision: str, new_revision: str) -> bool:
        """False when ``new_revision`` does not descend from ``old_revision`` (a force push, to
        be reported); True when it does or cannot be known. The default asks git for a git
        source (:func:`supervisor.execute.builds.fast_forward`)."""
        return True

    def expect_starts(self, services: Sequence[str]) -> None:
        """A hint: replicas of ``services`` (a name per replica) are about to start, so what
        they will need may be made ahead (the local executor's output FIFOs and log files,
        :class:`supervisor.execute.logs.Prefab`). The default does nothing."""

    async def sweep_unrecorded(self) -> int:
        """After adoption: stop replicas of ours that no state record named (a supervisor
        killed between starting one and recording it), so none runs twice. Returns how many.
        Local processes are swept by the reconciler's instance marks; the default does nothing."""
        return 0

    @abc.abstractmethod
    async def start(self, spec: ServiceSpec, artifact: Artifact, index: int, env: Mapping[str, str], sink: LogSink,
                    label: str) -> Running:
        """Start replica ``index`` of ``artifact`` with environment ``env``; its output goes
        to ``sink`` with the console prefix ``label``. Raises :class:`StartFailed`. What
        waits on something outside (an engine's API) runs off the loop (a thread)."""

    @abc.abstractmethod
    def alive(self, running: Running) -> bool:
        """Anything of the replica is still running (its main process, or what it started)."""

    @abc.abstractmethod
    def signal(self, running: Running, sig: int) -> None:
        """Send ``sig`` to everything of the replica now (the first half of a stop, sent to
        many replicas at once at shutdown)."""

    def signal_many(self, stops: Sequence[tuple[Running, int]]) -> None:
        """:meth:`signal` of many replicas at once, each ``(running, sig)`` (a shutdown's
        dependency level): an executor may send them faster together than one by one."""
        for running, sig in stops:
            self.signal(running, sig)

    @abc.abstractmethod
    async def stop(self, running: Running, sig: int, timeout: float) -> Exit:
        """Stop the replica: ``sig``, wait ``timeout`` s, then SIGKILL; returns once nothing of
        it is left and its output is in the sink. Returns the main process's exit."""

    @abc.abstractmethod
    async def cleanup(self, running: Running, sig: int, timeout: float) -> None:
        """The main process ended by itself: remove what it left behind (systemd's
        ``KillMode=control-group``), with the same signal and timeout as a stop."""

    @abc.abstractmethod
    def kill(self, running: Running) -> None:
        """SIGKILL everything of the replica at once (a second stop signal)."""

    @abc.abstractmethod
    def record(self, running: Running) -> dict[str, Any]:
        """What a later supervisor needs to :meth:`adopt` the replica (JSON-able)."""

    @abc.abstractmethod
    def adopt(self, record: ReplicaRecord, sink: LogSink, label: str) -> Running | None:
        """Take over a replica from its state record (``record.handle`` is what :meth:`record`
        returned) after a supervisor restart, verifying it is the same one (not a reused pid
        or id); None when it is gone or the record is not one of ours."""

    @abc.abstractmethod
    def forget(self, record: ReplicaRecord) -> None:
        """A recorded replica is gone: remove what it left (its output FIFO)."""

    @abc.abstractmethod
    def detach(self, running: Running) -> None:
        """Stop following the replica without stopping it (it is left for adoption)."""

    @abc.abstractmethod
    async def probe(self, check: Check, running: Running, env: Mapping[str, str], cwd: Path,
                    user: str | None = None) -> bool:
        """Run one ready/live check (tcp, http, exec) against the replica; an exec check runs
        as the service's ``user`` where it has one."""

    async def foreign_answer(self, check: Check, running: Running, env: Mapping[str, str],
                             siblings: Sequence[Running] = ()) -> str:
        """After a ``tcp``/``http`` ready check of ``running`` passed: why the answer was not
        its own, or "". Not its own: it does not listen on the port the check reached, and
        one of ``siblings`` (the other replicas of its service: the old one during a
        start-first update) does. "" when it listens there itself, or when that cannot be
        told (a remote host, an exec check, a listener outside the service such as a
        container engine's proxy: the check is trusted then, as before). The default cannot
        tell."""
        return ""

    @abc.abstractmethod
    async def sweep(self) -> list[int]:
        """At shutdown, stop processes services left behind outside their replicas; returns
        their ids for the log."""


class ExecutorUnavailable(Exception):
    """A runtime name this version cannot run (the config check refuses it first)."""


def executor_names() -> tuple[str, ...]:
    """The runtime names that have an executor in this version."""
    return ("local", "container", "kubernetes")
