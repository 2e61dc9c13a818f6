"""Per-call profile of a real supervisor, phase by phase: cold start, the settling after it,
reload of one service, `supervise status` commands, stop (cProfile of the event loop thread,
deterministic call counts; timed by that thread's CPU time by default, so the figures hold on a
shared machine where wall-clock comparisons are noise).

    bench/.venv-supervise/bin/python bench/profile_phases.py --n 500 [--out /tmp/prof] [--top 25]

The supervisor runs as ``python bench/profile_phases.py --child OUT TIMER -q --config F`` (this
file again): cProfile around ``supervisor.cli.main``; each SIGUSR2 writes the profile so far
and starts a new one, the last is written at exit. The parent writes N ``sleep 1000`` services
(the config alone in its folder), waits for all N processes (children of the supervisor that
exec'd sleep): ``cold``; waits 1 s: ``settle`` (state records, the plan's echo); saves the file
with one command changed and waits for the new process: ``reload``; runs 5 ``supervise status``
commands: ``status`` (the supervisor's side; the client processes' own CPU is printed apart);
sends SIGTERM: ``stop``. Each phase prints its top functions by own time and the figure per
unit (per service, per reload, per status command).

The supervisor is started in a session of its own and its process group is killed at the end,
whatever happened, and its services by pid if it did not stop them (never by name).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(out: str, timer: str, argv: list[str]) -> int:
    """Run the supervisor under cProfile; SIGUSR2 writes the profile so far to
    ``OUT/part-K.prof`` (K = 1, 2, ...) and starts the next; the last is ``OUT/stop.prof``."""
    count = [0]

    def profile() -> cProfile.Profile:
        # cpu: the loop thread's own CPU time (user + system), so a busy machine's waits for a
        # core do not count; wall: what the loop was kept from doing (waits included); none:
        # no profiler (its overhead is not in the figures), the CPU time of each phase alone.
        return cProfile.Profile(time.thread_time) if timer in ("cpu", "none") else cProfile.Profile()

    box = {"prof": profile()}
    started = [time.thread_time()]

    def next_phase(*_: object) -> None:
        box["prof"].disable()
        count[0] += 1
        now = time.thread_time()
        with open(os.path.join(out, f"part-{count[0]}.cpu"), "w") as f:
            f.write(f"{now - started[0]}\n")
        started[0] = now
        if tracemalloc.is_tracing():  # --memory: what the heap holds now, by line and in all
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            top = snapshot.statistics("lineno")
            with open(os.path.join(out, f"part-{count[0]}.mem"), "w") as f:
                f.write(f"total {sum(s.size for s in top)} bytes in {sum(s.count for s in top)} blocks\n")
                try:
                    import asyncio
                    from collections import Counter

                    tasks = Counter(t.get_coro().__qualname__ for t in asyncio.all_tasks(asyncio.get_running_loop()))
                    f.write(f"tasks {sum(tasks.values())}: {dict(tasks.most_common(8))}\n")
                except RuntimeError:
                    pass
                for stat in top[:40]:
                    f.write(f"{stat.size} {stat.count} {stat.traceback}\n")
                f.write(f"modules {len(sys.modules)}: {' '.join(sorted(sys.modules))}\n")
        box["prof"].dump_stats(os.path.join(out, f"part-{count[0]}.prof"))
        box["prof"] = profile()
        if timer != "none":
            box["prof"].enable()

    signal.signal(signal.SIGUSR2, next_phase)
    from supervisor.cli import main

    if timer != "none":
        box["prof"].enable()
    try:
        return main(argv)
    finally:
        box["prof"].disable()
        box["prof"].dump_stats(os.path.join(out, "stop.prof"))
        with open(os.path.join(out, "stop.cpu"), "w") as f:
            f.write(f"{time.thread_time() - started[0]}\n")


def _sleepers(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)
            comm = fields[0].split(b"(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and comm == b"sleep":
            found.append(int(entry))
    return found


def _pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _args_of(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _wait(what: str, test, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise SystemExit(f"profile: timed out waiting for {what}")
        time.sleep(0.02)


#: How many `supervise status` commands the status phase runs.
STATUS_RUNS = 5


def _report(path: Path, n: int, top: int, label: str) -> None:
    stats = pstats.Stats(str(path))
    idle = sum(v[2] for k, v in stats.stats.items() if k[2] == "<method 'poll' of 'select.epoll' objects>")  # type: ignore[attr-defined]
    total = stats.total_tt - idle  # type: ignore[attr-defined]
    print(f"\n== {label}: {total * 1000:.0f} ms on the loop thread, {total * 1000 / n:.2f} ms per unit "
          f"({n} units), {stats.total_calls:,} calls = {stats.total_calls / n:.0f} per unit")  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)


def write_config(path: Path, state_dir: Path, n: int, changed: int | None = None) -> None:
    lines = ["[supervise]", f'state_dir = "{state_dir}"', 'log = { max_size = "64GiB" }', ""]
    for i in range(n):
        seconds = 1001 if i == changed else 1000
        lines += [f"[services.s{i}]", f'command = ["sleep", "{seconds}"]', ""]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="where the .prof files go (default: a temp dir)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--phases", default="cold,settle,reload,status,stop",
                        help="which profiles to print (units: services for cold, settle and stop; one reload; "
                             "one status command)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between the cold start and the reload (state records written meanwhile)")
    parser.add_argument("--memory", action="store_true",
                        help="trace allocations (tracemalloc) and write PHASE.mem: the heap by line after each phase")
    parser.add_argument("--timer", choices=("cpu", "wall", "none"), default="cpu",
                        help="cpu: the loop thread's CPU time (default; steady on a shared machine); wall: elapsed; "
                             "none: no profiler, each phase's CPU time on the loop thread alone")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="supervise-prof-"))
    out = args.out or work / "prof"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.prof"):
        old.unlink()
    (work / "conf").mkdir()  # the config's folder holds nothing else: the file watcher sees no other write
    config = work / "conf" / "services.toml"
    write_config(config, work / "state", args.n)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    child_env = {**env, "PYTHONTRACEMALLOC": "1"} if args.memory else env
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(out), args.timer, "-q", "--config", str(config)],
                            env=child_env, start_new_session=True, stderr=open(work / "supervise.err", "wb"))
    parts = [0]

    def phase(name: str) -> None:
        """End the profile of the phase ``name`` (SIGUSR2) and wait until it is written."""
        parts[0] += 1
        os.kill(proc.pid, signal.SIGUSR2)
        part = out / f"part-{parts[0]}.prof"
        _wait(f"{name}.prof", lambda: part.exists() and part.stat().st_size > 0, 120)
        time.sleep(0.1)
        part.rename(out / f"{name}.prof")
        for suffix in (".mem", ".cpu"):
            if part.with_suffix(suffix).exists():
                part.with_suffix(suffix).rename(out / f"{name}{suffix}")

    status_cpu = 0.0
    pss_kb = 0
    try:
        _wait("every service", lambda: len(_sleepers(proc.pid)) >= args.n, 120 + args.n / 10)
        phase("cold")
        time.sleep(args.settle)  # the start-up settles (state records, the first plan's echo) outside the reload
        phase("settle")
        pss_kb = _pss_kb(proc.pid)
        write_config(config, work / "state", args.n, changed=args.n // 2)
        _wait("the changed service", lambda: any(b"1001" in _args_of(p) for p in _sleepers(proc.pid)), 60)
        time.sleep(0.2)  # the state record and the log note that follow the spawn
        phase("reload")
        before = os.times()
        for _ in range(STATUS_RUNS):
            subprocess.run([sys.executable, "-m", "supervisor", "status", "--config", str(config)], env=env,
                           cwd=work, stdout=subprocess.DEVNULL, check=False, timeout=60)  # cwd: not a checkout
        after = os.times()
        status_cpu = (after.children_user - before.children_user + after.children_system - before.children_system)
        phase("status")
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:  # failed part-way: its services are in sessions of their own
            for pid in _sleepers(proc.pid):
                os.kill(pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    per = {"cold": args.n, "settle": args.n, "reload": 1, "status": STATUS_RUNS, "stop": args.n}
    for name in args.phases.split(","):
        if args.timer == "none":
            cpu = out / f"{name}.cpu"
            if cpu.exists():
                seconds = float(cpu.read_text())
                print(f"== {name}: {seconds * 1000:.0f} ms CPU on the loop thread, "
                      f"{seconds * 1000 / per[name]:.2f} ms per unit ({per[name]} units), no profiler")
            continue
        _report(out / f"{name}.prof", per[name], args.top, name)
    print(f"\nstatus command (client process, whole: interpreter, imports, parse, table): "
          f"{status_cpu * 1000 / STATUS_RUNS:.1f} ms CPU each, mean of {STATUS_RUNS}")
    print(f"\nsupervisor PSS after the settling: {pss_kb / 1024:.1f} MB (/proc/PID/smaps_rollup"
          f"{'; tracemalloc and the profiler add to it' if args.memory or args.timer != 'none' else ''})")
    cold_mem = out / "cold.mem"
    if cold_mem.exists():
        print(f"\nheap after the cold start ({cold_mem}): {cold_mem.read_text().splitlines()[0]}")
    print(f"\nprofiles in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
