"""``--json`` on the read verbs, ``logs --since/--grep`` and the merge, ``--all`` and globs:
through the real CLI, against a real supervisor where one is needed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import terminate, wait_until, write

PY = sys.executable
TALKER = f'["{PY}", "-u", "-c", "import time\\nwhile True: print(\\"beat\\"); time.sleep(0.2)"]'


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True,
                          text=True, timeout=60)


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def test_check_json_ok_and_errors_as_objects(tmp_path):
    good = write(tmp_path / "good.toml", '[services.a]\ncommand = ["true"]\n')
    result = cli(good, "check", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {"ok": True, "file": str(good), "services": ["a"]}
    bad = write(tmp_path / "bad.toml", '[services.a]\ncomand = ["true"]\n')
    result = cli(bad, "check", "--json")
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    assert {"file": str(bad), "line": 2, "col": 1, "service": "a",
            "message": 'unknown key "comand" (did you mean "command"?)'} in errors
    assert all(set(e) == {"file", "line", "col", "service", "message"} for e in errors)
    assert "did you mean" in result.stderr  # people still read stderr
    broken = write(tmp_path / "broken.toml", "[services.a\n")
    error = json.loads(cli(broken, "check", "--json").stdout)["errors"][0]
    assert error["line"] == 1 and error["service"] is None and "TOML syntax error" in error["message"]


def test_plan_and_status_json_without_a_supervisor(tmp_path):
    path = write(tmp_path / "services.toml", '[services.a]\ncommand = ["sleep", "1"]\nreplicas = 2\n')
    result = cli(path, "plan", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"ok": True, "against": "nothing",
                                         "actions": ["start a[0]: new service", "start a[1]: new service"]}
    result = cli(path, "status", "--json")
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["ok"] is False and reply["services"] == [] and "no supervisor is running" in reply["error"]
    assert result.stderr.startswith("supervise: no supervisor is running")


def test_logs_merge_in_time_order_since_grep_and_json(tmp_path):
    path = write(tmp_path / "services.toml", '[services.a]\ncommand = ["true"]\n[services.b]\ncommand = ["true"]\n')
    folder = tmp_path / ".supervise" / "logs"
    now = time.time()
    # a: timestamps = true (each line dated); b: only supervisor notes date its lines
    write(folder / "a.log", f"{stamp(now - 3600)}.000 a-old\n{stamp(now - 120)}.500 a-recent error\n"
                            f"{stamp(now - 30)}.000 a-last\n")
    write(folder / "b.log", f"[supervise {stamp(now - 7200)}] started b[0] pid 1 version v: new service\n"
                            "b-ancient\n"
                            f"[supervise {stamp(now - 60)}] started b[0] pid 2 version v: restarted\n"
                            "b-after-restart error\n")
    merged = cli(path, "logs", "-n", "10").stdout.splitlines()
    texts = [line.split("| ", 1)[1] for line in merged]

    def at(text: str) -> int:
        return next(i for i, line in enumerate(texts) if line.endswith(text))

    assert at("b-ancient") < at("a-old") < at("a-recent error") < at("b-after-restart error") < at("a-last")

    result = cli(path, "logs", "--since", "10m", "--json")
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    # b-ancient has no time of its own: it may be as recent as the note below it, so it stays
    # (sorted by the note above it); a-old carries its own time and goes
    assert [o["line"] for o in objects] == ["b-ancient", f"{stamp(now - 120)}.500 a-recent error",
                                            f"[supervise {stamp(now - 60)}] started b[0] pid 2 version v: restarted",
                                            "b-after-restart error", f"{stamp(now - 30)}.000 a-last"]
    assert objects[1]["service"] == "a" and abs(objects[1]["time"] - (int(now - 120) + 0.5)) < 1
    assert objects[3]["service"] == "b" and objects[3]["time"] == pytest.approx(int(now - 60), abs=1)

    result = cli(path, "logs", "--grep", "err(or)?$", "b")
    assert [line.split("| ", 1)[1] for line in result.stdout.splitlines()] == ["b-after-restart error"]
    assert cli(path, "logs", "--since", "soon").returncode == 2
    bad = cli(path, "logs", "--grep", "(")
    assert bad.returncode == 2 and "--grep" in bad.stderr


@pytest.fixture
def stack(tmp_path):
    path = write(tmp_path / "services.toml", f"""
[services.web-a]
command = {TALKER}
[services.web-b]
command = {TALKER}
[services.db]
command = {TALKER}
log = {{ timestamps = true }}
""")
    out = open(tmp_path / "daemon.out", "w")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    wait_until(lambda: cli(path, "status").returncode == 0, timeout=30, message="every service running")
    yield path
    terminate(proc, timeout=30)


def rows(path: Path) -> dict[str, dict]:
    return {r["service"]: r for r in json.loads(cli(path, "status", "--json").stdout)["services"]}


def test_globs_and_all_for_stop_start_restart(stack):
    path = stack
    result = cli(path, "stop", "web-*")
    assert result.returncode == 0, result.stderr
    now = rows(path)
    assert now["web-a"]["held"] and now["web-b"]["held"] and now["db"]["phase"] == "running"
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["web-a", "web-b"]
    result = cli(path, "start", "--all")
    assert result.returncode == 0
    wait_until(lambda: all(r["phase"] == "running" and not r["held"] for r in rows(path).values()))
    before = {name: r["pid"] for name, r in rows(path).items()}
    assert cli(path, "restart", "--all").returncode == 0
    after = rows(path)
    assert all(after[name]["pid"] not in (None, pid) for name, pid in before.items())
    assert cli(path, "restart", "web-?", "db").returncode == 0
    nothing = cli(path, "stop", "api*")
    assert nothing.returncode == 1
    assert nothing.stderr.strip() == "supervise: no service matches 'api*' (services: web-a, web-b, db)"
    assert all(not r["held"] for r in rows(path).values())  # a failed pattern stops nothing
    assert cli(path, "stop").returncode == 2 and cli(path, "stop", "--all", "db").returncode == 2


def test_status_plan_json_and_logs_follow_json_with_a_supervisor(stack):
    path = stack
    reply = json.loads(cli(path, "status", "--json").stdout)
    assert reply["ok"] is True and {r["service"] for r in reply["services"]} == {"web-a", "web-b", "db"}
    assert json.loads(cli(path, "plan", "--json").stdout) == {"ok": True, "against": "running", "actions": []}
    follower = subprocess.Popen([PY, "-m", "supervisor", "logs", "-f", "-n", "0", "--json", "--grep", "beat", "db",
                                 "--config", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        line = json.loads(follower.stdout.readline())
        assert line["service"] == "db" and line["line"].endswith(" beat")
        assert abs(line["time"] - time.time()) < 30  # db's own timestamp
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=20)
        follower.stdout.close()


def test_status_counts_a_completed_one_shot_as_up_and_a_failed_one_as_not(tmp_path):
    """A one-shot that exited 0 and is not restarted (a Procfile's ``release``, imported as
    restart = "never") is as asked: ``status`` exits 0, as a script or a health check expects;
    one that exited non-zero is not (exit 3)."""
    path = write(tmp_path / "services.toml", f"""
[services.release]
command = ["true"]
restart = "never"

[services.migrate]
command = ["sh", "-c", "exit 0"]
restart = "on-failure"

[services.web]
command = {TALKER}
depends_on = {{ release = "completed" }}

[services.broken]
command = ["false"]
restart = "never"
""")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def phases():
            result = cli(path, "status", "--json")
            try:
                return {row["service"]: (row["phase"], row["last_exit"]) for row in json.loads(result.stdout)["services"]}
            except (ValueError, KeyError):
                return {}

        wait_until(lambda: phases() == {"release": ("exited", "exit 0"), "migrate": ("exited", "exit 0"),
                                        "web": ("running", None), "broken": ("exited", "exit 1")},
                   timeout=30, message="the one-shots to end and web to run")
        assert cli(path, "status", "release", "migrate", "web").returncode == 0
        assert cli(path, "status", "broken").returncode == 3
        assert cli(path, "status").returncode == 3
    finally:
        terminate(proc)


def test_logs_n_of_a_busy_replica_still_says_whose_and_when(tmp_path):
    """``logs -n 2`` of a replica whose origin line and start note lie far above its last lines:
    they are still its replica's and stream's, dated by its start (so the merge is in order)."""
    path = write(tmp_path / "services.toml", '[services.web]\ncommand = ["true"]\n[services.job]\ncommand = ["true"]\n')
    logs = tmp_path / ".supervise" / "logs"
    started = time.time() - 3600
    write(logs / "web.log", f"[supervise {stamp(started)}] started web[1] pid 7: new service\n"
                            f"[supervise {stamp(started)}] >> web[1] stderr\n" + "busy\n" * 5000)
    write(logs / "job.log", f"[supervise {stamp(started - 60)}] started job[0] pid 8: new service\n"
                            f"[supervise {stamp(started - 60)}] >> job[0] stdout\nearlier\n")
    result = cli(path, "logs", "--json", "-n", "2")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["service"], x["line"]) for x in lines] == [
        ("job", f"[supervise {stamp(started - 60)}] started job[0] pid 8: new service"), ("job", "earlier"),
        ("web", "busy"), ("web", "busy")]
    assert lines[-1]["replica"] == 1 and lines[-1]["stream"] == "stderr" and lines[-1]["time"] == int(started)
