"""The original runtime's contract (go-micro ``runtime`` v1.17-1.18), translated line by line
from a seed program written against its API, run against LocalRuntime on real git repositories
and real processes.

    r := runtime.NewRuntime()
    r.Init(runtime.WithNotifier(updates), runtime.WithType("service"))
    r.Start()
    r.Create(&runtime.Service{Name: "dep", Version: "main", Source: repo},
             runtime.WithCommand("python", "app.py"), runtime.WithEnv([]string{"X=1"}), runtime.WithOutput(out))
    r.Read(runtime.ReadService("dep")); r.Read(runtime.ReadVersion("main")); r.Read(runtime.ReadType("service"))
    updates <- runtime.Event{Type: runtime.Update, Service: "dep", Version: "v2"}
    r.Update(&runtime.Service{Name: "dep", Version: "v2", Metadata: ...})
    r.Delete(&runtime.Service{Name: "nope"}); r.Delete(dep); r.List()
    r.Stop(); r.Start(); ...; r.Stop()
"""

from __future__ import annotations

import io
import queue
import threading

import git
import psutil
import pytest

from conftest import wait_until
from supervisor import Event, EventType, LocalRuntime, RuntimeError_, Service
from supervisor.runtimes.base import (
    Notifier, read_service, read_type, read_version, with_command, with_env, with_notifier, with_output, with_type,
)
from test_runtime_api import PY, commit_app, remote  # noqa: F401  (the fixture)


class Updates(Notifier):
    """A caller's own notifier for updates (a webhook's, a CI hook's): events put in, read by
    the runtime."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Event | None] = queue.Queue()

    def put(self, event: Event) -> None:
        self.queue.put(event)

    def notify(self):
        while (event := self.queue.get()) is not None:
            yield event

    def close(self) -> None:
        self.queue.put(None)


def collect(stream) -> tuple[list[Event], threading.Thread]:
    events: list[Event] = []
    reader = threading.Thread(target=lambda: events.extend(stream.notify()), daemon=True)
    reader.start()
    return events, reader


def test_the_original_runtime_api_translated(tmp_path, remote):  # noqa: F811
    source = str(tmp_path / "dep.git")
    updates = Updates()
    out = io.StringIO()
    r = LocalRuntime(tmp_path / "state")
    r.init(with_notifier(updates), with_type("service"))
    assert str(r) == "local"
    r.start()
    try:
        events, reader = collect(r.events(timeout=60))
        dep = Service("dep", version="main", source=source, metadata={"owner": "team-a", "poll": "1h"})
        r.create(dep, with_command(PY, "app.py"), with_env(["X=1"]), with_output(out))
        with pytest.raises(RuntimeError_, match="already registered"):
            r.create(dep, with_command(PY, "app.py"))
        with pytest.raises(RuntimeError_, match="of type 'service', not 'job'"):
            r.create(Service("job"), command=[PY, "-c", "pass"], type="job")

        first = r.read(read_service("dep"))
        assert [(s.name, s.version, s.source) for s in first] == [("dep", "main", source)]
        assert first[0].metadata["owner"] == "team-a"  # the caller's metadata is kept
        assert first[0].metadata["build"].startswith(remote.head.commit.hexsha[:12])
        assert [s.name for s in r.read(read_version("main"))] == ["dep"]
        assert r.read(read_version("v2")) == [] and r.read(read_service("other")) == []
        assert [s.name for s in r.read(read_type("service"))] == ["dep"] and r.read(read_type("job")) == []
        wait_until(lambda: "app v1" in out.getvalue(), message="v1's output")

        # a tag appears; the caller's notifier says "update dep to v2": the runtime deploys it
        new = commit_app(remote, "v2")
        remote.create_tag("v2")
        remote.remote("origin").push(["main:main", "v2:v2"])
        updates.put(Event(EventType.UPDATE, service="dep", version="v2"))
        wait_until(lambda: r.read(read_service("dep"))[0].version == "v2"
                   and r.read(read_service("dep"))[0].metadata["build"].startswith(new[:12]),
                   timeout=20, message="the notified version deployed")
        wait_until(lambda: "app v2" in out.getvalue(), message="v2's output")

        # update applies the service given: changed metadata too
        r.update(Service("dep", version="v2", source=source, metadata={"owner": "team-b", "replicas": "2"}))
        now = r.read(read_service("dep"))[0]
        assert now.metadata["owner"] == "team-b" and now.metadata["replicas"] == "2"
        wait_until(lambda: len(r.read(read_service("dep"))[0].metadata["pids"].split(",")) == 2,
                   message="two replicas")
        pids = [int(p) for p in r.read(read_service("dep"))[0].metadata["pids"].split(",")]

        r.delete(Service("nope"))  # an unknown name is not an error
        r.delete(dep)
        assert r.list() == []
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    finally:
        r.stop()
    reader.join(timeout=10)
    assert not reader.is_alive()  # the stream ended with the runtime
    mine = [(e.type.value, e.version) for e in events if e.service == "dep"]
    kinds = [k for k, _ in mine]
    assert kinds[0] == "create" and kinds[-1] == "delete"
    assert ("update", "v2") in mine  # the update event carries the new version
    assert kinds.index("started") < kinds.index("update") < kinds.index("delete")


def test_stop_then_start_again_and_events_resume(tmp_path):
    (tmp_path / "src").mkdir()
    r = LocalRuntime(tmp_path / "state")
    try:
        r.start()
        r.create(Service("a", source=str(tmp_path / "src")), command=[PY, "-c", "import time; time.sleep(300)"])
        first = wait_until(lambda: r.read(service="a")[0].metadata["pids"], message="a running")
        r.stop()
        assert not psutil.pid_exists(int(first)) or psutil.Process(int(first)).status() == psutil.STATUS_ZOMBIE
        r.start()
        events, reader = collect(r.events(timeout=30))
        again = wait_until(lambda: r.read(service="a")[0].metadata["pids"], message="a running again")
        assert again != first
        r.delete(Service("a"))
    finally:
        r.stop()
    reader.join(timeout=10)
    assert [e.type.value for e in events if e.service == "a"][-1] == "delete"


def test_a_local_repository_with_a_ref_is_a_git_source_not_built_in_place(tmp_path, remote):  # noqa: F811
    work = remote.working_tree_dir
    with LocalRuntime(tmp_path / "state") as r:
        r.create(Service("w", version="main", source=work), command=[PY, "app.py"])
        assert r.specs["w"].source.kind == "git"
        assert r.read(service="w")[0].metadata["build"].startswith(remote.head.commit.hexsha[:12])
        r.delete(Service("w"))
    assert git.Repo(work).is_dirty(untracked_files=True) is False


def test_the_event_stream_ends_after_its_timeout(tmp_path):
    with LocalRuntime(tmp_path / "state") as r:
        assert list(r.events(timeout=0.2).notify()) == []


def test_a_host_left_running_shows_in_list(tmp_path):
    """What a killed host left running is listed by the next runtime until it stops it."""
    import subprocess

    from test_runtime_api import HOST

    (tmp_path / "src").mkdir()
    host = subprocess.Popen([PY, "-c", HOST, str(tmp_path / "state"), str(tmp_path / "src")],
                            stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        pid = int(host.stdout.readline().split()[1])
        host.kill()
        host.wait(timeout=10)
        with LocalRuntime(tmp_path / "state") as r:
            listed = r.list()
            assert [(s.name, s.metadata["status"], s.metadata["pids"]) for s in listed] == [
                ("dep", "left running", str(pid))]
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                   message="the left replica stopped with the runtime")
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if pid is not None and psutil.pid_exists(pid):
            psutil.Process(pid).kill()
