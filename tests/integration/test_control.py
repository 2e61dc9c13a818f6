"""The control plane as users drive it: a real daemon process, the real CLI, the real socket."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import terminate, wait_until, write

PY = sys.executable
SLEEP = f'["{PY}", "-c", "import time; time.sleep(300)"]'


def cli(*args: str, config: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def daemon(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.web]
command = {SLEEP}
replicas = 2
[services.job]
command = ["{PY}", "-c", "import sys; print('job ran'); sys.exit(3)"]
restart = "never"
""")
    out = open(tmp_path / "daemon.out", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: cli("status", "web", config=path).returncode == 0, timeout=20, message="web running")
    yield path, proc
    terminate(proc, timeout=20)
    out.close()


def status(path: Path, *names: str) -> tuple[int, dict]:
    result = cli("status", "--json", *names, config=path)
    return result.returncode, json.loads(result.stdout)


def test_status_table_json_and_exit_codes(daemon):
    path, proc = daemon
    code, reply = status(path, "web")
    assert code == 0
    rows = reply["services"]
    assert [(r["service"], r["replica"], r["phase"]) for r in rows] == [("web", 0, "running"), ("web", 1, "running")]
    assert all(r["pid"] and r["version"] and r["restarts"] == 0 for r in rows)
    wait_until(lambda: status(path, "job")[1]["services"][0]["phase"] == "exited")
    code, reply = status(path, "job")
    assert code == 3 and reply["services"][0]["last_exit"] == "exit 3"
    table = cli("status", config=path)
    assert table.returncode == 3
    assert table.stdout.splitlines()[0].split()[:4] == ["SERVICE", "REPLICA", "PHASE", "PID"]
    unknown = cli("status", "nope", config=path)
    assert unknown.returncode == 4 and "unknown service: nope" in unknown.stderr


def test_stop_holds_across_a_reload_and_start_releases(daemon):
    path, proc = daemon
    pids = [r["pid"] for r in status(path, "web")[1]["services"]]
    assert cli("stop", "web", config=path).returncode == 0
    code, reply = status(path, "web")
    assert code == 3 and {r["phase"] for r in reply["services"]} == {"stopped"}
    assert not any(Path(f"/proc/{pid}").exists() and "Z" not in open(f"/proc/{pid}/stat").read().split()[2] for pid in pids)
    reload = cli("reload", config=path)
    assert reload.returncode == 0 and reload.stdout.strip() == "nothing to do"
    assert status(path, "web")[0] == 3
    assert cli("start", "web", config=path).returncode == 0
    wait_until(lambda: status(path, "web")[0] == 0)


def test_restart_replaces_processes_without_counting_as_crashes(daemon):
    path, proc = daemon
    before = [r["pid"] for r in status(path, "web")[1]["services"]]
    assert cli("restart", "web", config=path).returncode == 0
    after = wait_until(lambda: (lambda rows: [r["pid"] for r in rows] if all(r["pid"] for r in rows) else None)(
        status(path, "web")[1]["services"]))
    assert set(after).isdisjoint(before)


def test_plan_against_the_live_state_and_reload(daemon):
    path, proc = daemon
    assert cli("plan", config=path).stdout.strip() == "nothing to do"
    text = path.read_text().replace("replicas = 2", "replicas = 3")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    # write beside, then plan reads the new file without applying it
    os.replace(tmp, path)
    plan = cli("plan", config=path).stdout.strip()
    assert plan in ("start web[2]: replicas 2 -> 3", "nothing to do")  # the save may already be applied
    wait_until(lambda: len(status(path, "web")[1]["services"]) == 3)
    # a broken file: the reload verb answers with the same error as the save, exit 2, and
    # what runs keeps running
    path.write_text(text.replace("[services.job]", "[services.job"))
    broken = cli("reload", config=path)
    assert broken.returncode == 2 and "TOML syntax error" in broken.stderr and "config-invalid" not in broken.stderr
    assert len(status(path, "web")[1]["services"]) == 3


def test_a_broken_file_gets_one_answer_from_a_save_sighup_and_the_reload_verb(daemon, tmp_path):
    """Issue 12.9, with the real process: a broken save, then ``supervise reload``, then SIGHUP
    (as ``systemctl reload`` sends): each gives the same located error line in the daemon's
    output, the verb exits 2 with that error, nothing says "reloaded", and what runs keeps
    running; once the file is good, the verb exits 0 and the daemon says "reloaded by reload
    verb"."""
    import signal

    path, proc = daemon
    output = tmp_path / "daemon.out"
    good = path.read_text()
    before = [row["pid"] for row in status(path, "web")[1]["services"]]
    mark = output.stat().st_size
    path.write_text(good.replace("[services.job]", "[services.job"))  # a save the watcher sees

    def said() -> str:
        with open(output, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    wait_until(lambda: "TOML syntax error" in said(), timeout=20, message="the save's error")
    verb = cli("reload", config=path)
    assert verb.returncode == 2 and "TOML syntax error" in verb.stderr
    wait_until(lambda: said().count("TOML syntax error") >= 2, timeout=20, message="the verb's error line")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: said().count("TOML syntax error") >= 3, timeout=20, message="the SIGHUP's error line")
    errors = [line for line in said().splitlines() if "TOML syntax error" in line]
    assert len(set(errors)) == 1, errors  # one truth: the same line whatever the trigger
    assert str(path) in errors[0]
    assert "reloaded" not in said()
    assert [row["pid"] for row in status(path, "web")[1]["services"]] == before
    path.write_text(good)
    wait_until(lambda: "reloaded" in said(), timeout=20, message="the good save applied")
    ok = cli("reload", config=path)
    assert ok.returncode == 0 and ok.stdout.strip() == "nothing to do"
    wait_until(lambda: "reloaded: by reload verb" in said(), timeout=20, message="the verb's reloaded line")


def test_events_stream_json_lines(daemon, tmp_path):
    path, proc = daemon
    log = tmp_path / "events.jsonl"
    out = open(log, "w")
    stream = subprocess.Popen([PY, "-m", "supervisor", "events", "--config", str(path)], stdout=out)

    def types() -> set[str]:
        return {json.loads(line)["type"] for line in log.read_text().splitlines()}

    def restarted_and_seen() -> bool:
        # the stream may subscribe in the middle of the first restart: restart until a whole
        # one was seen
        cli("restart", "web", config=path)
        try:
            return bool(wait_until(lambda: {"stopping", "stopped", "started"} <= types(), timeout=2))
        except AssertionError:
            return False

    try:
        wait_until(restarted_and_seen, timeout=15, interval=0, message="events on the stream")
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert all({"type", "timestamp", "service", "version"} <= set(e) for e in events)
        assert {"stopping", "stopped", "started"} <= {e["type"] for e in events}
    finally:
        stream.terminate()
        stream.wait(timeout=10)
        out.close()


def test_an_events_client_that_hangs_up_is_not_a_failure(daemon, tmp_path):
    """Ctrl-C on `supervise events` (or `q` in `top`) then any event: the supervisor drops the
    client quietly, with no traceback and no "events failed" line in its output."""
    path, proc = daemon
    log = tmp_path / "events.jsonl"
    with open(log, "w") as out:
        stream = subprocess.Popen([PY, "-m", "supervisor", "events", "--config", str(path)], stdout=out)

        def seen() -> bool:
            cli("restart", "web", config=path)
            return '"started"' in log.read_text()

        try:
            wait_until(seen, timeout=20, interval=0.5, message="the stream subscribed")
        finally:
            stream.terminate()
            stream.wait(timeout=10)
    output = tmp_path / "daemon.out"
    mark = output.stat().st_size
    for _ in range(2):  # the first event may only fill the socket buffer; the second finds it closed
        assert cli("restart", "web", config=path).returncode == 0
    wait_until(lambda: output.read_bytes()[mark:].count(b"started web[1]") >= 2, timeout=20,
               message="both restarts done")
    said = output.read_bytes()[mark:].decode(errors="replace")
    assert "Traceback" not in said and "events failed" not in said


def test_second_instance_is_refused_and_socket_is_owner_only(daemon):
    path, proc = daemon
    second = subprocess.run([PY, "-m", "supervisor", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert f"another supervise (pid {proc.pid}) is running" in second.stderr
    state = path.parent / ".supervise"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "control.sock").st_mode) == 0o600
    assert proc.poll() is None  # the first one is untouched


def test_socket_refuses_another_uid(daemon):
    path, proc = daemon
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid; the 0600 mode is asserted elsewhere")
    sock_path = path.parent / ".supervise" / "control.sock"
    os.chmod(sock_path, 0o666)  # even with the modes opened by hand, SO_PEERCRED refuses
    os.chmod(sock_path.parent, 0o755)
    read, write_ = os.pipe()
    # pytest's tmp folders are 0700: reach the state dir through an fd opened before setuid
    folder = os.open(sock_path.parent, os.O_PATH)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child only
        try:
            import ctypes
            import socket as _socket
            os.setgid(65534)
            os.setuid(65534)
            # setuid clears "dumpable", which would hide /proc/self/fd from us: set it back
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
            s = _socket.socket(_socket.AF_UNIX)
            s.connect(f"/proc/self/fd/{folder}/control.sock")
            try:
                s.sendall(b'{"verb":"status"}\n')
            except BrokenPipeError:
                pass  # refused at once: the refusal is already waiting to be read
            os.write(write_, s.makefile("rb").readline())
        except BaseException as exc:
            os.write(write_, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write_)
    os.close(folder)
    answer = b""
    while chunk := os.read(read, 4096):
        answer += chunk
    os.close(read)
    os.waitpid(child, 0)
    assert answer.startswith(b"{"), answer
    assert json.loads(answer) == {"ok": False, "error": "permission denied for uid 65534"}


def test_verbs_without_a_supervisor_say_so_and_exit_1(tmp_path):
    path = write(tmp_path / "services.toml", f"[services.x]\ncommand = {SLEEP}\n")
    for verb in (["status"], ["stop", "x"], ["reload"], ["events"]):
        result = cli(*verb, config=path)
        assert result.returncode == 1, verb
        assert result.stderr.strip().splitlines() == [f"supervise: no supervisor is running for {tmp_path / '.supervise'}"]


def test_logs_tail_and_notes(daemon):
    path, proc = daemon
    wait_until(lambda: "job ran" in cli("logs", "-n", "5", "job", config=path).stdout)
    out = cli("logs", "-n", "1", "job", config=path).stdout.splitlines()
    assert len(out) == 1 and out[0].startswith("job")


def test_restart_cascades_to_dependents_that_ask_for_it_in_order(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.db]
command = {SLEEP}
[services.api]
command = {SLEEP}
depends_on = {{ db = {{ condition = "started", restart = true }} }}
[services.other]
command = {SLEEP}
depends_on = ["db"]
""")
    out = open(tmp_path / "daemon.out", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        def pids() -> dict[str, int] | None:
            result = cli("status", "--json", config=path)
            if result.returncode != 0:
                return None
            rows = json.loads(result.stdout)["services"]
            return {r["service"]: r["pid"] for r in rows} if len(rows) == 3 and all(r["pid"] for r in rows) else None

        before = wait_until(pids, timeout=20)
        assert cli("restart", "db", config=path).returncode == 0
        after = wait_until(pids)
        assert after["db"] != before["db"] and after["api"] != before["api"]
        assert after["other"] == before["other"]  # did not ask for it
        text = (tmp_path / "daemon.out").read_text()
        events = [line.split("|", 1)[1].split()[0:2] for line in text.splitlines() if line.startswith("supervise |")]
        order = [e for e in events if e[0] in ("stopping", "started")][-4:]
        assert order == [
            ["stopping", "api[0]:"], ["stopping", "db[0]:"], ["started", "db[0]:"], ["started", "api[0]:"]]
    finally:
        terminate(proc, timeout=20)
        out.close()


def test_a_reload_of_a_file_with_two_mistakes_prints_two_lines(daemon):
    """A user's report: both diagnostics came on one line joined by a literal ``\\x0a``."""
    path, proc = daemon
    good = path.read_text()
    path.write_text(good + '[services.x]\nreplicas = "two"\n[services.y]\nrestart = "sometimes"\ncommand = "y"\n')
    broken = cli("reload", config=path)
    lines = broken.stderr.strip().splitlines()
    assert broken.returncode == 2 and "\\x0a" not in broken.stderr, broken.stderr
    assert len(lines) >= 2 and all(line.startswith("supervise: ") for line in lines), lines
    path.write_text(good)


def test_a_sigterm_as_soon_as_the_socket_answers_is_a_clean_stop(tmp_path):
    """The control socket used to answer before SIGTERM had its handler: a SIGTERM sent by
    whoever saw it answer killed the supervisor outright (exit -15) and left its services."""
    from supervisor.control import socket_path

    path = write(tmp_path / "services.toml", f"[services.web]\ncommand = {SLEEP}\n")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    sock = socket_path(tmp_path / ".supervise")
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None, timeout=20, interval=0.001, message="the socket")
        proc.send_signal(15)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            terminate(proc)
    # (a service left running fails the test: conftest's leak check)
