"""Process groups on Linux: spawn, notice exits by event, stop with no survivors.

- Every process we start leads its own session and process group (``setsid``), so a stop can
  signal the whole group and a terminal's Ctrl-C reaches the supervisor, not the services.
- Exits are noticed from SIGCHLD, delivered through the event loop (``add_signal_handler``
  writes to a wake-up fd; no thread polls). On each SIGCHLD the :class:`Reaper` calls
  ``waitid(P_PGID, pgid, WNOHANG)`` for each group it tracks: that reaps our children and any
  orphaned grandchildren of theirs (we are a child subreaper, ``PR_SET_CHILD_SUBREAPER``), but
  never touches other children of this process, such as git commands run by GitPython.
- Processes we did not start (adopted after a supervisor restart) are watched with a pidfd.
- A stop sends the stop signal to the group, waits ``stop_timeout`` seconds, then SIGKILLs the
  group and every descendant seen before the stop (that catches ``setsid`` escapees), and
  waits until none of them remains. Where a cgroup v2 hierarchy lets us, each process group also
  gets a cgroup and ``cgroup.kill`` ends whatever is left in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import errno
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

import psutil

from . import cgroups
from ..desired.model import Exit

log = logging.getLogger("supervise")

PR_SET_CHILD_SUBREAPER = 36
#: The RLIMIT_NOFILE our children get: the limit we were started with, before we raised ours.
_child_nofile: tuple[int, int] | None = None


def raise_fd_limit() -> tuple[int, int]:
    """Raise our soft RLIMIT_NOFILE to the hard limit (each replica costs us 2 fds: its output
    FIFO and, shared per service, the log file). Children still get the original soft limit,
    as systemd does (select(2) breaks above 1024). Returns the (soft, hard) now in force."""
    global _child_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _child_nofile = (soft, hard)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (prctl(2)); False if refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class ProcessHandle:
    """A started (or adopted) process group leader.

    ``create_time`` is psutil's (seconds since the epoch) and, with ``pid``, identifies the
    process across pid reuse. ``exited`` resolves with the :class:`Exit` when the leader ends.
    """

    pid: int
    pgid: int
    create_time: float
    exited: asyncio.Future[Exit]
    adopted: bool = False
    cgroup: Path | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    fifo: Path | None = None  # where its output goes (logs.make_fifo)
    instance: str | None = None  # the value of INSTANCE_VAR in its environment
    stop_snapshot: list[psutil.Process] | None = None  # set once begin_stop() has signalled it
    pumps: list[Any] = field(default_factory=list)  # the logs.Pumps reading its stdout and stderr FIFOs

    @property
    def running(self) -> bool:
        """The leader has not exited yet."""
        return not self.exited.done()


class SpawnError(Exception):
    """The command could not be started at all (missing executable, bad cwd, permissions).
    ``code``: a shell's exit status for it, 126 (permission denied, not an executable format)
    or 127 (anything else)."""

    def __init__(self, message: str, code: int = 127):
        super().__init__(message)
        self.code = code


def quiet_wakeup_fd() -> None:
    """Hundreds of children ending at once fill asyncio's signal wake-up socket; that is fine
    (one byte wakes the loop), so keep Python from printing a warning for every signal. Call it
    after the last ``add_signal_handler`` (each one sets the wake-up fd again)."""
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)


class Reaper:
    """Delivers exits of the process groups we track to their futures.

    On the main thread (the daemon) it listens for SIGCHLD and makes this process a child
    subreaper, so orphaned grandchildren come back to be reaped. Elsewhere (the Runtime
    library, in a host program's thread) it watches each started process with a pidfd
    instead, and leaves the host's signal handling and orphans alone.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, use_signals: bool | None = None):
        self.loop = loop
        self.groups: dict[int, set[int]] = {}  # pgid -> pids we still wait for there
        self.waiters: dict[int, asyncio.Future[Exit]] = {}
        self.own_pgid = os.getpgid(0)
        if use_signals is None:
            use_signals = threading.current_thread() is threading.main_thread()
        self.use_signals = use_signals
        self.subreaper = become_subreaper() if use_signals else False
        if use_signals:
            loop.add_signal_handler(signal.SIGCHLD, self.reap)
            quiet_wakeup_fd()

    def close(self) -> None:
        if not self.use_signals:
            return
        try:
            self.loop.remove_signal_handler(signal.SIGCHLD)
        except (RuntimeError, ValueError):
            pass

    def track(self, pid: int, pgid: int) -> asyncio.Future[Exit]:
        """A future for the exit of ``pid`` (leader of group ``pgid``), and reap that group."""
        future: asyncio.Future[Exit] = self.loop.create_future()
        self.waiters[pid] = future
        self.groups.setdefault(pgid, set()).add(pid)
        if not self.use_signals:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # already reaped elsewhere: nothing will ever tell us
                self.reap()
                return future

            def readable() -> None:
                self.loop.remove_reader(pidfd)
                os.close(pidfd)
                self.reap()

            self.loop.add_reader(pidfd, readable)
        return future

    def untrack_group(self, pgid: int) -> None:
        """Stop reaping group ``pgid`` (it is empty)."""
        self.groups.pop(pgid, None)

    def reap(self) -> None:
        """Reap every exited process in the tracked groups, and stray orphans. Never blocks.

        Cost: one waitid(2) per exited child while the next waitable child is ours, which is
        the rule. Only when a child that is not ours waits to be reaped (a git or build child
        whose owner reaps it) does it fall back to one waitid per tracked group and a look at
        every child: asking each of 2,000 groups on every SIGCHLD made a shutdown of 2,000
        services quadratic (15 s of waitid calls).
        """
        if self._reap_ours_first():
            return
        for pgid in list(self.groups):
            while True:
                try:
                    result = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG)
                except ChildProcessError:
                    break  # no child of ours left in this group
                except InterruptedError:
                    continue
                if result is None:
                    break
                self._deliver(result.si_pid, _exit_from_waitid(result))
        self._reap_strays()

    def _reap_ours_first(self) -> bool:
        """Reap waitable children while the next one (waitid P_ALL, WNOWAIT: a peek) is a tracked
        leader, in a tracked group, or a stray orphan; True when none is left, False at the first
        child that is someone else's (a git or build child: left to its owner)."""
        while True:
            try:
                peek = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True  # no child at all
            except InterruptedError:
                continue
            if peek is None:
                return True  # children, but none has exited
            pid = peek.si_pid
            if pid not in self.waiters:
                try:
                    pgid = os.getpgid(pid)  # a zombie keeps its process group until reaped
                except OSError:
                    return False
                if pgid in private_groups:
                    return False  # an exec check's leader: its owner reaps it for the status
                stray = self.subreaper and pgid != self.own_pgid
                if pgid not in self.groups and not stray:
                    return False
            try:
                result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                continue  # reaped meanwhile by another thread
            except InterruptedError:
                continue
            if result is not None:
                self._deliver(result.si_pid, _exit_from_waitid(result))

    def _deliver(self, pid: int, exit: Exit) -> None:
        future = self.waiters.pop(pid, None)
        if future is not None and not future.done():
            future.set_result(exit)

    def _reap_strays(self) -> None:
        """Reap zombies re-parented to us that left their group (setsid) — not git's children."""
        if not self.subreaper:
            return
        for pid in _children_of(os.getpid()):
            if pid in self.waiters:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    fields_ = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            state, pgid = fields_[0], int(fields_[2])
            if (state == b"Z" and pgid != self.own_pgid and pgid not in self.groups
                    and pgid not in private_groups):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def _exit_from_waitid(result: os.waitid_result) -> Exit:
    if result.si_code == os.CLD_EXITED:
        return Exit(code=result.si_status)
    return Exit(signal=result.si_status)


_HAVE_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for tid in tasks:
        try:
            children.extend(map(int, cgroups.read_small(f"/proc/{pid}/task/{tid}/children").split()))
        except OSError:
            continue
    return children


def spawn(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    output: int,
    errors: int | None = None,
    user: str | None = None,
    cgroup_parent: Path | None = None,
    cgroup_name: str | None = None,
    tag: str = "",
) -> ProcessHandle:
    """Start ``argv`` as the leader of a new session, stdout to the fd ``output``, stderr to
    ``errors`` (to ``output`` too when None).

    ``argv[0]`` is looked up on ``env["PATH"]``. stdin is /dev/null. Raises SpawnError when the
    executable or ``cwd`` is missing or not permitted.
    """
    identity: dict[str, Any] = {}
    if user is not None:
        identity = user_identity(user)
    instance = f"{tag}-{os.urandom(6).hex()}" if tag else os.urandom(6).hex()
    env = {**env, INSTANCE_VAR: instance}
    try:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=output,
            stderr=output if errors is None else errors, start_new_session=True, close_fds=True, restore_signals=True, **identity,
        )
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        code = 126 if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.ENOEXEC else 127
        raise SpawnError(_spawn_message(argv, cwd, exc), code) from None
    if _child_nofile is not None:
        try:
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, _child_nofile)
        except (OSError, ValueError):
            pass
    group = None
    if cgroup_parent is not None and cgroup_name:
        # Moved right after exec (no preexec_fn: unsafe with threads); anything it forks in
        # the first instant is still caught by the process group and the descendant snapshot.
        group = cgroups.create(cgroup_parent, cgroup_name)
        if group is not None and not cgroups.move(group, proc.pid):
            cgroups.remove(group)
            group = None
    future = reaper.track(proc.pid, proc.pid)
    # The reaper owns the exit status from now on; keep Popen from ever waiting on the pid.
    proc.returncode = 0
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = 0.0
    return ProcessHandle(pid=proc.pid, pgid=proc.pid, create_time=create_time, exited=future, cgroup=group,
                         instance=instance)


#: Process groups of short-lived helpers (exec checks) whose leader is reaped by its own code:
#: :meth:`Reaper._reap_strays` must not take their zombies (it would steal the exit status).
private_groups: set[int] = set()


async def wait_exit(pid: int) -> None:
    """Return once our child ``pid`` has exited, without reaping it (its zombie keeps the pid
    and its process group id from being reused). Woken by a pidfd; polls where there is none."""
    def exited() -> bool:
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    if exited():
        return
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while not exited():
            await asyncio.sleep(0.05)
        return
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def end_group(pid: int, running: bool = True) -> int:
    """SIGKILL the process group led by our child ``pid`` and every descendant of it (also those
    that left with ``setsid``), reap the leader and the group's zombies; return the leader's
    exit code (negative: the signal). Call it while the leader is unreaped, so its pid still
    names our group. ``running``: the leader may not have exited yet (then its descendants are
    listed first, to catch those that left the group). Blocks at most about a second (SIGKILLed processes dying). Never raises
    for processes already gone."""
    snapshot: list[psutil.Process] = []
    if running:  # (a leader that has exited has no children left to list: they went to a reaper)
        try:
            snapshot = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for process in snapshot:
        try:
            process.kill()
        except psutil.Error:
            pass
    code = -1
    try:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass
    # The SIGKILLed descendants die within moments: wait for them (bounded) and reap those that
    # came back to us (we are a subreaper), so no zombie of a check outlives it.
    psutil.wait_procs(snapshot, timeout=1.0)
    while True:  # and any other orphan of the group already dead
        try:
            if os.waitid(os.P_PGID, pid, os.WEXITED | os.WNOHANG) is None:
                break
        except (ChildProcessError, InterruptedError):
            break
    return code


def user_identity(user: str) -> dict[str, Any]:
    """Popen arguments to run as ``user``: its uid, its primary gid and its supplementary
    groups (as login(1) and systemd's User= do; ``Popen(user=)`` alone keeps our groups).
    Raises SpawnError for an unknown user or when we may not switch (not root)."""
    import pwd

    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise SpawnError(f"unknown user {user!r}") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise SpawnError(f"cannot run as {user!r}: supervise is not running as root")
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}


def _spawn_message(argv: Sequence[str], cwd: str | os.PathLike[str], exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return too_many_files()
    if isinstance(exc, FileNotFoundError):
        if not Path(cwd).is_dir():
            return f"working directory {cwd} does not exist"
        return f"command not found: {argv[0]}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {argv[0]}"
    return f"cannot start {argv[0]}: {exc}"


def state_tag(state_dir: Path) -> str:
    """A short hash of STATE_DIR's real path: the prefix of every instance mark given to a
    process started from it, so a later supervisor on the same folder recognises them."""
    return "s" + hashlib.sha256(os.fsencode(os.path.realpath(state_dir))).hexdigest()[:12]


def identity_matches(process: psutil.Process, instance: str, cgroup: Path | None = None) -> bool:
    """True when ``process`` carries our instance mark ``instance`` in its environment (the
    kernel keeps the environment block it was started with), or, for a leader that replaced
    its environment, sits in the cgroup ``cgroup`` recorded for it."""
    try:
        if instance and process.environ().get(INSTANCE_VAR) == instance:
            return True
    except (psutil.Error, OSError):
        pass
    return cgroup is not None and cgroups.of_pid(process.pid) == cgroup


def adopt(loop: asyncio.AbstractEventLoop, pid: int, create_time: float, instance: str = "",
          tag: str = "", cgroup: Path | None = None, reaper: "Reaper | None" = None) -> ProcessHandle | None:
    """Watch a running process we did not start (a supervisor restart), by pidfd.

    One that is still our child (this pid exec'd a new supervise: a self-update) is tracked
    by ``reaper`` instead, when it reaps by SIGCHLD: its exit status is then known as for a
    replica we started.

    Returns None when ``pid`` is gone or is another process now (``create_time`` differs by
    more than 10 ms: the pid was reused), or is not the process we recorded: it must carry
    ``instance`` (see :func:`identity_matches`). pid 0 and 1, our own pid and our own process
    group are never adopted. Its exit status cannot be known (not our child); the Exit then
    has neither code nor signal.
    """
    if pid <= 1 or pid == os.getpid():
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        if not identity_matches(process, instance, cgroup):
            log.warning("not adopting pid %d: it does not carry the instance mark recorded for it", pid)
            return None
        pgid = os.getpgid(pid)
        if pgid == os.getpgid(0) or pgid <= 1:
            return None
        if reaper is not None and reaper.use_signals and process.ppid() == os.getpid():
            # (no reap can run between the check above and this: the loop runs us)
            return ProcessHandle(pid=pid, pgid=pgid, create_time=create_time, exited=reaper.track(pid, pgid),
                                 adopted=True, cgroup=cgroups.of_pid(pid), instance=instance or None)
        pidfd = os.pidfd_open(pid)
    except (psutil.Error, OSError):
        return None
    future: asyncio.Future[Exit] = loop.create_future()

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not future.done():
            future.set_result(Exit())

    loop.add_reader(pidfd, on_exit)
    return ProcessHandle(pid=pid, pgid=pgid, create_time=create_time, exited=future, adopted=True,
                         cgroup=cgroups.of_pid(pid), instance=instance or None)


def unowned(tag: str, known: Collection[str]) -> list[psutil.Process]:
    """Live processes whose instance mark says they were started from the state dir of
    ``tag`` (:func:`state_tag`) but whose mark is not in ``known``. Reads every process's
    environment: call it once at start-up, in a thread."""
    prefix = f"{tag}-"
    me = os.getpid()
    found = []
    # psutil.pids(), not process_iter(): process_iter keeps a Process object of every process on
    # the machine in a module cache for the supervisor's whole life (0.7 MB among 2,100 processes)
    for pid in psutil.pids():
        if pid == me:
            continue
        try:
            process = psutil.Process(pid)
            mark = process.environ().get(INSTANCE_VAR, "")
            if mark.startswith(prefix) and mark not in known and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


async def stop_unowned(victims: list[psutil.Process], groups: Sequence[Path], timeout: float = 5.0) -> None:
    """SIGTERM ``victims`` (and their process groups) and the cgroups ``groups``; SIGKILL what is
    left after ``timeout`` s. psutil checks create_time, so a reused pid is not signalled."""
    for process in victims:
        try:
            pgid = os.getpgid(process.pid)
            if pgid == process.pid and pgid != os.getpgid(0):
                os.killpg(pgid, signal.SIGTERM)
            process.terminate()
        except (psutil.Error, OSError):
            pass
    for group in groups:
        for pid in cgroups.pids(group):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    pids = {p.pid for p in victims} | {pid for g in groups for pid in cgroups.pids(g)}
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        _reap_nowait(pids)
        if not any(_alive(p) for p in victims) and not any(cgroups.populated(g) for g in groups):
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    for group in groups:
        cgroups.kill(group)
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass
    _reap_nowait(pids)


def _reap_nowait(pids: Collection[int]) -> None:
    """Reap those of ``pids`` that are exited children of ours (re-parented to us)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid``, empty when it is gone.

    Walks the kernel's ``/proc/PID/task/TID/children`` lists, so the cost grows with the
    size of the tree, not with the number of processes on the machine (psutil's
    ``children(recursive=True)`` reads every ``/proc/*/stat``: one full scan per stop).
    """
    if not _HAVE_CHILDREN_FILES:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []
    found: list[psutil.Process] = []
    todo = _children_of(pid)
    seen = set()
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        try:
            found.append(psutil.Process(child))
        except psutil.Error:
            continue
        todo.extend(_children_of(child))
    return found


#: The environment variable that marks every process of one replica process (set at spawn,
#: inherited by all it starts), so its orphans can be found even without a cgroup.
INSTANCE_VAR = "SUPERVISE_INSTANCE"


def members(handle: ProcessHandle, known: Collection[int] = ()) -> list[psutil.Process]:
    """Everything that belongs to ``handle``'s replica now: its descendants, the processes in
    its cgroup, and orphans of it that were re-parented to us (found by :data:`INSTANCE_VAR`
    among our children that are not in ``known``, the leaders we track: a stop of one of 500
    replicas must not read the environment of the other 499)."""
    found = {p.pid: p for p in descendants(handle.pid)}
    if handle.cgroup is not None:
        for pid in cgroups.pids(handle.cgroup):
            if pid not in found and pid != handle.pid:
                try:
                    found[pid] = psutil.Process(pid)
                except psutil.Error:
                    pass
    if handle.instance and handle.adopted:
        # The supervisor that started it is gone: its orphans went to init, not to us.
        # Look at every process of ours (rare: only when stopping an adopted replica).
        for process in psutil.process_iter():
            try:
                if (process.pid not in found and process.pid != handle.pid and process.pid != os.getpid()
                        and process.environ().get(INSTANCE_VAR) == handle.instance):
                    found[process.pid] = process
            except (psutil.Error, OSError):
                continue
    elif handle.instance:
        for process in stray_children(known):
            try:
                if (process.pid not in found and process.pid != handle.pid
                        and process.environ().get(INSTANCE_VAR) == handle.instance):
                    found[process.pid] = process
            except (psutil.Error, OSError):
                continue
    return list(found.values())


_own_children: list[int] | None = None  # set inside one_look_at_children()
#: inside one_look_at_children(): (the ``known`` it was for, its size, the strays found)
_own_strays: tuple[Collection[int], int, list[psutil.Process]] | None = None


@contextlib.contextmanager
def one_look_at_children() -> Iterator[None]:
    """Within this block, :func:`stray_children` reads our children list once, not once per
    call, and looks for strays in it once per ``known``: a shutdown signals 2,000 replicas
    in one synchronous sweep, and reading 2,000 children for each made it quadratic (10 s),
    as did checking each of them against ``known`` for each replica (4 million look-ups).
    Not reentrant; synchronous code only."""
    global _own_children, _own_strays
    _own_children = _children_of(os.getpid())
    try:
        yield
    finally:
        _own_children = _own_strays = None


def stray_children(known: Collection[int] = ()) -> list[psutil.Process]:
    """Our direct children, other than those in ``known``, that came from a service (they
    carry :data:`INSTANCE_VAR`): orphans re-parented to us (we are a subreaper), builds."""
    global _own_strays
    if _own_children is None:
        return _strays(_children_of(os.getpid()), known)
    if _own_strays is None or _own_strays[0] is not known or _own_strays[1] != len(known):
        _own_strays = (known, len(known), _strays(_own_children, known))
    return list(_own_strays[2])


def _strays(children: list[int], known: Collection[int]) -> list[psutil.Process]:
    out = []
    for pid in children:
        if pid in known:
            continue
        try:
            process = psutil.Process(pid)
            if INSTANCE_VAR in process.environ():
                out.append(process)
        except (psutil.Error, OSError):
            continue
    return out


async def sweep_orphans(known: set[int], reaper: Reaper | None, timeout: float = 5.0) -> list[int]:
    """At shutdown: SIGTERM, then after ``timeout`` s SIGKILL, every child of ours that came
    from a service (it carries :data:`INSTANCE_VAR`) and is not in ``known``. Returns their pids."""
    victims = stray_children(known)
    for process in victims:
        try:
            process.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    delay = 0.005
    while victims and time.monotonic() < deadline:
        for process in victims:
            try:
                os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        victims = [p for p in victims if _alive(p)]
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    for process in victims:
        try:
            process.kill()
            os.waitpid(process.pid, 0)
        except (psutil.Error, ChildProcessError):
            pass
    return [p.pid for p in victims]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_alive(pgid: int) -> bool:
    """True while a live process is in process group ``pgid``.

    ``kill(-pgid, 0)`` succeeds on a group whose only members are zombies (a process that
    became some other subreaper's zombie is never reaped by us), so when it does and the
    leader is not alive, the members are looked up: a zombie counts as dead.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        leader = psutil.Process(pgid)
        if leader.status() != psutil.STATUS_ZOMBIE and os.getpgid(pgid) == pgid:
            return True
    except (psutil.Error, OSError):
        pass
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                return True
        except (psutil.Error, OSError):
            continue
    return False


def signal_group(handle: ProcessHandle, sig: int) -> None:
    """Send ``sig`` to the whole process group of ``handle``; a gone group is not an error."""
    try:
        os.killpg(handle.pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # pragma: no cover - only with foreign processes
        log.warning("cannot signal process group %d: %s", handle.pgid, exc)


def begin_stop(handle: ProcessHandle, sig: int, reaper: Reaper | None,
               group_signalled: bool = False) -> list[psutil.Process]:
    """The first, synchronous half of :func:`stop`: snapshot the members and send ``sig``.

    Called for every replica in one go when many stop together (shutdown, see
    :func:`begin_stops`), so that the signals all leave at once instead of one per
    event-loop turn. The snapshot is kept on the handle for the :func:`stop` that follows.
    ``group_signalled``: the process group had ``sig`` (and SIGCONT) already; only the
    members outside it get it now.
    """
    snapshot = members(handle, reaper.waiters if reaper is not None else ())
    if not group_signalled:
        signal_group(handle, sig)
    for process in snapshot:
        try:
            if os.getpgid(process.pid) != handle.pgid:
                process.send_signal(sig)
        except (psutil.Error, OSError):
            pass
    if sig not in (signal.SIGKILL, signal.SIGCONT) and not group_signalled:
        signal_group(handle, signal.SIGCONT)  # a stopped (SIGSTOP'ed) group cannot act on it
    handle.stop_snapshot = snapshot
    return snapshot


def begin_stops(stops: Sequence[tuple[ProcessHandle, int]], reaper: Reaper | None) -> None:
    """:func:`begin_stop` of many replicas (a shutdown's dependency level): the process groups
    of those in a cgroup get their signal first, all of them in one sweep of ``kill(2)``
    calls, then each replica's snapshot is taken and its members outside the group are
    signalled. A snapshot (/proc and cgroup reads) costs about 0.1 ms, and taken first it
    held the last of 200 signals 20-60 ms behind the first. Safe for a replica in a cgroup
    only: a member whose parent exits meanwhile is still listed in its cgroup; one without
    a cgroup has its snapshot taken before its signal, as :func:`begin_stop` alone does."""
    early = set()
    for handle, sig in stops:
        if handle.cgroup is not None and handle.stop_snapshot is None:
            signal_group(handle, sig)
            if sig not in (signal.SIGKILL, signal.SIGCONT):
                signal_group(handle, signal.SIGCONT)
            early.add(id(handle))
    for handle, sig in stops:
        if handle.stop_snapshot is None:
            begin_stop(handle, sig, reaper, group_signalled=id(handle) in early)


async def stop(handle: ProcessHandle, sig: int, timeout: float, reaper: Reaper | None) -> Exit:
    """Stop the group of ``handle``: ``sig``, wait ``timeout`` s, then SIGKILL; no survivors.

    ``sig`` goes to the process group and to every descendant seen before the stop (some may
    have left the group with ``setsid``). Returns the leader's Exit (a SIGKILL shows as
    ``signal 9``). Returns once the group, those descendants and the cgroup (if any) are empty;
    processes that survive SIGKILL for 5 s (uninterruptible sleep) are logged and left.
    """
    snapshot = handle.stop_snapshot
    if snapshot is None:
        snapshot = begin_stop(handle, sig, reaper)
    if not await _wait_empty(handle, snapshot, reaper, timeout):
        _kill_everything(handle, snapshot)
        if not await _wait_empty(handle, snapshot, reaper, 5.0):
            left = [p.pid for p in snapshot if p.is_running()]
            log.error("processes of group %d survived SIGKILL: %s", handle.pgid, left)
    if not handle.exited.done():  # the leader was killed: its SIGCHLD may still be queued
        try:
            await asyncio.wait_for(asyncio.shield(handle.exited), 1.0)
        except asyncio.TimeoutError:
            pass
    if reaper is not None:
        reaper.untrack_group(handle.pgid)
    if handle.cgroup is not None:
        cgroups.remove(handle.cgroup)
    return handle.exited.result() if handle.exited.done() else Exit(signal=signal.SIGKILL)


async def _wait_empty(handle: ProcessHandle, snapshot: list[psutil.Process], reaper: Reaper | None,
                      timeout: float) -> bool:
    """Wait up to ``timeout`` s until nothing of the group is left; True if so.

    The leader's exit wakes us by SIGCHLD; the rest of the group is checked with short,
    growing sleeps (2 ms to 50 ms), only while a stop is under way.
    """
    deadline = time.monotonic() + timeout
    if not handle.exited.done():
        try:
            await asyncio.wait_for(asyncio.shield(handle.exited), timeout)
        except asyncio.TimeoutError:
            pass
    delay = 0.002
    while True:
        if reaper is not None:
            reaper.reap()
        if not _anything_left(handle, snapshot):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def kill_now(handle: ProcessHandle, known: Collection[int] = ()) -> None:
    """SIGKILL the group, cgroup and every member of ``handle`` right away."""
    _kill_everything(handle, members(handle, known))


def _kill_everything(handle: ProcessHandle, snapshot: list[psutil.Process]) -> None:
    if handle.cgroup is not None:
        cgroups.kill(handle.cgroup)
    signal_group(handle, signal.SIGKILL)
    for process in snapshot:
        try:
            process.kill()  # psutil checks create_time: a reused pid is not killed
        except psutil.Error:
            pass


def _anything_left(handle: ProcessHandle, snapshot: list[psutil.Process]) -> bool:
    if group_alive(handle.pgid):
        return True
    if handle.cgroup is not None and cgroups.populated(handle.cgroup):
        return True
    for process in snapshot:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


def listens_on(handle: ProcessHandle, port: int, known: Collection[int] = ()) -> bool:
    """True when a process of ``handle``'s replica (its leader or a :func:`members` process)
    holds a TCP socket listening on ``port``: the kernel's socket table, read per process
    (psutil ``net_connections``, matched by socket inode), so it costs the replica's few
    processes, not a scan of the machine. ``known``: as for :func:`members`. Blocking (reads
    /proc): call it in a thread."""
    try:
        processes = [psutil.Process(handle.pid), *members(handle, known)]
    except psutil.Error:
        processes = members(handle, known)
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            return True
    return False


def too_many_files() -> str:
    """The message for EMFILE, naming the limit and how to raise it."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (f"too many open files (limit {soft}): each replica needs 2; raise the hard limit "
            "(LimitNOFILE= in the systemd unit, ulimit -Hn)")


def kill_git_children(known: Collection[int] = ()) -> list[int]:
    """SIGKILL every ``git`` process that is a direct child of ours and runs for a source
    (``SUPERVISE_GIT=1`` in its environment: sources.git.GIT_MARK),
    with all its descendants (remote helpers, ssh). Returns the pids. Used at shutdown: git's
    own timeout would otherwise keep us waiting on a remote that never answers. ``known``:
    children that are not git (the replicas' leaders the reaper tracks), not even looked at:
    reading each one's name cost a stop of 200 services 3 ms of its signal fan-out, twice."""
    killed = []
    for pid in _children_of(os.getpid()):
        if pid in known:
            continue
        try:  # one small read rules out the services (2,000 psutil lookups cost 0.2 s a stop)
            with open(f"/proc/{pid}/comm", "rb") as comm:
                if comm.read().strip() != b"git":
                    continue
        except OSError:
            continue
        try:
            process = psutil.Process(pid)
            if os.path.basename(process.cmdline()[0] if process.cmdline() else "") != "git" \
                    or process.environ().get("SUPERVISE_GIT") != "1":
                continue
            tree = [process, *descendants(pid)]
        except (psutil.Error, OSError, IndexError):
            continue
        for member in reversed(tree):
            try:
                member.kill()
                killed.append(member.pid)
            except psutil.Error:
                pass
    return killed
