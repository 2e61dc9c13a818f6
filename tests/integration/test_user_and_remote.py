"""Issue 10: ``user =`` for the build and the exec probes too (High 3, issue 12 item 7), a
git remote that never answers (Medium 3), and credentials in a git URL (Medium 5)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import git
import psutil
import pytest

from conftest import terminate, wait_until, write
from harness import Stack, run

PY = sys.executable
IDENTITY = 'echo "$(id -u) $(id -g) $HOME $USER $LOGNAME $SHELL"'


def commit_repo(folder: Path, files: dict[str, str]) -> git.Repo:
    repo = git.Repo.init(folder, initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "t").set_value("user", "email", "t@example.invalid")
    for name, text in files.items():
        (folder / name).write_text(text)
    repo.index.add(list(files))
    repo.index.commit("first")
    return repo


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="switching users needs root")
def test_build_probes_and_replicas_run_as_the_user_with_its_identity(tmp_path):
    who = pwd.getpwnam("nobody")
    expected = f"{who.pw_uid} {who.pw_gid} {who.pw_dir} nobody nobody {who.pw_shell}"
    os.chmod(tmp_path, 0o755)
    app = tmp_path / "app"  # a local folder: its snapshot is handed to the user, as a checkout is
    app.mkdir()
    repo = commit_repo(tmp_path / "remote", {"README": "x\n"})
    text = f"""
[supervise]
state_dir = "{tmp_path}/state"
[services.local]
source = "./app"
build = ["/bin/sh", "-c", '{IDENTITY} > build.txt']
command = ["/bin/sh", "-c", '{IDENTITY} > run.txt; exec sleep 300']
ready = {{ exec = ["/bin/sh", "-c", '{IDENTITY} > ready.txt'], interval = "50ms" }}
live = {{ exec = ["/bin/sh", "-c", '{IDENTITY} > live.txt'], interval = "50ms" }}
user = "nobody"
[services.fromgit]
source = {{ git = "remote", ref = "main" }}
build = ["/bin/sh", "-c", '{IDENTITY} > build.txt']
command = ["/bin/sh", "-c", '{IDENTITY} > run.txt; exec sleep 300']
user = "nobody"
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.replica("local") and stack.replica("local").ready, timeout=20)
            snapshot = stack.replica("local").launch.artifact.workdir
            assert snapshot.parent == tmp_path / "state" / "sources" / "local" / "versions"
            for name in ("build.txt", "run.txt", "ready.txt"):
                assert (snapshot / name).read_text().strip() == expected, name
            # the check rewrites it every 50 ms (truncate, then write): wait for a whole line
            await stack.until(lambda: (snapshot / "live.txt").exists() and (snapshot / "live.txt").read_text().strip())
            assert (snapshot / "live.txt").read_text().strip() == expected
            assert not (app / "build.txt").exists()  # the live folder is left as it is
            await stack.until(lambda: stack.pid("fromgit"), timeout=20)
            workdir = stack.replica("fromgit").launch.artifact.workdir
            await stack.until(lambda: (workdir / "run.txt").exists())
            assert (workdir / "build.txt").read_text().strip() == expected
            assert (workdir / "run.txt").read_text().strip() == expected
            assert workdir.stat().st_uid == who.pw_uid

    run(body())
    repo.close()


def test_environment_identity_is_the_users_and_the_file_can_override_it():
    from supervisor.desired.environ import replica_env

    who = pwd.getpwnam("nobody")
    env = replica_env("svc", {}, 0, base={"HOME": "/root", "USER": "root", "PATH": "/bin"}, user="nobody")
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (who.pw_dir, "nobody", "nobody", who.pw_shell)
    env = replica_env("svc", {"HOME": "/srv/app"}, 0, base={"HOME": "/root"}, user="nobody")
    assert env["HOME"] == "/srv/app"
    assert replica_env("svc", {}, 0, base={"HOME": "/root"}, user=None)["HOME"] == "/root"


# -- a remote that never answers --------------------------------------------------------------

@pytest.fixture
def silent_remote():
    """A TCP listener on loopback that accepts and never says a word (an http remote that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/repo.git"
    server.close()


def git_processes(mark_env: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SUPERVISE_TEST_MARK") == mark_env and "git" in process.name():
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_a_silent_git_remote_holds_only_its_own_service_and_sigterm_cancels_it(tmp_path, silent_remote, leak_check):
    path = write(tmp_path / "services.toml", f"""
[services.hung]
source = {{ git = "{silent_remote}", ref = "main" }}
command = ["/bin/sleep", "300"]
[services.other]
command = ["/bin/sh", "-c", "echo v$V; exec sleep 300"]
env = {{ V = "1" }}
""")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "err.txt", "w"))
    try:
        wait_until(lambda: git_processes(leak_check), timeout=20, message="git talking to the silent remote")
        wait_until(lambda: (r := cli(path, "status", "--json")).stdout.startswith("{") and
                          {row["service"]: row for row in json.loads(r.stdout)["services"]}, timeout=20)
        wait_until(lambda: {row["service"]: row for row in json.loads(cli(path, "status", "--json").stdout)
                            ["services"]}["other"]["phase"] == "running", timeout=20, message="other running")
        # (other starts without waiting for hung's fetch; hung says why it waits once it has waited a while)
        hung = wait_until(lambda: (row := {r["service"]: r for r in json.loads(cli(path, "status", "--json").stdout)
                                           ["services"]}["hung"]) and "slow" in (row["message"] or "") and row,
                          timeout=20, message="hung's status to say the remote is slow")
        assert hung["phase"] == "fetching", hung
        # a reload and a restart of the other service go through while git still hangs
        path.write_text(path.read_text().replace('V = "1"', 'V = "2"'))
        began = time.monotonic()
        result = cli(path, "reload")
        assert result.returncode == 0, result.stderr
        log = tmp_path / ".supervise" / "logs" / "other.log"
        wait_until(lambda: "v2" in log.read_text(), timeout=15, message="other restarted by the reload")
        assert cli(path, "restart", "other").returncode == 0
        took = time.monotonic() - began
        assert took < 15, took
        assert git_processes(leak_check), "git should still be waiting"
        # SIGTERM: git is killed, the supervisor exits promptly
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        stop_took = time.monotonic() - began
        print(f"reload+restart with a hung remote: {took:.2f}s; SIGTERM to exit: {stop_took:.2f}s")
        assert stop_took < 10, stop_took
        assert not git_processes(leak_check)
    finally:
        terminate(proc)


# -- credentials in a git URL -------------------------------------------------------------------

def test_credentials_in_a_git_url_never_leave_the_supervisor(tmp_path):
    """Events (create, update, fetch-failed), the logs, status, read(), plan lines."""
    from supervisor import LocalRuntime, Service
    from supervisor.redaction import redact

    secrets = ["hunter2", "ghp_T0KEN", "only-a-token"]
    urls = ["https://alice:hunter2@127.0.0.1:9/x.git", "http://bob:ghp_T0KEN@[::1]:9/y.git",
            "https://only-a-token@127.0.0.1:9/z.git"]
    for url in urls:
        assert not any(s in redact(f"cannot fetch {url}: {url}") for s in secrets)
    assert redact("ssh://git@example.org/repo.git") == "ssh://***@example.org/repo.git"
    assert redact("no url here @ all") == "no url here @ all"

    text = "".join(f'[services.s{i}]\nsource = {{ git = "{url}", ref = "main" }}\ncommand = ["/bin/true"]\n'
                   for i, url in enumerate(urls))

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            dumped = json.dumps([e.to_dict() for e in stack.events])
            assert stack.of_type("create") and stack.of_type("fetch-failed")
            assert not any(s in dumped for s in secrets), dumped
            logs = "".join(stack.log(f"s{i}") for i in range(3))
            assert not any(s in logs for s in secrets)

    run(body())

    with LocalRuntime(state_dir=tmp_path / "rt") as runtime:
        events = runtime.notifier()
        try:
            runtime.create(Service("api", source=urls[0], version="main"), command=["/bin/true"])
        except Exception as exc:  # the fetch fails: the message is redacted too
            assert "hunter2" not in str(exc)
        listed = runtime.read()
        assert listed and not any("hunter2" in s.source for s in listed)
        got = []
        for event in events.notify():
            got.append(json.dumps(event.to_dict()))
            if len(got) >= 1:
                break
        assert got and not any("hunter2" in g for g in got)


def test_credentials_in_a_git_url_are_in_no_command_line(tmp_path, silent_remote, leak_check):
    """``ps`` shows every process's argv to every local user: while git hangs on the remote
    (the fetch, then its remote helper), no command line of ours holds the secret."""
    port = silent_remote.rsplit(":", 1)[1].split("/")[0]
    secret = "tok-GITSECRET"
    path = write(tmp_path / "services.toml", f"""
[services.gitcreds]
source = {{ git = "https://deploy:{secret}@127.0.0.1:{port}/repo.git", ref = "main" }}
command = ["/bin/sleep", "300"]
""")
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "err.txt", "w"))
    try:
        seen: set[str] = set()

        def helper_up() -> bool:
            for process in psutil.process_iter():
                try:
                    argv = process.cmdline()
                    assert not any(secret in arg for arg in argv), argv
                    if process.environ().get("SUPERVISE_TEST_MARK") == leak_check:
                        seen.update(arg for arg in argv[:2] if "git" in arg)
                except (psutil.Error, OSError):
                    continue
            return any("remote-https" in arg for arg in seen)

        wait_until(helper_up, timeout=30, message="git-remote-https talking to the silent remote")
        for _ in range(20):  # a while longer, as it hangs
            helper_up()
        assert secret not in (tmp_path / "err.txt").read_text()
    finally:
        terminate(proc)


def test_the_credential_helper_hands_git_the_urls_user_and_password(tmp_path):
    """The URL's credentials reach git through its credential protocol (real git asked with
    ``git credential fill``), percent-decoded, and the URL git gets has none."""
    from supervisor.execute.sources.git import split_credentials

    url, env = split_credentials("https://deploy:p%40ss%3Aw0rd@127.0.0.1:9/repo.git")
    assert url == "https://127.0.0.1:9/repo.git"
    result = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=127.0.0.1:9\n\n",
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, **env, "GIT_TERMINAL_PROMPT": "0", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "username=deploy\n" in result.stdout and "password=p@ss:w0rd\n" in result.stdout, result.stdout
    assert split_credentials("ssh://git@example.org/repo.git") == ("ssh://git@example.org/repo.git", {})
    assert split_credentials("https://example.org/repo.git") == ("https://example.org/repo.git", {})


def test_failed_fetches_leave_no_zombie_git(tmp_path, leak_check):
    """git's remote helper outlives a failed ``git fetch`` and comes back to the supervisor (a
    child subreaper): each retry left one ``[git] <defunct>`` that nothing reaped."""
    from conftest import free_port

    path = write(tmp_path / "services.toml", f"""
[services.refused]
source = {{ git = "https://127.0.0.1:{free_port()}/r.git" }}
command = ["/bin/sleep", "300"]
""")
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([PY, "-m", "supervisor", "--config", str(path)], stdout=open(out, "w"),
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: out.read_text().count("retrying in") >= 3, timeout=60, message="three failed fetches")

        def zombies() -> list[int]:
            return [c.pid for c in psutil.Process(proc.pid).children() if c.status() == psutil.STATUS_ZOMBIE]

        wait_until(lambda: not zombies(), timeout=5, message="no zombie child of the supervisor")
    finally:
        terminate(proc)
