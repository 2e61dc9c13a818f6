"""``supervise events --since DURATION`` through the real CLI: the history kept in
STATE_DIR/events (bounded, rotated), replayed then followed with no gap and no duplicate at the
seam, surviving a restart of the supervisor, redacted as the live stream is."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import terminate, wait_until, write

PY = sys.executable
FLAPPER = f'["{PY}", "-c", "import time; time.sleep(0.05)"]'
SERVER = f'["{PY}", "-c", "import time\\nwhile True: time.sleep(1)"]'


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True,
                          text=True, timeout=60)


class Follower:
    """``supervise events ARGS`` in the background; its lines parsed as they come."""

    def __init__(self, path: Path, *args: str):
        self.proc = subprocess.Popen([PY, "-m", "supervisor", "events", *args, "--config", str(path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = ""
        self.lines: queue.Queue[dict] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def take(self, count: int, timeout: float = 30) -> list[dict]:
        return [self.lines.get(timeout=timeout) for _ in range(count)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.thread.join(timeout=20)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()


def test_replay_then_follow_has_no_gap_or_duplicate_at_the_seam(tmp_path):
    """A service that flaps all the time keeps events coming while the replay is read: the
    numbers (seq) the follower prints go up by one each, across the seam."""
    path = write(tmp_path / "services.toml", f"""
[services.flap]
command = {FLAPPER}
backoff = {{ initial = "10ms", max = "20ms" }}
start_limit = {{ burst = 100000, interval = "1s" }}

[services.web]
source = {{ git = "https://user:hunter2@example.invalid/web.git" }}
command = {SERVER}
""")
    proc = start_loose(path, tmp_path, "flap")
    try:
        wait_until(lambda: len((tmp_path / ".supervise" / "events" / "events.jsonl").read_text().splitlines()) > 40,
                   timeout=30, message="some history")
        for _ in range(3):
            follower = Follower(path, "--since", "1h")
            try:
                got = follower.take(120)
            finally:
                follower.stop()
            seqs = [event["seq"] for event in got]
            assert seqs[0] == 1 and seqs == list(range(1, 121)), seqs
            assert "note" not in follower.stderr  # everything since seq 1 is kept
            # redacted as the live stream is: a URL's credentials never reach the history
            created = next(e for e in got if e["type"] == "create" and e["service"] == "web")
            assert created["source"] == "git https://***@example.invalid/web.git@HEAD"
    finally:
        terminate(proc)
    assert "hunter2" not in (tmp_path / ".supervise" / "events" / "events.jsonl").read_text()


def test_the_history_is_bounded_survives_a_restart_and_is_redacted(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[supervise]
event_history = 10

[services.web]
source = {{ git = "https://user:hunter2@example.invalid/web.git" }}
command = {SERVER}

[services.db]
command = {SERVER}
""")
    proc = start_loose(path, tmp_path, "db")
    try:
        for _ in range(4):  # stopping, stopped, started: 3 events each
            assert cli(path, "restart", "db").returncode == 0
        current = tmp_path / ".supervise" / "events" / "events.jsonl"
        newest = json.loads(current.read_text().splitlines()[-1])["seq"]
        follower = Follower(path, "--since", "1h")
        try:
            replay = follower.take(1)
            while replay[-1]["seq"] < newest:
                replay += follower.take(1)
            assert cli(path, "restart", "db").returncode == 0
            live = follower.take(1)
            while not (live[-1]["type"] == "started" and live[-1]["service"] == "db"):
                live += follower.take(1)
        finally:
            follower.stop()
    finally:
        terminate(proc)
    assert follower.stderr.startswith("supervise: note: events before ")  # 1h asks for more than 10
    folder = tmp_path / ".supervise" / "events"
    kept = [json.loads(line) for name in ("events.jsonl.1", "events.jsonl")
            for line in (folder / name).read_text().splitlines()]
    assert 5 <= len(kept) <= 10  # the bound: keep // 2 to keep events
    assert 5 <= len(replay) <= 10
    seqs = [e["seq"] for e in replay + live]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the seam: none twice, none missing
    assert [e["type"] for e in live if e["service"] == "db"][-2:] == ["stopped", "started"]
    text = "".join((folder / name).read_text() for name in ("events.jsonl.1", "events.jsonl"))
    assert "hunter2" not in text

    # no supervisor: the history is printed, and the verb says there is nothing to follow
    after = cli(path, "events", "--since", "1h", "db")
    assert after.returncode == 1 and "no supervisor is running" in after.stderr
    assert after.stderr.startswith("supervise: note: events before ")  # 1h reaches past the 10 kept
    printed = [json.loads(line) for line in after.stdout.splitlines()]
    assert printed and all(e["service"] == "db" for e in printed)
    assert printed[-1]["seq"] <= kept[-1]["seq"]

    # a new supervisor goes on numbering from the history and replays the old run's events
    proc = start_loose(path, tmp_path, "db")
    try:
        follower = Follower(path, "--since", "1h", "db")
        try:
            events = []
            wait_until(lambda: events.append(follower.take(1)[0]) or events[-1]["type"] == "started"
                       and events[-1]["seq"] > kept[-1]["seq"], timeout=30, message="the new run's start of db")
        finally:
            follower.stop()
    finally:
        terminate(proc)
    old_run = [e for e in events if e["seq"] <= kept[-1]["seq"]]
    assert old_run and {e["type"] for e in old_run} >= {"stopped"}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    bad = cli(path, "events", "--since", "soon")
    assert bad.returncode == 2 and "--since" in bad.stderr


def start_loose(path: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    """A supervisor once ``name`` runs (web's git source cannot be fetched: it never will)."""
    out = open(tmp_path / "daemon.out", "a")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=out,
                            stderr=subprocess.STDOUT)
    out.close()

    wait_until(lambda: cli(path, "status", name).returncode == 0, timeout=30, message=f"{name} running")
    return proc


def test_since_takes_a_minus_and_a_bad_value_is_one_line(tmp_path):
    """``events --since -5m`` (journalctl's way to say five minutes ago) is taken, not an
    argparse "expected one argument"; a bad value is one line, exit 2. No supervisor runs here:
    the kept history is printed (none) and the exit status is 1."""
    path = write(tmp_path / "services.toml", f"[services.a]\ncommand = {SERVER}\n")
    for args in (["events", "--since", "-5m"], ["logs", "--since", "-5m"]):
        taken = cli(path, *args)
        assert "expected one argument" not in taken.stderr and "usage:" not in taken.stderr, taken.stderr
        assert taken.returncode == (1 if args[0] == "events" else 0), taken.stderr
    bad = cli(path, "events", "--since", "-5x")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "'-5x'" in bad.stderr, bad.stderr
