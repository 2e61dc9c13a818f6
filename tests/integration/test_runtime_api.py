"""The Runtime library API: a Python program runs a dependency from a git source and follows
its updates — through the same reconciler as the daemon."""

from __future__ import annotations

import io
import os
import sys
import threading

import git
import psutil
import pytest

from conftest import wait_until
from supervisor import Event, LocalRuntime, RuntimeError_, Service

PY = sys.executable


def commit_app(repo: git.Repo, text: str) -> str:
    folder = repo.working_tree_dir
    with open(os.path.join(folder, "app.py"), "w") as f:
        f.write(f"import time\nprint('app {text}', flush=True)\ntime.sleep(300)\n")
    repo.index.add(["app.py"])
    return repo.index.commit(text).hexsha


@pytest.fixture
def remote(tmp_path):
    repo = git.Repo.init(tmp_path / "dep.git.work", initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "t").set_value("user", "email", "t@example.invalid")
    commit_app(repo, "v1")
    bare = git.Repo.init(tmp_path / "dep.git", bare=True, initial_branch="main")
    repo.create_remote("origin", str(tmp_path / "dep.git")).push("main:main")
    yield repo
    repo.close()
    bare.close()


def test_run_a_git_dependency_and_follow_its_updates(tmp_path, remote):
    out = io.StringIO()
    events: list[Event] = []
    with LocalRuntime(state_dir=tmp_path / "state") as runtime:
        notifier = runtime.notifier()
        reader = threading.Thread(target=lambda: events.extend(notifier.notify()), daemon=True)
        reader.start()
        dep = Service("dep", source=str(tmp_path / "dep.git"), version="main", metadata={"poll": "200ms"})
        runtime.create(dep, command=[PY, "app.py"], env={"X": "1"}, output=out)
        first = wait_until(lambda: runtime.read(service="dep")[0].metadata["pids"], message="dep running")
        assert wait_until(lambda: "app v1" in out.getvalue())
        new = commit_app(remote, "v2")
        remote.remote("origin").push("main:main")
        wait_until(lambda: runtime.read(service="dep")[0].metadata["build"].startswith(new[:12])
                   and runtime.read(service="dep")[0].metadata["pids"] not in ("", first), timeout=15,
                   message="the new commit running")
        assert runtime.read(service="dep")[0].version == "main"  # as created: the ref asked for
        assert runtime.read(version="main")[0].name == "dep"
        assert runtime.read(version=new[:12])[0].name == "dep"  # a build id's prefix matches too
        assert runtime.read(type="job") == []
        pid = int(runtime.read(service="dep")[0].metadata["pids"])
        runtime.delete(dep)
        assert runtime.list() == []
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        notifier.close()
        reader.join(timeout=5)
    kinds = [e.type.value for e in events if e.service == "dep"]
    assert kinds[0] == "create" and "delete" in kinds and kinds.count("started") == 2


def test_bad_definitions_raise_the_config_messages(tmp_path):
    with LocalRuntime(state_dir=tmp_path / "state") as runtime:
        with pytest.raises(RuntimeError_, match="bad service name"):
            runtime.create(Service("../escape"), command=["true"])
        with pytest.raises(RuntimeError_, match='unknown signal "SIGNOPE"'):
            runtime.create(Service("x", metadata={"stop_signal": "SIGNOPE"}), command=["true"])
        with pytest.raises(RuntimeError_, match="fetch or build failed"):
            runtime.create(Service("y", metadata={"build": "false"}), command=["true"])
        with pytest.raises(RuntimeError_, match="unknown service"):
            runtime.update(Service("nope"))


HOST = """
import sys, time
from supervisor import LocalRuntime, Service
runtime = LocalRuntime(state_dir=sys.argv[1])
runtime.start()
runtime.create(Service("dep", source=sys.argv[2]), command=[sys.executable, "-c", "import time; time.sleep(300)"])
print("pid", runtime.read(service="dep")[0].metadata["pids"], flush=True)
time.sleep(300)
"""


def test_a_killed_host_program_leaves_a_replica_the_next_one_adopts(tmp_path):
    import subprocess

    (tmp_path / "src").mkdir()
    host = subprocess.Popen([PY, "-c", HOST, str(tmp_path / "state"), str(tmp_path / "src")],
                            stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        line = host.stdout.readline()
        pid = int(line.split()[1])
        host.kill()
        host.wait(timeout=10)
        assert psutil.pid_exists(pid)
        with LocalRuntime(state_dir=tmp_path / "state") as runtime:
            runtime.create(Service("dep", source=str(tmp_path / "src")),
                           command=[PY, "-c", "import time; time.sleep(300)"])
            assert runtime.read(service="dep")[0].metadata["pids"] == str(pid)  # adopted, no duplicate
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if pid is not None and psutil.pid_exists(pid):
            os.kill(pid, 9)


def test_a_second_runtime_on_the_same_state_dir_is_refused(tmp_path):
    with LocalRuntime(state_dir=tmp_path / "state"):
        with pytest.raises(RuntimeError_, match="another supervise"):
            LocalRuntime(state_dir=tmp_path / "state").start()
