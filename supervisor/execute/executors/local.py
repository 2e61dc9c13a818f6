"""Local processes behind the executor seam: process groups, cgroups, output FIFOs, probes.

A replica is a process group (and, where the cgroup v2 tree is writable, a cgroup of its
own). Exits arrive from the reaper (SIGCHLD) or, for an adopted process, a pidfd. Output goes
through a FIFO in ``STATE_DIR/run`` that outlives the supervisor, so a replica adopted after a
supervisor restart loses no line. Builds run through the same reaper (:class:`Preparer`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, cast

from .. import builds, cgroups, health, logs, procs
from ...observe import safefs, state
from ..builds import Artifact, Preparer
from ...desired.environ import command_argv
from ..logs import LogSink
from ...desired.model import Check, Exit, ServiceSpec
from ...observe.state import ReplicaRecord
from . import Executor, Running, StartFailed

log = logging.getLogger("supervise")


@dataclass(frozen=True)
class ProcessRecord:
    """A local replica's part of its state record: ``pid`` and its psutil ``create_time``
    (seconds since the epoch; a pid alone is no identity, pids are reused), its process group,
    its output FIFO and cgroup (paths, None when it has none) and the instance mark we put in
    its environment. The on-disk keys are the field names (the format of older versions)."""

    pid: int
    create_time: float
    pgid: int = 0
    fifo: Path | None = None
    cgroup: Path | None = None
    instance: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProcessRecord":
        """Raises :class:`supervisor.observe.state.RecordError` for a missing or mistyped field."""
        pid, created, pgid = data.get("pid"), data.get("create_time"), data.get("pgid", 0)
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2 ** 31:
            raise state.RecordError("pid: expected a process id")
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise state.RecordError("create_time: expected a number")
        if isinstance(pgid, bool) or not isinstance(pgid, int) or not 0 <= pgid < 2 ** 31:
            raise state.RecordError("pgid: expected a process group id")
        paths = []
        for key in ("fifo", "cgroup"):
            value = data.get(key)
            if value is not None and (not isinstance(value, str) or not value or "\0" in value):
                raise state.RecordError(f"{key}: expected a path")
            paths.append(Path(value) if value else None)
        instance = data.get("instance") or ""
        if not isinstance(instance, str):
            raise state.RecordError("instance: expected a string")
        return cls(pid=pid, create_time=float(created), pgid=pgid, fifo=paths[0], cgroup=paths[1], instance=instance)

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "pgid": self.pgid, "create_time": self.create_time,
                "fifo": str(self.fifo) if self.fifo else None, "cgroup": str(self.cgroup) if self.cgroup else None,
                "instance": self.instance}


class LocalExecutor(Executor):
    """Replicas as process groups on this machine, for the state dir ``state_dir``.

    ``logs_`` is the engine's log registry (builds write their output there);
    ``keep_versions`` how many built versions of a git source stay on disk.
    """

    name = "local"

    def __init__(self, state_dir: Path, logs_: logs.LogRegistry, keep_versions: int = 3):
        self.state_dir = state_dir
        self.logs = logs_
        self.keep_versions = keep_versions
        self.reaper: procs.Reaper | None = None
        self.cgroup_parent: Path | None = None
        self.preparer: Preparer | None = None
        self.tag = ""  # the prefix of our instance marks (procs.state_tag: a hash, made once at open)
        self.copy_pipe = logs.CopyPipe()  # shared by every replica's pumps (see logs.CopyPipe)
        self.prefab = logs.Prefab(state_dir)  # FIFOs and log files made ahead of a burst of starts

    # -- life ------------------------------------------------------------------------------

    async def open(self) -> None:
        """The state dir, the reaper (SIGCHLD), a cgroup where possible; a build the previous
        supervisor left running is stopped before anything builds there again."""
        loop = asyncio.get_running_loop()
        self.tag = procs.state_tag(self.state_dir)
        self.prefab.remove_stale()  # spares a supervisor killed meanwhile left
        self.reaper = procs.Reaper(loop)  # the state dir's folders are the engine's (safefs)
        tag = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:8]
        self.cgroup_parent = cgroups.make_parent(f"supervise-{tag}")
        if self.cgroup_parent is not None:
            cgroups.remove_empty_children(self.cgroup_parent)  # left by replicas that died unseen
        self.preparer = Preparer(self.state_dir, self.reaper, self.logs, self.keep_versions)

    async def stop_leftover_builds(self) -> None:
        """Stop builds a previous supervisor on this state dir left running."""
        loop = asyncio.get_running_loop()
        tag = procs.state_tag(self.state_dir)
        for name, build in state.load_builds(self.state_dir).items():
            try:
                handle = procs.adopt(loop, int(build.get("pid", 0)), float(build.get("create_time", 0)),
                                     instance=str(build.get("instance") or ""), tag=tag)
            except (TypeError, ValueError, OverflowError):
                handle = None
            if handle is not None:
                log.warning("%s: stopping a build (pid %d) left by the previous supervisor", name, handle.pid)
                await procs.stop(handle, 15, 5.0, self.reaper)
            state.remove_build(self.state_dir, name)

    async def close(self) -> None:
        self.prefab.close()
        self.copy_pipe.close()
        if self.reaper is not None:
            self.reaper.close()
        if self.cgroup_parent is not None:
            cgroups.remove(self.cgroup_parent)
            self.cgroup_parent = None

    def detach_all(self) -> None:
        """Stop watching children (SIGQUIT: the replicas are left for the next supervisor)."""
        self.prefab.close()
        self.copy_pipe.close()  # every pump has detached by now
        if self.reaper is not None:
            self.reaper.close()

    # -- artifacts -------------------------------------------------------------------------

    async def prepare(self, spec: ServiceSpec, protect: set[str]) -> Artifact:
        assert self.preparer is not None
        return await self.preparer.prepare(spec, protect)

    async def fast_forward(self, spec: ServiceSpec, old_revision: str, new_revision: str) -> bool:
        return await builds.fast_forward(self.state_dir, spec, old_revision, new_revision)

    def kill_preparing(self) -> None:
        """SIGKILL every build under way (a second stop signal)."""
        if self.preparer is not None:
            for handle in self.preparer.builds.values():
                procs.kill_now(handle, self._known())

    # -- replicas --------------------------------------------------------------------------

    async def start(self, spec: ServiceSpec, artifact: Artifact, index: int, env: Mapping[str, str], sink: LogSink,
                    label: str) -> Running:
        """fork+exec on the loop's thread (a few ms; the reaper and the pumps are the loop's)."""
        assert self.reaper is not None
        argv = command_argv(spec.command, spec.shell, dict(env))
        try:
            fifo, read_fd, child_fd, err_read, err_child = logs.make_fifos(self.state_dir, spec.name, index,
                                                                           self.prefab)
        except OSError as exc:
            raise StartFailed(procs.too_many_files() if exc.errno in (errno.EMFILE, errno.ENFILE)
                              else f"cannot make output FIFO: {exc}") from None
        try:
            if spec.user:
                safefs.check_not_writable_by(self.state_dir, spec.user)
            handle = procs.spawn(self.reaper, argv, env=dict(env), cwd=artifact.workdir / spec.cwd, output=child_fd,
                                 errors=err_child, user=spec.user, cgroup_parent=self.cgroup_parent,
                                 cgroup_name=f"{spec.name}.{index}.{os.urandom(4).hex()}",
                                 tag=self.tag or procs.state_tag(self.state_dir))
        except (procs.SpawnError, safefs.UnsafeStateDir) as exc:
            for fd, path in ((read_fd, fifo), (err_read, logs.err_fifo(fifo))):
                os.close(fd)
                _unlink(path)
            raise StartFailed(str(exc), getattr(exc, "code", 127)) from None
        finally:
            os.close(child_fd)
            os.close(err_child)
        handle.fifo = fifo
        _pumps(handle, sink, label, f"{spec.name}[{index}]", read_fd, err_read, self.copy_pipe)
        return handle

    def expect_starts(self, services: Sequence[str]) -> None:
        """Make the FIFO pairs and log files of these starts ahead, in a thread (logs.Prefab)."""
        self.prefab.expect(len(services), dict.fromkeys(services))

    def alive(self, running: Running) -> bool:
        handle = _handle(running)
        return handle.running or procs.group_alive(handle.pgid)

    def signal(self, running: Running, sig: int) -> None:
        handle = _handle(running)
        if handle.running and handle.stop_snapshot is None:
            procs.begin_stop(handle, sig, self.reaper)

    def signal_many(self, stops: Sequence[tuple[Running, int]]) -> None:
        procs.begin_stops([(_handle(r), sig) for r, sig in stops if _handle(r).running], self.reaper)

    async def stop(self, running: Running, sig: int, timeout: float) -> Exit:
        handle = _handle(running)
        exit = await procs.stop(handle, sig, timeout, self.reaper)
        await _drain(handle)
        return exit

    async def cleanup(self, running: Running, sig: int, timeout: float) -> None:
        handle = _handle(running)
        assert self.reaper is not None
        # its group, its cgroup, and orphans of it that came back to us
        if procs.group_alive(handle.pgid) or procs.members(handle, self.reaper.waiters):
            await procs.stop(handle, sig, timeout, self.reaper)
        else:
            self.reaper.untrack_group(handle.pgid)
            if handle.cgroup is not None:
                cgroups.remove(handle.cgroup)

    def kill(self, running: Running) -> None:
        procs.kill_now(_handle(running), self._known())

    def record(self, running: Running) -> dict[str, Any]:
        handle = _handle(running)
        return ProcessRecord(pid=handle.pid, pgid=handle.pgid, create_time=handle.create_time, fifo=handle.fifo,
                             cgroup=handle.cgroup, instance=handle.instance or "").to_dict()

    def adopt(self, record: ReplicaRecord, sink: LogSink, label: str) -> Running | None:
        """The process must be the one we started (pid + create_time + our instance mark in its
        environment), its FIFO a FIFO of ours in ``STATE_DIR/run``, its cgroup one of ours."""
        try:
            ours = ProcessRecord.from_dict(record.handle)
        except state.RecordError:
            return None
        fifo = ours.fifo
        if fifo is not None and not logs.fifo_is_ours(self.state_dir, fifo):
            log.warning("ignoring a state record whose FIFO %s is not in %s", fifo, logs.run_dir(self.state_dir))
            fifo = None
        recorded = ours.cgroup
        if recorded is not None and (self.cgroup_parent is None or recorded.parent != self.cgroup_parent):
            recorded = None
        try:
            handle = procs.adopt(asyncio.get_running_loop(), ours.pid, ours.create_time, instance=ours.instance,
                                 tag=self.tag or procs.state_tag(self.state_dir), cgroup=recorded, reaper=self.reaper)
        except (TypeError, ValueError, OverflowError):
            return None
        if handle is None:
            return None
        handle.fifo = fifo
        if handle.cgroup is not None and (self.cgroup_parent is None or handle.cgroup.parent != self.cgroup_parent):
            handle.cgroup = None  # only our own cgroups are ever killed or removed
        if handle.fifo is not None:
            index = label[len(sink.name) + 1:] if label.startswith(sink.name + ".") else "0"  # NAME or NAME.i
            _pumps(handle, sink, label, f"{sink.name}[{index}]", logs.reopen_fifo(handle.fifo),
                   logs.reopen_fifo(logs.err_fifo(handle.fifo)), self.copy_pipe)
        return handle

    def forget(self, record: ReplicaRecord) -> None:
        try:
            fifo = ProcessRecord.from_dict(record.handle).fifo
        except state.RecordError:
            return
        if fifo is not None and logs.fifo_is_ours(self.state_dir, fifo):
            _unlink(fifo)
            _unlink(logs.err_fifo(fifo))

    def detach(self, running: Running) -> None:
        handle = _handle(running)
        for pump in handle.pumps:
            pump.detach()

    async def probe(self, check: Check, running: Running, env: Mapping[str, str], cwd: Path,
                    user: str | None = None) -> bool:
        return await health.probe(check, dict(env), str(cwd), user=user)

    async def foreign_answer(self, check: Check, running: Running, env: Mapping[str, str],
                             siblings: Sequence[Running] = ()) -> str:
        """Who holds the listening socket on the checked port, looked up per process tree
        (leader, descendants, cgroup, orphans with the instance mark; psutil's socket table,
        matched by inode): this replica's, or a sibling's. Read in a thread."""
        handle = _handle(running)
        others = [_handle(s) for s in siblings]
        known = self._known()
        return await asyncio.to_thread(_foreign_answer, check, handle, others, dict(env), known)

    async def sweep(self) -> list[int]:
        return await procs.sweep_orphans(self._known(), self.reaper)

    def _known(self) -> set[int]:
        return set(self.reaper.waiters) if self.reaper is not None else set()


def _foreign_answer(check: Check, handle: procs.ProcessHandle, siblings: Sequence[procs.ProcessHandle],
                    env: Mapping[str, str], known: set[int]) -> str:
    port = health.local_port(check, env)
    if port is None or not siblings or procs.listens_on(handle, port, known):
        return ""
    for sibling in siblings:
        if procs.listens_on(sibling, port, known):
            return (f"port {port} is answered by pid {sibling.pid} (another replica of the service), "
                    f"not by pid {handle.pid} or its children")
    return ""


def _handle(running: Running) -> procs.ProcessHandle:
    return cast(procs.ProcessHandle, running)


async def _drain(handle: procs.ProcessHandle, timeout: float = 2.0) -> None:
    """Wait until the output of a stopped process is all in its log (the pump's end of file)."""
    if all(pump.done.done() for pump in handle.pumps):  # (none, or at their end of file already)
        return
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.gather(*(pump.done for pump in handle.pumps))), timeout)
    except asyncio.TimeoutError:
        for pump in handle.pumps:
            pump.close()


def _pumps(handle: procs.ProcessHandle, sink: LogSink, label: str, who: str, out_fd: int | None,
           err_fd: int | None, copy_pipe: logs.CopyPipe) -> None:
    """Pumps for a replica's stdout and stderr FIFOs (an fd may be None: that FIFO is not
    there), writing as ``who`` (``NAME[INDEX]``) and stream. When the leader exits, what its
    pipes hold (an unfinished line too) is written at once: the exit's note, which comes from
    the engine's own wake-up on the same future, is written after it."""
    assert handle.fifo is not None
    loop = asyncio.get_running_loop()
    for fd, path, stream in ((out_fd, handle.fifo, "stdout"), (err_fd, logs.err_fifo(handle.fifo), "stderr")):
        if fd is not None:
            handle.pumps.append(logs.Pump(loop, fd, sink, on_eof=functools.partial(_unlink, path),
                                          keep_until_written=True, label=label, origin=f"{who} {stream}",
                                          copy_pipe=copy_pipe))

    def flush(_: object) -> None:
        for pump in handle.pumps:
            pump.flush()

    if handle.pumps:  # registered before anyone awaits the exit: runs before their callbacks
        handle.exited.add_done_callback(flush)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
