"""Per-call profile of a real supervisor, phase by phase: cold start, reload of one service,
stop (cProfile, deterministic: call counts and CPU per call, not wall time, so it stays
meaningful on a shared machine).

    bench/.venv-supervise/bin/python bench/profile_phases.py --n 500 [--out /tmp/prof] [--top 25]

The supervisor runs as ``python bench/profile_phases.py --child OUT -q --config F`` (this file
again): cProfile around ``supervisor.cli.main``, and SIGUSR2 dumps the profile so far to
``OUT/PHASE.prof`` and starts a new one. The parent writes N ``sleep 1000`` services, waits for
all N processes (children of the supervisor that exec'd sleep), dumps ``cold``; saves the file
with one command changed, waits for the new process, dumps ``reload``; sends SIGTERM (the last
profile, ``stop``, is written at exit). Each phase prints its top functions by own time and
the per-service figure (CPU ms / N). ``--status`` also imports the ``status`` path under
``-X importtime`` and prints the total.

The supervisor is started in a session of its own and its whole process group is killed at
the end, whatever happened (by pid, never by name).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(out: str, timer: str, argv: list[str]) -> int:
    """Run the supervisor under cProfile; SIGUSR2 starts the next phase's profile."""
    phases = iter(["cold", "reload", "extra1", "extra2"])

    def profile() -> cProfile.Profile:
        # cpu: the loop thread's own CPU time (user + system), so a busy machine's waits for a
        # core do not count; wall: what the loop was kept from doing (waits included).
        return cProfile.Profile(time.thread_time) if timer == "cpu" else cProfile.Profile()

    box = {"prof": profile()}

    def next_phase(*_: object) -> None:
        box["prof"].disable()
        box["prof"].dump_stats(os.path.join(out, next(phases) + ".prof"))
        box["prof"] = profile()
        box["prof"].enable()

    signal.signal(signal.SIGUSR2, next_phase)
    from supervisor.cli import main

    box["prof"].enable()
    try:
        return main(argv)
    finally:
        box["prof"].disable()
        box["prof"].dump_stats(os.path.join(out, "stop.prof"))


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


def _report(path: Path, n: int, top: int, label: str) -> None:
    stats = pstats.Stats(str(path))
    idle = sum(v[2] for k, v in stats.stats.items() if k[2] == "<method 'poll' of 'select.epoll' objects>")  # type: ignore[attr-defined]
    total = stats.total_tt - idle  # type: ignore[attr-defined]
    print(f"\n== {label}: {total * 1000:.0f} ms on the loop thread, {total * 1000 / n:.2f} ms per service "
          f"(N={n}), {stats.total_calls:,} calls = {stats.total_calls / n:.0f} per service")  # type: ignore[attr-defined]
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
    parser.add_argument("--phases", default="cold,reload,stop")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="cpu: the loop thread's CPU time (default; steady on a shared machine); wall: elapsed")
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
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(out), args.timer, "-q", "--config", str(config)],
                            env=env, start_new_session=True, stderr=open(work / "supervise.err", "wb"))
    try:
        _wait("every service", lambda: len(_sleepers(proc.pid)) >= args.n, 120 + args.n / 10)
        os.kill(proc.pid, signal.SIGUSR2)
        _wait("cold.prof", lambda: (out / "cold.prof").exists(), 30)
        time.sleep(1.0)  # let the start-up settle (the first status, watchers) outside the reload
        changed = args.n // 2
        os.kill(proc.pid, signal.SIGUSR2)  # "reload" starts here: throw away what came between
        _wait("the restart profile", lambda: (out / "reload.prof").exists(), 30)
        (out / "reload.prof").rename(out / "settle.prof")
        write_config(config, work / "state", args.n, changed=changed)
        _wait("the changed service", lambda: any(b"1001" in _args_of(p) for p in _sleepers(proc.pid)), 60)
        time.sleep(0.2)  # the state record and the log note that follow the spawn
        os.kill(proc.pid, signal.SIGUSR2)
        _wait("the reload profile", lambda: (out / "extra1.prof").exists(), 30)
        (out / "extra1.prof").rename(out / "reload.prof")
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
    for phase in args.phases.split(","):
        _report(out / f"{phase}.prof", args.n if phase != "reload" else 1, args.top, phase)
    print(f"\nprofiles in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
