"""Issue 10, High 4: a full disk in STATE_DIR (a real 2 MiB tmpfs; needs root to mount it).

Output that cannot be written is dropped and counted (the rule: the supervisor never applies
back-pressure to a service for its own disk's sake), supervision never stops, status says what
happens, and a deleted log file is let go of at once so its space comes back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import terminate, wait_until, write

PY = sys.executable
CHATTY = ("import itertools, os, sys\\n"
          "beat = sys.argv[1]\\n"
          "for i in itertools.count():\\n"
          "    print('x' * 200, i, flush=True)\\n"
          "    if i % 500 == 0:\\n"
          "        open(beat + '.tmp', 'w').write(str(i)); os.replace(beat + '.tmp', beat)\\n")


@pytest.fixture
def small_disk(tmp_path):
    if (os.geteuid() != 0 or not shutil.which("mount")) and not os.environ.get("CI"):
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def status(path: Path) -> dict:
    result = subprocess.run([PY, "-m", "supervisor", "status", "--json", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    return {row["service"]: row for row in json.loads(result.stdout)["services"]} if result.stdout.startswith("{") else {}


def beat(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def deleted_files_held(pid: int, folder: Path) -> list[str]:
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)) and target.endswith("(deleted)") and ".log" in target:
            held.append(target)
    return held


def test_a_full_disk_drops_counted_output_and_never_stops_supervision(tmp_path, small_disk):
    heartbeat = tmp_path / "beat"
    path = write(tmp_path / "services.toml", f"""
[supervise]
state_dir = "{small_disk}/state"
[services.chatty]
command = ["{PY}", "-c", "{CHATTY}", "{heartbeat}"]
[services.crasher]
command = ["/bin/sh", "-c", "echo crashing; exit 1"]
backoff = {{ initial = "10ms", max = "100ms" }}
start_limit = {{ burst = 100000, interval = "1s" }}
""")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "err.txt", "w"))
    try:
        wait_until(lambda: free(small_disk) < 64 * 1024, timeout=60, message="the disk to fill")
        rows = wait_until(lambda: (r := status(path)) and r.get("chatty", {}).get("log_error") and r, timeout=30,
                          message="status to say the log cannot be written")
        assert "No space left on device" in rows["chatty"]["log_error"]
        assert "dropped" in rows["chatty"]["message"]
        assert rows["chatty"]["phase"] == "running" and rows["chatty"]["pid"]
        # the chatty service is not blocked in write(2): it keeps going (its heartbeat moves on)
        now = beat(heartbeat)
        wait_until(lambda: beat(heartbeat) > now + 20000, timeout=60, message="the chatty service to go on")
        # the crash loop stays supervised: it keeps being restarted
        restarts = status(path)["crasher"]["restarts"]
        wait_until(lambda: status(path)["crasher"]["restarts"] > restarts + 5, timeout=60,
                   message="the crasher to keep restarting")
        assert proc.poll() is None
        # delete the logs: the supervisor lets go of them (space comes back), writes a new file,
        # and says in it what was dropped
        logs = small_disk / "state" / "logs"
        for log in logs.glob("*.log*"):
            log.unlink()
        wait_until(lambda: not deleted_files_held(proc.pid, small_disk), timeout=20,
                   message="no deleted log held open")
        text = wait_until(lambda: (logs / "chatty.log").exists() and "of output dropped" in
                          (logs / "chatty.log").read_text(errors="replace") and (logs / "chatty.log").read_text(
                              errors="replace"), timeout=30, message="the dropped note")
        dropped = int(text.split(" lines (")[0].rsplit(" ", 1)[1])
        print(f"dropped {dropped} lines while the disk was full")
        assert dropped > 1000
        assert "Traceback" not in (tmp_path / "err.txt").read_text()
    finally:
        terminate(proc)
    assert proc.returncode == 0
