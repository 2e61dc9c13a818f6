#!/usr/bin/env python3
"""What ``supervise top`` costs an idle supervisor: its CPU-seconds over a window, without and
then with ``top`` attached in a real terminal (a tmux pane).

    python3 bench/top_idle.py [--n 50] [--seconds 20] [--supervise .venv/bin/supervise]

Starts ``supervise -q`` on N ``sleep 1000`` services in a temp dir, waits until all run, then
measures the supervisor process's user+system CPU time (psutil) over the window twice. Prints
one JSON line. Everything it starts is stopped by pid (tmux through its own -L socket).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--supervise", default=str(Path(sys.executable).parent / "supervise"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="top-idle-"))
    config = folder / "services.toml"
    config.write_text("".join(f'[services.s{i}]\ncommand = ["sleep", "1000"]\n\n' for i in range(args.n)))
    supervisor = subprocess.Popen([args.supervise, "-q", "--config", str(config)], cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    socket = f"top-idle-{os.getpid()}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = subprocess.run([args.supervise, "status", "--config", str(config)], capture_output=True)
            if status.returncode == 0:
                break
            time.sleep(0.5)  # a benchmark, not a test: poll the CLI twice a second
        time.sleep(2)  # let the start-up settle
        before = cpu_seconds(supervisor.pid)
        time.sleep(args.seconds)
        alone = cpu_seconds(supervisor.pid) - before
        subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-x", "150", "-y", "60",
                        f"{args.supervise} top --config {config}"], check=True)
        time.sleep(3)  # top's first screen
        before = cpu_seconds(supervisor.pid)
        time.sleep(args.seconds)
        attached = cpu_seconds(supervisor.pid) - before
        screen = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p"], capture_output=True, text=True).stdout
        print(json.dumps({"services": args.n, "seconds": args.seconds, "cpu_s_alone": round(alone, 3),
                          "cpu_s_with_top": round(attached, 3), "top_shows_services": f"s{args.n - 1}" in screen}))
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(60)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
