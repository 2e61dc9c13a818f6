#!/usr/bin/env python3
"""Benchmarks of supervise against supervisord, circus and honcho, side by side.

    bench/setup.sh                                   # once: bench/.venv and bench/.venv-supervise
    python bench/run.py --scenario cold --n 50       # one scenario
    python bench/run.py --quick                      # everything, small, in about a minute
    python bench/run.py                              # the full suite (several minutes)

Each supervisor runs from its own venv's console scripts (the PyPI package ``supervisor`` and
this project's package share the import name ``supervisor``; neither is imported here). For
each scenario an adapter writes the supervisor's config for N services into a temp dir, starts
it in a new session, finds its processes through /proc, and stops it. Every process started is
marked with ``SUPERVISE_BENCH_MARK`` in its environment and is killed by pid at the end of its
scenario, on failure, and at exit; no wait is unbounded.

Only the standard library and psutil are used (run with bench/.venv/bin/python; a plain
``python`` re-runs itself there when psutil is missing).

Output: one JSON line per supervisor and scenario on stdout, then a table of each metric
relative to the best peer (the best of supervisord, circus and honcho). A full run also
writes bench/results/run-DATE.jsonl and bench/results/latest.md (the README table).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_BIN = BENCH / ".venv" / "bin"
SUPERVISE_BIN = BENCH / ".venv-supervise" / "bin"
RESULTS = BENCH / "results"

try:
    import psutil
except ImportError:  # pragma: no cover - only outside the venvs
    if __name__ == "__main__" and (PEERS_BIN / "python").exists() and not os.environ.get("SUPERVISE_BENCH_REEXEC"):
        os.environ["SUPERVISE_BENCH_REEXEC"] = "1"
        os.execv(str(PEERS_BIN / "python"), [str(PEERS_BIN / "python"), __file__, *sys.argv[1:]])
    raise SystemExit("bench/run.py needs psutil: run bench/setup.sh, then bench/.venv/bin/python bench/run.py")

MARK_VAR = "SUPERVISE_BENCH_MARK"
RUN_ID = uuid.uuid4().hex[:12]
SLEEP = ("sleep", "1000")
WRITER_NAME = "bench_writer.py"
RAW_WRITER_NAME = "raw_bench_writer.py"  # ends with WRITER_NAME: is_service() knows it
PAD = "x" * 48


def note(message: str) -> None:
    print(f"bench | {message}", file=sys.stderr, flush=True)


# -- /proc ----------------------------------------------------------------------------------

def read_stat(pid: int) -> tuple[int, int, bytes] | None:
    """(ppid, starttime in clock ticks, state letter) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data.rsplit(b")", 1)[1].split()
    return int(rest[1]), int(rest[19]), rest[0]


def read_argv(pid: int) -> tuple[str, ...]:
    """The argv of ``pid``; empty for a zombie, a kernel thread or a gone process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return ()
    return tuple(part.decode("utf-8", "replace") for part in data.split(b"\0")[:-1]) if data else ()


def alive(pid: int, starttime: int) -> bool:
    """True while the process ``pid`` that started at ``starttime`` runs (zombies are not)."""
    stat = read_stat(pid)
    return stat is not None and stat[1] == starttime and stat[2] != b"Z"


def is_service(argv: tuple[str, ...]) -> bool:
    """A service process of the bench: ``sleep ...`` or the log writer (after its exec)."""
    if not argv:
        return False
    return os.path.basename(argv[0]) == "sleep" or any(a.endswith(WRITER_NAME) for a in argv[1:3])


class ProcTable:
    """An incremental view of /proc: each refresh reads the stat of new pids only.

    Bench processes do not re-parent while their supervisor lives, so a ppid read once stays
    right; the argv is cached once a process is a service (it has exec'd).
    """

    def __init__(self) -> None:
        self.stat: dict[int, tuple[int, int, bytes]] = {}
        self.argvs: dict[tuple[int, int], tuple[str, ...]] = {}

    def refresh(self) -> list[int]:
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for pid in [p for p in self.stat if p not in pids]:
            del self.stat[pid]
        new = []
        for pid in pids - self.stat.keys():
            stat = read_stat(pid)
            if stat is not None:
                self.stat[pid] = stat
                new.append(pid)
        if len(self.argvs) > 4 * len(self.stat) + 100:
            self.argvs = {k: v for k, v in self.argvs.items() if self.stat.get(k[0], (0, -1))[1] == k[1]}
        return new

    def argv(self, pid: int) -> tuple[str, ...]:
        start = self.stat.get(pid, (0, -1, b""))[1]
        cached = self.argvs.get((pid, start))
        if cached is not None:
            return cached
        argv = read_argv(pid)
        if is_service(argv):
            self.argvs[(pid, start)] = argv
        return argv

    def children_map(self) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in self.stat.items():
            children.setdefault(ppid, []).append(pid)
        return children

    def classify(self, root: int) -> tuple[dict[int, tuple[str, ...]], list[int]]:
        """Split the tree under ``root`` into services {pid: argv} and the supervisor's own
        processes (root, helpers, shell wrappers). A service's own children are not walked."""
        children = self.children_map()
        services: dict[int, tuple[str, ...]] = {}
        own: list[int] = []
        todo = [root]
        while todo:
            pid = todo.pop()
            if pid != root:
                argv = self.argv(pid)
                if is_service(argv):
                    services[pid] = argv
                    continue
            own.append(pid)
            todo.extend(children.get(pid, ()))
        return services, own

    def is_under(self, pid: int, root: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == root:
                return True
            pid = self.stat.get(pid, (0, 0, b""))[0]
            seen += 1
        return pid == root


def marked(value: bytes, prefix: bool = False) -> list[tuple[int, int]]:
    """(pid, starttime) of every live process whose environment has MARK_VAR=value."""
    needle = f"{MARK_VAR}=".encode() + value
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item == needle or (prefix and item.startswith(needle)):
                stat = read_stat(int(name))
                if stat is not None and stat[2] != b"Z":
                    found.append((int(name), stat[1]))
                break
    return found


def thread_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all threads of ``pid`` (wake-ups, roughly)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.endswith(b"ctxt_switches:", 0, line.index(b":") + 1):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def kill_exact(pid: int, starttime: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` only if it is still the process that started at ``starttime``."""
    stat = read_stat(pid)
    if stat is None or stat[1] != starttime:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.005) -> tuple[object, float]:
    """Poll ``predicate`` until truthy or ``timeout`` s pass: (value, monotonic time it held)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        now = time.monotonic()
        if value:
            return value, now
        if now > deadline:
            return value, now
        time.sleep(interval)


# -- what was started, for cleanup at exit --------------------------------------------------

class Registry:
    """Everything this run started; ``cleanup`` kills what is left, by pid, also at exit."""

    def __init__(self) -> None:
        self.roots: list[subprocess.Popen] = []
        self.dirs: list[Path] = []
        self.keep_dirs = False

    def cleanup(self) -> None:
        for proc in self.roots:
            if proc.poll() is None:  # still our unreaped child: its pid and group are ours
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for pid, start in marked(RUN_ID.encode(), prefix=True):
            kill_exact(pid, start)
        if not self.keep_dirs:
            for folder in self.dirs:
                shutil.rmtree(folder, ignore_errors=True)


REGISTRY = Registry()
atexit.register(REGISTRY.cleanup)


def _exit_on_signal(signum, frame):  # pragma: no cover - interactive
    raise SystemExit(128 + signum)


# -- services -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Svc:
    name: str
    argv: tuple[str, ...]


def sleepers(n: int) -> list[Svc]:
    return [Svc(f"s{i}", SLEEP) for i in range(n)]


WRITER = f'''\
import os, sys, time
count, marker = int(sys.argv[1]), sys.argv[2]
def mark(suffix):
    with open(marker + suffix + ".tmp", "w") as f:
        f.write(repr(time.time()))
    os.rename(marker + suffix + ".tmp", marker + suffix)
mark(".start")
write = sys.stdout.write
for i in range(count):
    write("L%07d {PAD}\\n" % i)
sys.stdout.flush()
mark(".done")
time.sleep(100000)  # stay up: a restart would write the lines twice
'''

#: a writer that is not the bottleneck: every line formatted before the clock starts, then
#: written in 64 KiB chunks with os.write (what the log path itself costs shows)
RAW_WRITER = f'''\
import os, sys, time
count, marker = int(sys.argv[1]), sys.argv[2]
def mark(suffix):
    with open(marker + suffix + ".tmp", "w") as f:
        f.write(repr(time.time()))
    os.rename(marker + suffix + ".tmp", marker + suffix)
data = memoryview("".join(["L%07d {PAD}\\n" % i for i in range(count)]).encode())
chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
mark(".start")
for chunk in chunks:
    while chunk:
        chunk = chunk[os.write(1, chunk):]
mark(".done")
time.sleep(100000)  # stay up: a restart would write the lines twice
'''


# -- adapters -------------------------------------------------------------------------------

class Adapter:
    """One supervisor: config for N services, start, stop, and where things are."""

    name = "?"
    #: scenario -> reason it cannot run there
    unsupported: dict[str, str] = {}
    #: the largest N it runs at (None: any), and why
    max_n: int | None = None
    max_n_reason = ""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.conf_dir = workdir / "conf"
        self.log_dir = workdir / "logs"
        self.out_dir = workdir / "out"
        for folder in (self.conf_dir, self.log_dir, self.out_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.services: list[Svc] = []

    @classmethod
    def missing(cls) -> str | None:
        """Why this supervisor cannot run here (not installed), or None."""
        return None

    @property
    def out_path(self) -> Path:
        return self.out_dir / f"{self.name}.out"

    def configure(self, services: list[Svc]) -> None:
        self.services = list(services)
        self.write_config()

    def write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def launch(self, env: dict[str, str]) -> None:
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.conf_dir, env=env, start_new_session=True)
        REGISTRY.roots.append(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def log_file(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    def reload(self) -> str:
        """Make the running supervisor apply the saved config; returns how."""
        raise NotImplementedError

    def status_command(self) -> list[str] | None:
        return None

    def cleanup(self) -> None:
        """Anything besides processes this supervisor leaves behind (after it stopped)."""


class Supervise(Adapter):
    name = "supervise"
    unsupported = {}

    def __init__(self, workdir: Path, command: list[str] | None = None, python: str | None = None,
                 reload_mode: str = "auto"):
        super().__init__(workdir)
        self.base = command or [str(SUPERVISE_BIN / "supervise")]
        self.python = python or str(SUPERVISE_BIN / "python")
        self.reload_mode = reload_mode
        self.config = self.conf_dir / "services.toml"
        self.state_dir = self.conf_dir / "state"

    @classmethod
    def missing(cls) -> str | None:
        if not (SUPERVISE_BIN / "supervise").exists() and not any(a.startswith("--supervise-cmd") for a in sys.argv):
            return "bench/.venv-supervise/bin/supervise is missing: run bench/setup.sh"
        return None

    def write_config(self) -> None:
        # No rotation, like the peers' configs here (supervisord's stdout_logfile_maxbytes = 0):
        # the log scenario reads one file. (Rotation itself is tested in tests/integration.)
        lines = ["[supervise]", f"state_dir = {json.dumps(str(self.state_dir))}",
                 'log = { max_size = "64GiB" }', ""]
        for svc in self.services:
            lines += [f"[services.{svc.name}]", f"command = {json.dumps(list(svc.argv))}", ""]
        write_atomic(self.config, "\n".join(lines))

    def command(self) -> list[str]:
        # -q: no echo of service output, like the peers here (their output goes to files only)
        return [*self.base, "-q", "--config", str(self.config)]

    def log_file(self, service: str) -> Path:
        return self.state_dir / "logs" / f"{service}.log"

    def reloads_on_save(self) -> bool:
        if self.reload_mode != "auto":
            return self.reload_mode == "save"
        # supervisor/triggers/watch.py, or supervisor/watch.py in a checkout from before the layout
        probe = ("import pathlib, sys, supervisor; p = pathlib.Path(supervisor.__file__).parent; "
                 "sys.exit(0 if (p / 'triggers' / 'watch.py').exists() or (p / 'watch.py').exists() else 1)")
        return run_quiet([self.python, "-c", probe]) == 0

    def reload(self) -> str:
        if self.reloads_on_save():
            return "on save (watchdog)"
        os.kill(self.pid, signal.SIGHUP)
        return "SIGHUP after the save (no reload on save yet)"

    def status_command(self) -> list[str] | None:
        if not has_verb([*self.base, "--help"], "status"):
            return None
        return [*self.base, "status", "--config", str(self.config)]

    def cleanup(self) -> None:
        remove_supervise_cgroups(self.state_dir)


class Supervisord(Adapter):
    name = "supervisord"
    unsupported = {}

    @classmethod
    def missing(cls) -> str | None:
        return None if (PEERS_BIN / "supervisord").exists() else "bench/.venv/bin/supervisord is missing: run bench/setup.sh"

    @property
    def config(self) -> Path:
        return self.conf_dir / "supervisord.conf"

    def write_config(self) -> None:
        d = self.out_dir
        lines = [
            "[supervisord]", "nodaemon = true", f"logfile = {d / 'supervisord.log'}", f"pidfile = {d / 'supervisord.pid'}",
            f"childlogdir = {self.log_dir}", "",
            "[unix_http_server]", f"file = {d / 'supervisord.sock'}", "",
            "[supervisorctl]", f"serverurl = unix://{d / 'supervisord.sock'}", "",
            "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        ]
        for svc in self.services:
            lines += [f"[program:{svc.name}]", f"command = {shlex.join(svc.argv)}", "autorestart = true",
                      "redirect_stderr = true", f"stdout_logfile = {self.log_file(svc.name)}",
                      "stdout_logfile_maxbytes = 0", ""]
        write_atomic(self.config, "\n".join(lines))

    def command(self) -> list[str]:
        return [str(PEERS_BIN / "supervisord"), "-n", "-c", str(self.config)]

    def reload(self) -> str:
        ctl([str(PEERS_BIN / "supervisorctl"), "-c", str(self.config), "update"])
        return "supervisorctl update"

    def status_command(self) -> list[str] | None:
        return [str(PEERS_BIN / "supervisorctl"), "-c", str(self.config), "status"]


class Circus(Adapter):
    name = "circus"
    unsupported = {}

    @classmethod
    def missing(cls) -> str | None:
        return None if (PEERS_BIN / "circusd").exists() else "bench/.venv/bin/circusd is missing: run bench/setup.sh"

    @property
    def config(self) -> Path:
        return self.conf_dir / "circus.ini"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.out_dir / 'endpoint'}"

    def write_config(self) -> None:
        d = self.out_dir
        lines = ["[circus]", f"endpoint = {self.endpoint}", f"pubsub_endpoint = ipc://{d / 'pubsub'}",
                 "statsd = False", ""]
        for svc in self.services:
            log = self.log_file(svc.name)
            lines += [f"[watcher:{svc.name}]", f"cmd = {shlex.quote(svc.argv[0])}",
                      f"args = {shlex.join(svc.argv[1:])}", "numprocesses = 1", "copy_env = True",
                      "stdout_stream.class = FileStream", f"stdout_stream.filename = {log}",
                      "stderr_stream.class = FileStream", f"stderr_stream.filename = {log}", ""]
        write_atomic(self.config, "\n".join(lines))

    def command(self) -> list[str]:
        return [str(PEERS_BIN / "circusd"), str(self.config)]

    def reload(self) -> str:
        ctl([str(PEERS_BIN / "circusctl"), "--endpoint", self.endpoint, "--timeout", "30", "reloadconfig"])
        return "circusctl reloadconfig"

    def status_command(self) -> list[str] | None:
        return [str(PEERS_BIN / "circusctl"), "--endpoint", self.endpoint, "--timeout", "30", "status"]


class Honcho(Adapter):
    name = "honcho"
    unsupported = {
        "restart": "honcho stops everything when one process exits; it never restarts",
        "reload": "honcho has no reload: a Procfile change needs a full restart",
        "status": "honcho has no status command",
    }
    # three processes a service (a Python fork, sh, the service): 1.5 GB PSS at 500, several
    # GB above 1000 on a shared machine; its curve is clear by then
    max_n = 1000
    max_n_reason = "not run above 1000 services (3 processes and ~3 MB PSS a service)"

    @classmethod
    def missing(cls) -> str | None:
        return None if (PEERS_BIN / "honcho").exists() else "bench/.venv/bin/honcho is missing: run bench/setup.sh"

    def write_config(self) -> None:
        text = "".join(f"{svc.name}: {shlex.join(svc.argv)}\n" for svc in self.services)
        write_atomic(self.conf_dir / "Procfile", text)

    def command(self) -> list[str]:
        return [str(PEERS_BIN / "honcho"), "--no-colour", "-f", str(self.conf_dir / "Procfile"),
                "-d", str(self.conf_dir), "start"]

    def log_file(self, service: str) -> Path:
        return self.out_path  # honcho prints every service's output, prefixed, on its stdout


class S6(Adapter):
    """Debian's s6: ``s6-svscan`` on a scan dir of N service dirs, one ``s6-supervise`` each.

    Each service dir has a ``run`` script (``#!/bin/sh``, ``exec 2>&1``, ``exec ARGV``: how s6
    services are written); the log scenario adds a ``log/run`` with ``s6-log`` (no timestamps,
    no rotation below 256 MiB) writing ``logs/NAME/current``. Reload = rewrite the changed
    ``run`` and ``s6-svc -r`` it (s6 reads ``run`` at each start); status = ``s6-svstat`` of
    every dir (s6 has no one-shot status of a whole scan dir). SIGTERM to s6-svscan brings every
    service down and exits (s6 >= 2.11).
    """

    name = "s6"
    unsupported = {}

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.scan = self.conf_dir / "scan"
        self.scan.mkdir(exist_ok=True)
        self.changed: list[str] = []

    @classmethod
    def missing(cls) -> str | None:
        return None if shutil.which("s6-svscan") else "s6-svscan is not installed (apt-get install s6)"

    def write_config(self) -> None:
        self.changed = []
        for svc in self.services:
            folder = self.scan / svc.name
            folder.mkdir(exist_ok=True)
            text = "#!/bin/sh\nexec 2>&1\nexec " + shlex.join(svc.argv) + "\n"
            run = folder / "run"
            if run.exists() and run.read_text() == text:
                continue
            self.changed.append(svc.name)
            write_atomic(run, text, mode=0o755)
            if svc.argv[0] != "sleep":  # the log writer: a logger service beside it
                (folder / "log").mkdir(exist_ok=True)
                write_atomic(folder / "log" / "run", "#!/bin/sh\nexec s6-log -b n1 s268435455 "
                             + shlex.quote(str(self.log_dir / svc.name)) + "\n", mode=0o755)

    def command(self) -> list[str]:
        # -c: room for every service dir (s6-svscan's default maximum is 500)
        return ["s6-svscan", "-c", str(max(500, 2 * len(self.services) + 10)), str(self.scan)]

    def log_file(self, service: str) -> Path:
        return self.log_dir / service / "current"

    def reload(self) -> str:
        for name in self.changed:
            ctl(["s6-svc", "-r", str(self.scan / name)])
        return "rewrite run, s6-svc -r"

    def status_command(self) -> list[str] | None:
        return ["sh", "-c", 'for d in "$1"/*/; do printf "%s " "$d"; s6-svstat "$d"; done', "sh", str(self.scan)]


class Limit(Adapter):
    """No supervisor: bench/spawn_limit.c starts N copies with posix_spawn, then on SIGTERM
    kills and reaps them. The floor for cold start and stop; the log scenarios' writer writes
    straight into the file (no pipe, no supervisor)."""

    name = "limit"
    unsupported = {
        "idle": "no supervisor", "restart": "no supervision: nothing restarts",
        "reload": "no config", "status": "no status",
    }
    _binary: Path | None = None

    @classmethod
    def missing(cls) -> str | None:
        try:
            cls.binary()
        except (OSError, RuntimeError) as exc:
            return f"cannot build bench/spawn_limit.c: {exc}"
        return None

    @classmethod
    def binary(cls) -> Path:
        """bench/spawn_limit.c compiled (once a run) into a temp dir."""
        if cls._binary is None:
            folder = Path(tempfile.mkdtemp(prefix="svb-limit-"))
            REGISTRY.dirs.append(folder)
            out = folder / "spawn_limit"
            cc = shutil.which("gcc") or shutil.which("cc")
            if cc is None:
                raise RuntimeError("no C compiler (gcc)")
            result = subprocess.run([cc, "-O2", "-o", str(out), str(BENCH / "spawn_limit.c")],
                                    capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip()[-300:])
            cls._binary = out
        return cls._binary

    def write_config(self) -> None:
        argvs = {svc.argv for svc in self.services}
        if len(argvs) != 1:
            raise RuntimeError("the limit starts N copies of one command")

    def command(self) -> list[str]:
        argv = self.services[0].argv
        out = "-" if argv[0] == "sleep" else str(self.log_file(self.services[0].name))
        return [str(self.binary()), str(len(self.services)), out, *argv]


ADAPTERS: dict[str, type[Adapter]] = {a.name: a for a in (Supervise, Supervisord, Circus, Honcho, S6, Limit)}
#: the peers supervise is compared with ("best peer"); the limit is not a supervisor
PEERS = ("supervisord", "circus", "honcho", "s6")


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_supervise() -> None:
    """Install this checkout into bench/.venv-supervise as a user does (``pip install .``, as
    the README says; not editable) whenever it changed since the last install. An editable
    install's import hook (importlib.util and the finder's path table, imported by ``site``)
    cost every supervise process, hence every `supervise status`, about 10 ms that an
    installed package does not (issue 17). The stamp is a hash of pyproject.toml and every
    file under supervisor/, kept in the venv."""
    python = SUPERVISE_BIN / "python"
    if not python.exists():
        return
    digest = hashlib.sha256()
    for path in sorted([ROOT / "pyproject.toml", *(ROOT / "supervisor").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    stamp = SUPERVISE_BIN.parent / "checkout.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest.hexdigest():
        return
    note("installing this checkout into bench/.venv-supervise (changed since the last install)")
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"bench: installing the checkout failed:\n{result.stderr[-2000:]}")
    stamp.write_text(digest.hexdigest() + "\n")


def compile_supervise(python: str) -> None:
    """Byte-compile this checkout, as installing a package does (pip writes the .pyc files of
    the peers at install; a --supervise-cmd checkout may be installed editable, and a shell
    with PYTHONDONTWRITEBYTECODE=1 would make every supervise start and every status command
    compile 13,000 lines again). The supervisors run without PYTHONDONTWRITEBYTECODE."""
    run_quiet([python, "-m", "compileall", "-q", str(ROOT / "supervisor")], timeout=300)


def run_quiet(argv: list[str], timeout: float = 30) -> int:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout).returncode
    except (OSError, subprocess.TimeoutExpired):
        return -1


_VERBS: dict[tuple[str, ...], str] = {}


def has_verb(help_argv: list[str], verb: str) -> bool:
    key = tuple(help_argv)
    if key not in _VERBS:
        try:
            _VERBS[key] = subprocess.run(help_argv, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            _VERBS[key] = ""
    return re.search(rf"^\s+{re.escape(verb)}(\s|$)", _VERBS[key], re.M) is not None


def ctl(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-2:])} exited {result.returncode}: {(result.stdout + result.stderr)[-300:]}")
    return result


def remove_supervise_cgroups(state_dir: Path) -> None:
    """Remove the (empty) cgroups supervise made for this state dir, if it was killed before it
    could (supervisor/execute/cgroups.py names them supervise-SHA1(state_dir)[:8] under its cgroup)."""
    import hashlib
    tag = hashlib.sha1(str(state_dir).encode()).hexdigest()[:8]
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        mount = next(Path(line.split()[1]) for line in mounts if line.split()[2:3] == ["cgroup2"])
        own = next(line[3:].strip().lstrip("/") for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::"))
    except (OSError, StopIteration):
        return
    parent = mount / own / f"supervise-{tag}"
    if not parent.is_dir():
        return
    for folder, dirs, _ in os.walk(parent, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


# -- a running supervisor -------------------------------------------------------------------

class Session:
    """A supervisor started for one scenario; stopping it on exit is bounded and by pid."""

    def __init__(self, adapter: Adapter, services: list[Svc], grace: float | None = None):
        self.adapter = adapter
        self.services = services
        self.grace = stop_timeout(len(services)) if grace is None else grace
        self.mark = f"{RUN_ID}-{uuid.uuid4().hex[:8]}"
        self.table = ProcTable()
        self.seen: dict[int, int] = {}  # every service pid seen -> starttime
        self.profiler: subprocess.Popen | None = None

    def __enter__(self) -> "Session":
        self.adapter.configure(self.services)
        env = {**os.environ, MARK_VAR: self.mark}
        env.pop("PYTHONUNBUFFERED", None)  # the log writer must buffer as a normal program does
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # see compile_supervise()
        self.t_launch = time.monotonic()
        self.adapter.launch(env)
        if PROFILE_DIR is not None and self.adapter.name == "supervise" and CURRENT_SCENARIO != "stop":
            self._start_profiler()  # the stop scenario records the stop alone (see stop())
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # observation
    def services_now(self) -> dict[int, tuple[str, ...]]:
        self.table.refresh()
        services, _ = self.table.classify(self.adapter.pid)
        for pid in services:
            self.seen.setdefault(pid, self.table.stat[pid][1])
        return services

    def own_pids(self) -> list[int]:
        self.table.refresh()
        return self.table.classify(self.adapter.pid)[1]

    def wait_services(self, count: int, timeout: float, argv: tuple[str, ...] | None = None) -> float:
        """Seconds from launch until ``count`` service processes (with ``argv``) exist."""
        def enough() -> bool:
            self.check_running()
            services = self.services_now()
            return sum(1 for a in services.values() if argv is None or a == argv) >= count
        ok, when = wait_for(enough, timeout, interval=0.005)
        if not ok:
            have = len(self.services_now())
            raise RuntimeError(f"only {have} of {count} services up after {timeout:.0f}s")
        return when - self.t_launch

    def check_running(self) -> None:
        proc = self.adapter.proc
        if proc is not None and proc.poll() is not None:
            tail = self.adapter.out_path.read_text(errors="replace")[-600:] if self.adapter.out_path.exists() else ""
            raise RuntimeError(f"{self.adapter.name} exited with {proc.returncode}: {tail}")

    def own_processes(self) -> list[psutil.Process]:
        procs = []
        for pid in self.own_pids():
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        return procs

    def memory(self) -> dict[str, float]:
        """RSS and PSS (MB) summed over the supervisor's own processes, from
        /proc/PID/smaps_rollup (one read a process: honcho has thousands)."""
        rss = pss = 0
        pids = self.own_pids()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                    for line in f:
                        if line.startswith(b"Rss:"):
                            rss += int(line.split()[1])
                        elif line.startswith(b"Pss:"):
                            pss += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue
        return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "own_procs": len(pids)}

    def cpu(self) -> tuple[float, int]:
        """CPU seconds (user+system, children excluded) and context switches of the supervisor
        (every thread's: /proc/PID/status counts the main thread alone)."""
        total, switches = 0.0, 0
        for p in self.own_processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
            switches += thread_switches(p.pid)
        return total, switches

    # shutdown
    def stop(self, timeout: float = 30.0) -> dict[str, float | int | None]:
        """SIGTERM the supervisor; seconds until no service process is left and until it exited."""
        self.services_now()
        services = dict(self.seen)
        if PROFILE_DIR is not None and self.adapter.name == "supervise" and self.profiler is None:
            self._start_profiler()
        t0 = time.monotonic()
        self.adapter.terminate()
        left, t_services = wait_for(lambda: not [p for p, s in services.items() if alive(p, s)], timeout,
                                    interval=0.005)
        proc = self.adapter.proc
        _, t_exit = wait_for(lambda: proc is None or proc.poll() is not None, max(0.0, t0 + timeout - time.monotonic()),
                             interval=0.005)
        survivors = [p for p, s in services.items() if alive(p, s)]
        survivors += [p for p, _ in marked(self.mark.encode()) if p not in survivors and p not in services]
        exited = proc is None or proc.poll() is not None
        return {"stop_s": round(t_services - t0, 4) if not survivors else None,
                "exit_s": round(t_exit - t0, 4) if exited else None,
                "survivors": len(survivors)}

    def shutdown(self) -> None:
        """Stop gracefully (bounded), then kill whatever is left, by pid."""
        proc = self.adapter.proc
        try:
            if proc is not None and proc.poll() is None:
                self.stop(timeout=self.grace)
        finally:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            for pid, start in list(self.seen.items()) + marked(self.mark.encode()):
                kill_exact(pid, start)
            wait_for(lambda: not marked(self.mark.encode()), 5.0, interval=0.02)
            self._stop_profiler()
            self.adapter.cleanup()

    # profiling (supervise only, --profile DIR)
    def _start_profiler(self) -> None:
        """py-spy on the supervisor (not its services) into PROFILE_DIR, raw collapsed stacks."""
        spy = PEERS_BIN / "py-spy"
        out = PROFILE_DIR / f"{CURRENT_SCENARIO}-{self.adapter.name}-{len(self.services)}.txt"
        self.profiler = subprocess.Popen(
            [str(spy), "record", "--pid", str(self.adapter.pid), "--rate", "500", "--format", "raw",
             "--nonblocking", "--output", str(out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        REGISTRY.roots.append(self.profiler)
        time.sleep(0.05)

    def _stop_profiler(self) -> None:
        if self.profiler is None:
            return
        try:  # py-spy writes its file when the target exits; bounded all the same
            self.profiler.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.profiler.wait(timeout=10)
        self.profiler = None


PROFILE_DIR: Path | None = None
CURRENT_SCENARIO = ""


# -- scenarios ------------------------------------------------------------------------------

@dataclass
class Params:
    #: N of the scenarios that scale (cold, idle, stop, reload, status)
    sizes: list[int] = field(default_factory=lambda: [50, 200, 500, 1000, 2000])
    idle_s: float = 20.0        # idle window at the largest N
    idle_short_s: float = 5.0   # idle window at the other sizes (a full run stays ~15 min)
    restart_n: int = 200
    kills: int = 20
    log_lines: int = 500_000
    log_repeats: int = 3
    status_runs: int = 5
    settle: float = 1.5      # restart: supervisord counts a process as running (not crashing) after 1 s
    grace: float | None = None  # teardown: seconds for a graceful stop before SIGKILL (None: stop_timeout(n))
    quick: bool = False

    @classmethod
    def quick_params(cls) -> "Params":
        return cls(sizes=[10], idle_s=1.5, restart_n=10, kills=2, log_lines=20_000, log_repeats=1,
                   status_runs=2, settle=1.1, grace=1.0, quick=True)

    def with_n(self, n: int) -> "Params":
        return dataclasses.replace(self, sizes=[n], restart_n=n)

    def idle_window(self, n: int) -> float:
        return self.idle_s if n >= max(self.sizes) else min(self.idle_s, self.idle_short_s)


def start_timeout(n: int) -> float:
    return 30.0 + 0.25 * n


def stop_timeout(n: int) -> float:
    return 30.0 + 0.5 * n  # supervisord stops programs one after another


#: after all services are up, before measuring (the last starts' bookkeeping)
SETTLE = 0.3


# Phases: one measurement on a running Session. A scenario run alone opens its own Session
# (sc_*); a full run measures cold, idle, status, reload and stop on ONE Session per supervisor
# and N, in that order (run_fused), which cuts the run's time by 4x at the same figures.

def ph_cold(s: "Session", adapter: Adapter, n: int, p: Params) -> dict:
    start = s.wait_services(n, start_timeout(n))
    time.sleep(0.3 if p.quick else 1.0)  # let it finish what it does after the last start
    return {"start_s": round(start, 4), **s.memory()}


def ph_idle(s: "Session", adapter: Adapter, n: int, p: Params) -> dict:
    time.sleep(0.5 if p.quick else 1.0)
    cpu0, ctx0 = s.cpu()
    t0 = time.monotonic()
    time.sleep(p.idle_window(n))
    cpu1, ctx1 = s.cpu()
    elapsed = time.monotonic() - t0
    s.check_running()
    return {"cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 3), "cpu_s": round(cpu1 - cpu0, 3),
            "ctx_per_s": round((ctx1 - ctx0) / elapsed, 1), "window_s": round(elapsed, 1)}


def ph_status(s: "Session", adapter: Adapter, n: int, p: Params) -> dict:
    argv = adapter.status_command()
    if argv is None:
        return {"skipped": f"`{adapter.name} status` does not exist yet"}
    times, codes, shown = [], set(), 0
    for _ in range(p.status_runs):
        t0 = time.monotonic()
        env = {**os.environ, MARK_VAR: s.mark}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # see compile_supervise()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
        times.append(time.monotonic() - t0)
        codes.add(result.returncode)
    # every service named in the last output (one pass over its words: a regex per service
    # over 2,000 rows took the bench 10 s a run)
    words = set(re.split(r"[^A-Za-z0-9_]+", result.stdout))
    shown = sum(1 for svc in s.services if svc.name in words)
    if shown < n:
        raise RuntimeError(f"status listed {shown} of {n} services (exit {sorted(codes)})")
    return {"p50_s": round(statistics.median(times), 4), "first_s": round(times[0], 4),
            "exit_codes": sorted(codes)}


def ph_reload(s: "Session", adapter: Adapter, n: int, p: Params) -> dict:
    services = s.services
    changed = services[n // 2].name
    new_argv = ("sleep", "1001")
    time.sleep(p.settle)
    before = {pid: s.table.stat[pid][1] for pid in s.services_now()}
    adapter.configure([Svc(x.name, new_argv) if x.name == changed else x for x in services])
    t0 = time.monotonic()
    how = adapter.reload()
    t_ctl = time.monotonic() - t0

    def running_again() -> bool:
        s.check_running()
        return any(a == new_argv for a in s.services_now().values())
    ok, when = wait_for(running_again, 60.0, interval=0.002)
    if not ok:
        raise RuntimeError(f"the changed service was not running again 60 s after the save ({how})")
    time.sleep(0.5)
    gone = [pid for pid, start in before.items() if not alive(pid, start)]
    return {"reload_s": round(when - t0, 4), "command_s": round(t_ctl, 4), "restarted": len(gone),
            "collateral": max(0, len(gone) - 1), "how": how}


def ph_stop(s: "Session", adapter: Adapter, n: int, p: Params) -> dict:
    time.sleep(SETTLE)
    return s.stop(timeout=stop_timeout(n))


def _alone(phase: Callable[["Session", Adapter, int, Params], dict], wait: float = 0.0
           ) -> Callable[[Adapter, int, Params], dict]:
    """A phase as a scenario of its own: a fresh Session, services up, then the phase."""
    def run(adapter: Adapter, n: int, p: Params) -> dict:
        with Session(adapter, sleepers(n), p.grace) as s:
            if phase is not ph_cold:
                s.wait_services(n, start_timeout(n))
                time.sleep(wait)
            return phase(s, adapter, n, p)
    run.__name__ = "sc_" + phase.__name__[3:]
    return run


sc_cold = _alone(ph_cold)
sc_idle = _alone(ph_idle, wait=1.0)
sc_status = _alone(ph_status, wait=1.5)
sc_reload = _alone(ph_reload)
sc_stop = _alone(ph_stop)

#: the phases a full run measures on one Session, in this order
FUSED = {"cold": ph_cold, "idle": ph_idle, "status": ph_status, "reload": ph_reload, "stop": ph_stop}


def sc_restart(adapter: Adapter, n: int, p: Params) -> dict:
    with Session(adapter, sleepers(n), p.grace) as s:
        s.wait_services(n, start_timeout(n))
        time.sleep(p.settle)
        victims = sorted(s.services_now())[: p.kills]
        latencies = []
        for victim in victims:
            known = set(s.services_now())
            root = adapter.pid
            pending: set[int] = set()
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            def replaced() -> bool:
                new = s.table.refresh()
                pending.update(pid for pid in new if pid not in known)
                for pid in list(pending):
                    if pid not in s.table.stat or not s.table.is_under(pid, root):
                        pending.discard(pid)
                    elif is_service(s.table.argv(pid)):
                        return True
                return False
            ok, when = wait_for(replaced, 10.0, interval=0.0005)
            if not ok:
                s.check_running()
                raise RuntimeError(f"no new process within 10 s after SIGKILL of pid {victim}")
            latencies.append(when - t0)
            time.sleep(0.2)
        s.services_now()
        ms = sorted(x * 1000 for x in latencies)
        return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(percentile(ms, 95), 2),
                "max_ms": round(ms[-1], 2), "kills": len(ms)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def sc_logs(adapter: Adapter, n: int, p: Params, raw: bool = False) -> dict:
    """The log writer ``p.log_repeats`` times (a fresh supervisor and log file each); the
    median run by time is reported, with every run's time and the worst loss of any run."""
    runs = []
    for _ in range(max(1, p.log_repeats)):
        runs.append(logs_once(adapter, p, raw))
    runs.sort(key=lambda r: r["total_s"])
    result = dict(runs[(len(runs) - 1) // 2])
    result["runs_s"] = [r["total_s"] for r in runs]
    result["writer_runs_s"] = sorted(r["writer_s"] for r in runs if r["writer_s"] is not None)
    if result["writer_runs_s"]:  # the writer's own time: its median over the runs too
        result["writer_s"] = result["writer_runs_s"][(len(result["writer_runs_s"]) - 1) // 2]
    for key in ("missing", "duplicated", "reordered", "damaged"):
        result[key] = max(r[key] for r in runs)
    result["complete"] = all(r["complete"] for r in runs)
    return result


def sc_logs_raw(adapter: Adapter, n: int, p: Params) -> dict:
    return sc_logs(adapter, n, p, raw=True)


def logs_once(adapter: Adapter, p: Params, raw: bool = False) -> dict:
    lines = p.log_lines
    writer = adapter.out_dir / (RAW_WRITER_NAME if raw else WRITER_NAME)
    writer.write_text(RAW_WRITER if raw else WRITER)
    marker = adapter.out_dir / "writer"
    svc = Svc("w", (sys.executable, str(writer), str(lines), str(marker)))
    log = adapter.log_file(svc.name)
    for old in (log, adapter.out_path, *(Path(str(marker) + x) for x in (".start", ".done"))):
        old.unlink(missing_ok=True)
    last = f"L{lines - 1:07d} {PAD}".encode()
    timeout = 300.0 if not p.quick else 60.0
    with Session(adapter, [svc], p.grace) as s:
        state = {"size": -1, "changed": time.monotonic()}

        def complete() -> bool:
            s.check_running()
            try:
                size = log.stat().st_size
            except OSError:
                return False
            now = time.monotonic()
            if size != state["size"]:
                state["size"], state["changed"] = size, now
                with open(log, "rb") as f:
                    f.seek(max(0, size - 4096))
                    if last in f.read():
                        return True
            done = Path(str(marker) + ".done").exists()
            return done and now - state["changed"] > 3.0  # finished writing, nothing more arrives
        ok, _ = wait_for(complete, timeout, interval=0.001)
        t_end = time.time() - (time.monotonic() - state["changed"])  # when the file last grew
        # the last line can reach the file before the writer wrote its .done marker
        wait_for(lambda: Path(str(marker) + ".done").exists(), 5.0, interval=0.002)
        start = float(Path(str(marker) + ".start").read_text()) if Path(str(marker) + ".start").exists() else None
        done = float(Path(str(marker) + ".done").read_text()) if Path(str(marker) + ".done").exists() else None
        cpu_s, _ = s.cpu()
        counts = count_lines(log.read_bytes(), lines)
        if start is None:
            raise RuntimeError("the writer never started")
        total = t_end - start
        writer_s = round(done - start, 4) if done else None
        return {"lines": lines, "total_s": round(total, 4), "lines_per_s": round(lines / total) if total > 0 else None,
                "writer_s": writer_s, "over_writer": round(total / writer_s, 3) if writer_s else None,
                "complete": bool(ok), **counts, "supervisor_cpu_s": round(cpu_s, 2)}


LINE_RE = re.compile(rb"L(\d{7}) " + PAD.encode() + rb"\r?$", re.M)


def count_lines(data: bytes, expected: int) -> dict[str, int]:
    seqs = [int(m.group(1)) for m in LINE_RE.finditer(data)]
    unique = len(set(seqs))
    reordered = sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
    damaged = data.count(b"xxxxxxxx\n") + data.count(b"xxxxxxxx\r\n") - len(seqs)
    return {"missing": expected - unique, "duplicated": len(seqs) - unique, "reordered": reordered,
            "damaged": max(0, damaged)}


@dataclass
class Scenario:
    name: str
    run: Callable[[Adapter, int, Params], dict]
    ns: Callable[[Params], list[int]]
    #: (key, label, ratio?) shown in the tables; every ratio'd metric is lower-is-better
    metrics: list[tuple[str, str, bool]]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("cold", sc_cold, lambda p: p.sizes,
             [("start_s", "cold start (s)", True), ("rss_mb", "supervisor RSS (MB)", True),
              ("pss_mb", "supervisor PSS (MB)", True)]),
    Scenario("idle", sc_idle, lambda p: p.sizes,
             [("cpu_s", "idle CPU-seconds in the window", True), ("ctx_per_s", "context switches/s", True)]),
    Scenario("restart", sc_restart, lambda p: [p.restart_n],
             [("p50_ms", "restart after SIGKILL p50 (ms)", True), ("p95_ms", "restart p95 (ms)", True)]),
    Scenario("logs", sc_logs, lambda p: [1],
             [("writer_s", "block-buffered writer's own run time (s)", True),
              ("total_s", "first write -> last line in file (s)", True), ("lines_per_s", "lines/s", False),
              ("missing", "lines lost", False), ("reordered", "lines reordered", False)]),
    Scenario("logs-raw", sc_logs_raw, lambda p: [1],
             [("writer_s", "64 KiB-chunk writer's own run time (s)", True),
              ("total_s", "first write -> last line in file (s)", True),
              ("over_writer", "last line / writer's run time", False),
              ("missing", "lines lost", False), ("reordered", "lines reordered", False)]),
    Scenario("stop", sc_stop, lambda p: p.sizes,
             [("stop_s", "stop until none left (s)", True), ("exit_s", "supervisor exited (s)", True),
              ("survivors", "survivors", False)]),
    Scenario("reload", sc_reload, lambda p: p.sizes,
             [("reload_s", "config save -> changed one running (s)", True), ("collateral", "others restarted", False)]),
    Scenario("status", sc_status, lambda p: p.sizes,
             [("p50_s", "status command p50 (s)", True)]),
]}


def skip_reason(name: str, scenario: str, n: int) -> str | None:
    cls = ADAPTERS[name]
    if cls.unsupported.get(scenario):
        return cls.unsupported[scenario]
    if cls.max_n is not None and n > cls.max_n:
        return cls.max_n_reason
    return None


def _finish(record: dict, before: dict, t0: float) -> dict:
    record["wall_s"] = round(time.monotonic() - t0, 2)
    # CPU used meanwhile by processes that ran before this scenario began (not ours): the
    # machine is shared, and a busy neighbour on 2 cores skews the numbers
    after = cpu_snapshot()
    other = sum(after[k] - v for k, v in before.items() if k in after) / CLK_TCK
    record["other_cpu_pct"] = round(100 * other / max(record["wall_s"], 0.01), 1)
    return record


def run_one(scenario: Scenario, name: str, n: int, p: Params, factory: Callable[[str, Path], Adapter]) -> dict:
    """One scenario for one supervisor: a JSON-able record, with ``error``/``skipped`` if so."""
    global CURRENT_SCENARIO
    CURRENT_SCENARIO = scenario.name
    record: dict = {"scenario": scenario.name, "supervisor": name, "n": n}
    before = cpu_snapshot()
    reason = skip_reason(name, scenario.name, n)
    if reason:
        record["skipped"] = reason
        return record
    workdir = Path(tempfile.mkdtemp(prefix=f"svb-{name[:6]}-"))
    REGISTRY.dirs.append(workdir)
    t0 = time.monotonic()
    try:
        adapter = factory(name, workdir)
        record.update(scenario.run(adapter, n, p))
    except Exception as exc:  # reported in the record; the suite goes on
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if not REGISTRY.keep_dirs:
            shutil.rmtree(workdir, ignore_errors=True)
    return _finish(record, before, t0)


def run_fused(phases: list[str], name: str, n: int, p: Params, factory: Callable[[str, Path], Adapter]) -> list[dict]:
    """The ``phases`` (names in FUSED) for one supervisor at N, on one Session: one record
    each, in FUSED's order. Services are always waited for first (the cold phase measures it);
    a phase that fails is reported and the next runs; if the services never came up, every
    phase reports that error."""
    global CURRENT_SCENARIO
    order = [ph for ph in FUSED if ph in phases]
    records = {ph: {"scenario": ph, "supervisor": name, "n": n} for ph in order}
    for ph in order:
        reason = skip_reason(name, ph, n)
        if reason:
            records[ph]["skipped"] = reason
    todo = [ph for ph in order if "skipped" not in records[ph]]
    if not todo:
        return list(records.values())
    workdir = Path(tempfile.mkdtemp(prefix=f"svb-{name[:6]}-"))
    REGISTRY.dirs.append(workdir)
    CURRENT_SCENARIO = "fused"
    try:
        adapter = factory(name, workdir)
        with Session(adapter, sleepers(n), p.grace) as s:
            up = False
            for ph in todo:
                before, t0 = cpu_snapshot(), time.monotonic()
                try:
                    if not up and ph != "cold":
                        s.wait_services(n, start_timeout(n))
                    up = True
                    CURRENT_SCENARIO = ph
                    note(f"  {ph} n={n} {name}")
                    records[ph].update(FUSED[ph](s, adapter, n, p))
                except Exception as exc:  # reported in the record; the next phase runs
                    records[ph]["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    if not up or ph == "cold":
                        for rest in todo[todo.index(ph) + 1:]:
                            records[rest]["error"] = f"not measured: {ph} failed"
                        break
                _finish(records[ph], before, t0)
    except Exception as exc:  # the Session itself failed (launch, teardown)
        for ph in todo:
            records[ph].setdefault("error", f"{type(exc).__name__}: {exc}"[:500])
    finally:
        if not REGISTRY.keep_dirs:
            shutil.rmtree(workdir, ignore_errors=True)
    return list(records.values())


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> dict[tuple[int, int], int]:
    """(pid, starttime) -> user+system clock ticks of every process but this one."""
    me = os.getpid()
    snapshot = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        snapshot[(int(name), int(rest[19]))] = int(rest[11]) + int(rest[12])
    return snapshot


# -- reporting ------------------------------------------------------------------------------

def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def best_peer(records: list[dict], key: str, lower: bool = True) -> float | None:
    values = [r[key] for r in records if r["supervisor"] in PEERS and isinstance(r.get(key), (int, float))]
    if not values:
        return None
    return min(values) if lower else max(values)


def cell(record: dict, key: str, ratio: bool, best: float | None) -> str:
    if "skipped" in record:
        return "n/a"
    if "error" in record:
        return "error"
    value = record.get(key)
    text = fmt(value)
    if ratio and isinstance(value, (int, float)) and best:
        text += f" ({value / best:.2f}x)"
    return text


def table(records: list[dict], names: list[str], markdown: bool = False) -> list[str]:
    """Rows: scenario metric; columns: supervisors; ``(R x)`` = value / best peer's value."""
    rows = []
    by_case: dict[tuple[str, int], dict[str, dict]] = {}
    for r in records:
        by_case.setdefault((r["scenario"], r["n"]), {})[r["supervisor"]] = r
    header = ["scenario", "metric", *names]
    for (scenario, n), recs in by_case.items():
        for key, label, ratio in SCENARIOS[scenario].metrics:
            best = best_peer(list(recs.values()), key) if ratio else None
            what = f"{scenario} n={n}" if scenario != "logs" else f"logs {recs[next(iter(recs))].get('lines', '')} lines"
            rows.append([what, label, *(cell(recs[x], key, ratio, best) if x in recs else "" for x in names)])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        return out
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]


def _grid(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return out + ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]


def _number(record: dict | None, key: str) -> float | None:
    if not record or "error" in record or "skipped" in record:
        return None
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_tables(records: list[dict], names: list[str], markdown: bool = False) -> list[str]:
    """A table per metric: rows N, columns supervisors (``(Rx)`` = value / best peer's at that
    N), a ``supervise / limit`` column where the limit has the metric, and a row
    ``N=2000/N=500`` (each supervisor's growth) when both sizes ran."""
    out: list[str] = []
    by: dict[str, dict[int, dict[str, dict]]] = {}
    for r in records:
        by.setdefault(r["scenario"], {}).setdefault(r["n"], {})[r["supervisor"]] = r
    for scenario, sc in SCENARIOS.items():
        if scenario not in by:
            continue
        ns = sorted(by[scenario])
        for key, label, ratio in sc.metrics:
            with_limit = ratio and "limit" in names and "supervise" in names and any(
                _number(by[scenario][n].get("limit"), key) is not None for n in ns)
            header = ["N", *names] + (["supervise / limit"] if with_limit else [])
            rows = []
            for n in ns:
                recs = by[scenario][n]
                best = best_peer(list(recs.values()), key) if ratio else None
                row = [str(n) if n > 1 else "-", *(cell(recs[x], key, ratio, best) if x in recs else "" for x in names)]
                if with_limit:
                    sv, lim = _number(recs.get("supervise"), key), _number(recs.get("limit"), key)
                    row.append(f"{sv / lim:.2f}x" if sv is not None and lim else "-")
                rows.append(row)
            if 500 in ns and 2000 in ns and ratio:
                row = ["2000/500"]
                for x in names:
                    a, b = _number(by[scenario][2000].get(x), key), _number(by[scenario][500].get(x), key)
                    row.append(f"{a / b:.2f}" if a is not None and b else "-")
                rows.append(row + ([""] if with_limit else []))
            title = f"{scenario}: {label}"
            out += ([f"#### {title}", ""] if markdown else [title]) + _grid(header, rows, markdown) + [""]
    return out


def targets(records: list[dict]) -> list[tuple[str, str, str, str]]:
    """(target, supervise's figure, the reference's, met/MISSED/unknown) for issue 17's targets
    (and the earlier ones still kept), at N=500 and N=2000 or the sizes that ran."""
    def rec(scenario: str, n: int | None, sup: str) -> dict | None:
        return next((r for r in records if r["scenario"] == scenario and r["supervisor"] == sup
                     and (n is None or r["n"] == n)), None)

    def val(scenario: str, n: int | None, sup: str, key: str) -> float | None:
        return _number(rec(scenario, n, sup), key)

    def peers(scenario: str, n: int | None) -> list[dict]:
        return [r for r in records if r["scenario"] == scenario and (n is None or r["n"] == n)]

    def verdict(ok: bool | None) -> str:
        return "unknown" if ok is None else ("met" if ok else "MISSED")

    def known(*values: float | None) -> bool:
        return all(v is not None for v in values)

    sizes = sorted({r["n"] for r in records if r["scenario"] in FUSED})
    small = 500 if 500 in sizes else (sizes[0] if sizes else 0)
    big = 2000 if 2000 in sizes else (sizes[-1] if sizes else 0)
    stop_n = 200 if 200 in sizes else small
    out = []

    v, lim = val("cold", small, "supervise", "start_s"), val("cold", small, "limit", "start_s")
    out.append((f"cold start of {small} <= 2x the limit", fmt(v), f"limit {fmt(lim)}",
                verdict(v <= 2 * lim if known(v, lim) else None)))
    b = best_peer(peers("cold", small), "start_s")
    out.append((f"cold start of {small} <= 0.5x best peer", fmt(v), f"best peer {fmt(b)}",
                verdict(v <= b / 2 if known(v, b) else None)))
    vb = val("cold", big, "supervise", "start_s")
    out.append((f"cold start of {big} <= 4.5x cold start of {small}", fmt(vb),
                f"{small}: {fmt(v)} ({vb / v:.2f}x)" if known(v, vb) and v else "-",
                verdict(vb <= 4.5 * v if known(v, vb) and big != small else None)))
    pss, pss_sd = val("cold", small, "supervise", "pss_mb"), val("cold", small, "supervisord", "pss_mb")
    out.append((f"supervisor PSS at {small} <= supervisord's (MB)", fmt(pss), f"supervisord {fmt(pss_sd)}",
                verdict(pss <= pss_sd if known(pss, pss_sd) else None)))
    lo, hi = (sizes[0], sizes[-1]) if sizes else (0, 0)
    p_lo, p_hi = val("cold", lo, "supervise", "pss_mb"), val("cold", hi, "supervise", "pss_mb")
    per = (p_hi - p_lo) * 1024 / (hi - lo) if known(p_lo, p_hi) and hi > lo else None
    out.append((f"PSS per added service ({lo} -> {hi}) <= 20 KB", fmt(per) + " KB" if per is not None else "-",
                f"{fmt(p_lo)} -> {fmt(p_hi)} MB", verdict(per <= 20 if per is not None else None)))
    r, col = val("reload", big, "supervise", "reload_s"), val("reload", big, "supervise", "collateral")
    out.append((f"reload of one service among {big} <= 150 ms, 0 others restarted",
                f"{fmt(r * 1000) if r is not None else '-'} ms, {fmt(col)} others",
                f"best peer {fmt(best_peer(peers('reload', big), 'reload_s'))} s",
                verdict(r <= 0.150 and col == 0 if known(r, col) else None)))
    st = val("status", big, "supervise", "p50_s")
    out.append((f"status at {big} <= 100 ms (whole CLI process)", f"{fmt(st * 1000) if st is not None else '-'} ms",
                f"best peer {fmt(best_peer(peers('status', big), 'p50_s'))} s",
                verdict(st <= 0.100 if st is not None else None)))
    ex, ex_c = val("stop", stop_n, "supervise", "exit_s"), val("stop", stop_n, "circus", "exit_s")
    out.append((f"stop of {stop_n}: supervisor exited no later than circus (s)", fmt(ex), f"circus {fmt(ex_c)}",
                verdict(ex <= ex_c if known(ex, ex_c) else None)))
    s_stop, surv = val("stop", stop_n, "supervise", "stop_s"), val("stop", stop_n, "supervise", "survivors")
    b = best_peer(peers("stop", stop_n), "stop_s")
    out.append((f"stop of {stop_n}: none left no later than best peer, 0 survivors (s)", fmt(s_stop),
                f"best peer {fmt(b)}", verdict(s_stop <= b and surv == 0 if known(s_stop, b, surv) else None)))
    tot, wr = val("logs-raw", None, "supervise", "total_s"), val("logs-raw", None, "supervise", "writer_s")
    lost = val("logs-raw", None, "supervise", "missing")
    out.append(("log path: last line <= 1.1x the 64 KiB writer's run time, 0 lost",
                f"{fmt(tot)} s / {fmt(wr)} s = {tot / wr:.2f}x, {fmt(lost)} lost" if known(tot, wr) and wr else "-",
                f"limit {fmt(val('logs-raw', None, 'limit', 'total_s'))} s",
                verdict(tot <= 1.1 * wr and lost == 0 if known(tot, wr, lost) else None)))
    w = val("logs", None, "supervise", "writer_s")
    b = best_peer(peers("logs", None), "writer_s")
    out.append(("block-buffered writer under supervise no slower than under the fastest peer (s)", fmt(w),
                f"best peer {fmt(b)}", verdict(w <= b if known(w, b) else None)))
    idle = rec("idle", big, "supervise")
    c = _number(idle, "cpu_s")
    out.append((f"idle at {big}: 0 CPU-seconds in {fmt((idle or {}).get('window_s'))} s", fmt(c),
                f"best peer {fmt(best_peer(peers('idle', big), 'cpu_s'))}", verdict(c == 0 if c is not None else None)))
    rs = val("restart", None, "supervise", "p50_ms")
    out.append(("restart after SIGKILL p50 < 50 ms", fmt(rs), f"best peer {fmt(best_peer(peers('restart', None), 'p50_ms'))}",
                verdict(rs < 50 if rs is not None else None)))
    return out


def load_summary(records: list[dict]) -> str:
    """The other processes' CPU during the run: mean and max of the records' other_cpu_pct."""
    values = [r["other_cpu_pct"] for r in records if isinstance(r.get("other_cpu_pct"), (int, float))]
    if not values:
        return "no load figures"
    return (f"other processes used {statistics.mean(values):.0f}% of a core on average during the "
            f"scenarios (max {max(values):.0f}%)")


def markdown_report(records: list[dict], names: list[str], started: str, load: str = "") -> str:
    lines = [f"Run of {started} on {os.uname().nodename} ({os.cpu_count()} cores, Python "
             f"{sys.version.split()[0]}); `(Rx)` = value / best peer's value at that N (peers: "
             f"{', '.join(PEERS)}), lower is better; `supervise / limit` = supervise's value / the "
             f"spawn loop's. {load_summary(records)}.{(' ' + load) if load else ''}", ""]
    lines += ["| target | supervise | reference | |", "|---|---|---|---|"]
    lines += [f"| {t} | {v} | {b} | {ok} |" for t, v, b, ok in targets(records)]
    lines += [""] + metric_tables(records, names, markdown=True)
    notes = [f"- {r['scenario']} n={r['n']} {r['supervisor']}: {r.get('skipped') or r.get('error')}"
             for r in records if "skipped" in r or "error" in r]
    busy = [r for r in records if r.get("other_cpu_pct", 0) > 20]
    if busy:
        notes.append("- other processes on the machine were busy during: " + ", ".join(
            f"{r['scenario']} n={r['n']} {r['supervisor']} ({r['other_cpu_pct']:.0f}% of a core)" for r in busy))
    how = {r["supervisor"]: r["how"] for r in records if r.get("how")}
    if how:
        notes.append("- reload via: " + "; ".join(f"{k}: {v}" for k, v in how.items()))
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# -- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    global PROFILE_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--n", type=int, help="number of services (overrides every scenario's N)")
    parser.add_argument("--quick", action="store_true", help="N=10 and few iterations: everything in about 30 s")
    parser.add_argument("--supervisors", default=",".join(ADAPTERS),
                        help="comma-separated subset of: " + ", ".join(ADAPTERS))
    parser.add_argument("--lines", type=int, help="lines the log writer writes (default 500000)")
    parser.add_argument("--kills", type=int, help="SIGKILLs in the restart scenario (default 20)")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU window (default 20)")
    parser.add_argument("--supervise-reload", choices=["auto", "save", "sighup"], default="save",
                        help="how supervise applies a saved config: auto (detect reload-on-save), save, sighup")
    parser.add_argument("--supervise-cmd", metavar="CMD",
                        help="how to run supervise, e.g. '/work/main/.venv/bin/supervise' to compare another "
                             "checkout (default: bench/.venv-supervise/bin/supervise)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record supervise with py-spy (raw collapsed stacks) into DIR")
    parser.add_argument("--separate", action="store_true",
                        help="a fresh supervisor for each of cold, idle, status, reload, stop (default: one "
                             "session per supervisor and N measures them in turn)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (configs, logs)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    REGISTRY.keep_dirs = args.keep
    p = Params.quick_params() if args.quick else Params()
    if args.n:
        p = p.with_n(args.n)
    if args.lines:
        p.log_lines = args.lines
    if args.kills:
        p.kills = args.kills
    if args.idle_seconds:
        p.idle_s = args.idle_seconds
    if args.profile:
        PROFILE_DIR = args.profile.resolve()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)

    names = [x.strip() for x in args.supervisors.split(",") if x.strip()]
    for name in names:
        if name not in ADAPTERS:
            parser.error(f"unknown supervisor {name!r}")
    available = []
    for name in names:
        why = ADAPTERS[name].missing()
        if why:
            note(f"skipping {name}: {why}")
        else:
            available.append(name)

    def factory(name: str, workdir: Path) -> Adapter:
        if name == "supervise":
            command = shlex.split(args.supervise_cmd) if args.supervise_cmd else None
            python = command[0] if command and "python" in os.path.basename(command[0]) else None
            return Supervise(workdir, command=command, python=python, reload_mode=args.supervise_reload)
        return ADAPTERS[name](workdir)

    if "supervise" in available:
        command = shlex.split(args.supervise_cmd) if args.supervise_cmd else None
        if command is None:
            install_supervise()
        compile_supervise(command[0] if command and "python" in os.path.basename(command[0])
                          else str(SUPERVISE_BIN / "python"))
    before = cpu_snapshot()
    time.sleep(1.0)
    after = cpu_snapshot()
    busy = sum(after[k] - v for k, v in before.items() if k in after) / CLK_TCK
    if busy > 0.2:
        note(f"other processes use {100 * busy:.0f}% of a core right now: expect noisy numbers "
             "(every record has other_cpu_pct)")
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    records: list[dict] = []
    chosen = args.scenario or list(SCENARIOS)
    fused = [x for x in chosen if x in FUSED] if not args.separate else []
    if len(fused) < 2:
        fused = []
    done_fused = False
    for name_ in chosen:
        scenario = SCENARIOS[name_]
        if name_ in fused:
            if done_fused:
                continue
            done_fused = True
            note(f"{', '.join(fused)} on one session per supervisor and N")
            for n in p.sizes:
                for name in available:
                    note(f"{'+'.join(fused)} n={n} {name} ...")
                    for record in run_fused(fused, name, n, p, factory):
                        print(json.dumps(record), flush=True)
                        records.append(record)
            continue
        for n in scenario.ns(p):
            for name in available:
                note(f"{scenario.name} n={n} {name} ...")
                record = run_one(scenario, name, n, p, factory)
                print(json.dumps(record), flush=True)
                records.append(record)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    load = f"Load average (1, 5, 15 min) {' '.join(load_before)} before the run, {' '.join(load_after)} after."
    print("\n".join(metric_tables(records, available)), flush=True)

    report = markdown_report(records, available, started, load)
    print("targets:")
    for t, v, b, ok in targets(records):
        print(f"  {ok:8} {t}: supervise {v}; {b}")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (RESULTS / f"run-{stamp}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (RESULTS / "latest.md").write_text(report)
        note(f"wrote {RESULTS / f'run-{stamp}.jsonl'} and {RESULTS / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
