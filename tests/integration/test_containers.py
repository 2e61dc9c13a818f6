"""Containers through the Docker Engine API, against a real podman (tests/podman_engine.py).

These drive :class:`supervisor.execute.executors.container.ContainerExecutor` through the operations of
the engine's executor seam (prepare, start, stop, observe exits, adopt, logs); the daemon does not
route container services to it yet (config refuses them with one clear error meanwhile).
Figures (build, start-to-ready, stop) are printed with ``-s`` and kept in ``FIGURES``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import docker
import git
import pytest

from conftest import free_port, http_get as get, wait_until, write
from supervisor.execute import logs
from supervisor.desired.model import SourceSpec
from supervisor.execute.sources.git import GitSource
from supervisor.execute.executors.container import (
    ContainerExecutor,
    ContainerSpec,
    EngineError,
    ImageBuildError,
    image_tag,
)

FIGURES: dict[str, float] = {}
#: A server that says who it is, serves /www on port 8080, and leaves at once on SIGTERM.
SERVER = ('trap "echo stopping; exit 0" TERM; echo "hello $GREETING in $(pwd) as $(id -u)"; '
          'echo "to stderr" >&2; httpd -f -p 8080 -h /www & wait')



class Exits:
    """Collects exits reported by the executor (from the engine's event stream)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: list[tuple[str, int]] = []

    def __call__(self, container_id: str, code: int) -> None:
        with self.lock:
            self.seen.append((container_id, code))

    def of(self, container_id: str) -> list[int]:
        with self.lock:
            return [code for cid, code in self.seen if cid == container_id]


def read(path: Path) -> str:
    """The log so far ("" before its first line: the sink makes the file then)."""
    return path.read_text() if path.exists() else ""


def figure(name: str, seconds: float) -> None:
    FIGURES[name] = round(seconds, 3)
    print(f"\nFIGURE {name}: {seconds:.3f}s")


def test_image_service_runs_with_env_cwd_user_ports_and_logs(podman_api, base_image, tmp_path):
    figure("base image build (FROM scratch + busybox)", base_image["seconds"])
    state = tmp_path / "state"
    executor = ContainerExecutor(state, docker_host=podman_api)
    exits = Exits()
    executor.watch_exits(exits)
    sink = logs.LogSink("web", tmp_path / "web.log")
    port = free_port()
    spec = ContainerSpec(service="web", replica=0, version="v1", image=base_image["tag"],
                         command=("/bin/sh", "-c", SERVER), env={"GREETING": "hi"}, working_dir="/www",
                         ports=(f"127.0.0.1:{port}:8080",), user="1000", stop_signal=signal.SIGTERM, stop_timeout=5)
    try:
        started = time.monotonic()
        container_id = executor.start(spec, sink, "web")
        assert wait_until(lambda: get(f"http://127.0.0.1:{port}/index.html"), timeout=20, message="HTTP") == "ok\n"
        figure("container start to ready", time.monotonic() - started)

        [owned] = executor.owned()
        assert (owned.id, owned.service, owned.replica, owned.version, owned.status) == (
            container_id, "web", 0, "v1", "running")
        # stdout and stderr are followed each on its own: both arrive, whole
        wait_until(lambda: "to stderr\n" in read(tmp_path / "web.log"), message="the stderr line")
        wait_until(lambda: "hello hi in /www as 1000\n" in read(tmp_path / "web.log"),
                   message="the stdout line (env, working_dir, user)")

        started = time.monotonic()
        code = executor.stop(container_id, spec.stop_timeout)
        figure("container stop (SIGTERM honoured)", time.monotonic() - started)
        assert code == 0  # the trap ran: the stop signal reached it, not a SIGKILL
        # the trap's last line comes through the engine's log stream, which may lag the stop's reply
        wait_until(lambda: "stopping\n" in read(tmp_path / "web.log"), timeout=10, message="the trap's line")
        assert executor.owned() == []
        wait_until(lambda: exits.of(container_id), message="the exit from the event stream")
        assert exits.of(container_id) == [0]
    finally:
        for item in executor.owned():
            executor.remove(item.id)
        executor.close()


def test_exit_is_observed_from_events_with_the_last_lines(podman_api, base_image, tmp_path):
    executor = ContainerExecutor(tmp_path / "state", docker_host=podman_api)
    exits = Exits()
    executor.watch_exits(exits)
    sink = logs.LogSink("job", tmp_path / "job.log")
    try:
        container_id = executor.start(ContainerSpec(
            service="job", replica=0, version="v1", image=base_image["tag"],
            command=("/bin/sh", "-c", "echo one; printf 'two '; sleep 0.2; echo halves; printf 'no newline'; exit 3")),
            sink, "job")
        wait_until(lambda: exits.of(container_id), timeout=20, message="exit 3")
        assert exits.of(container_id) == [3]
        # reported after the output was read: every line is already in the log, whole
        assert (tmp_path / "job.log").read_text() == "one\ntwo halves\nno newline\n"
        [owned] = executor.owned("job")
        assert owned.exit_code == 3
        executor.remove(container_id)
    finally:
        executor.close()


def test_on_an_event_loop_lines_then_the_exit_arrive_on_the_loop(podman_api, base_image, tmp_path):
    """How the engine will use it: blocking calls in threads, deliveries on its own loop."""
    async def body():
        loop = asyncio.get_running_loop()
        executor = await asyncio.to_thread(ContainerExecutor, tmp_path / "state", podman_api, None, loop)
        exited: asyncio.Future = loop.create_future()
        seen_at_exit: list[str] = []

        def on_exit(container_id: str, code: int) -> None:
            seen_at_exit.append(read(tmp_path / "job.log"))
            if not exited.done():
                exited.set_result((container_id, code))

        try:
            await asyncio.to_thread(executor.watch_exits, on_exit)
            script = "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done; exit 7"
            container_id = await asyncio.to_thread(executor.start, ContainerSpec(
                service="job", replica=0, version="v1", image=base_image["tag"], command=("/bin/sh", "-c", script)),
                logs.LogSink("job", tmp_path / "job.log"), "job")
            assert await asyncio.wait_for(exited, 20) == (container_id, 7)
            assert seen_at_exit[0] == "".join(f"line {i}\n" for i in range(200))  # all in before the exit
            await asyncio.to_thread(executor.remove, container_id)
        finally:
            executor.close()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_a_new_commit_builds_beside_replaces_and_a_broken_dockerfile_keeps_the_old(podman_api, base_image, tmp_path):
    """git source -> worktree per commit (the real GitSource) -> image per version -> container."""
    executor = ContainerExecutor(tmp_path / "state", docker_host=podman_api)
    work = git.Repo.init(tmp_path / "app", initial_branch="main")
    with work.config_writer() as cfg:
        cfg.set_value("user", "name", "t").set_value("user", "email", "t@example.invalid")
    dockerfile = f'FROM {base_image["tag"]}\nCOPY page.html /www/index.html\nCMD ["/bin/sh", "-c", {json.dumps(SERVER)}]\n'
    source = GitSource(SourceSpec(kind="git", url=str(tmp_path / "app"), ref="main"), tmp_path / "state" / "sources" / "app")

    def commit(page: str, docker: str = dockerfile) -> None:
        write(tmp_path / "app" / "docker" / "Dockerfile", docker)
        write(tmp_path / "app" / "docker" / "page.html", page)
        work.index.add(["docker/Dockerfile", "docker/page.html"])
        work.index.commit(page.strip())

    def build() -> tuple[str, str]:
        revision = source.fetch()
        version = revision[:12]
        return version, executor.build_version("app", version, source.checkout(revision), "Dockerfile", "docker")

    port = free_port()
    sink = logs.LogSink("app", tmp_path / "app.log")
    built: list[str] = []

    def spec(version: str, tag: str) -> ContainerSpec:
        return ContainerSpec(service="app", replica=0, version=version, image=tag,
                             ports=(f"127.0.0.1:{port}:8080",), stop_timeout=5)

    try:
        commit("version one\n")
        started = time.monotonic()
        v1, tag1 = build()
        figure("Dockerfile build (one COPY layer on the base)", time.monotonic() - started)
        built.append(tag1)
        assert tag1 == image_tag("app", v1)
        old = executor.start(spec(v1, tag1), sink, "app")
        wait_until(lambda: get(f"http://127.0.0.1:{port}/") == "version one\n", timeout=20, message="v1 serving")

        # a new commit: its image is built beside the running container, which serves throughout
        commit("version two\n")
        v2, tag2 = build()
        built.append(tag2)
        assert v2 != v1 and get(f"http://127.0.0.1:{port}/") == "version one\n"
        executor.stop(old, 5)  # recreate: the host port belongs to the replica
        new = executor.start(spec(v2, tag2), sink, "app")
        wait_until(lambda: get(f"http://127.0.0.1:{port}/") == "version two\n", timeout=20, message="v2 serving")
        assert [(o.id, o.version) for o in executor.owned()] == [(new, v2)]

        # a broken Dockerfile: one clear error with the build's last lines; v2 keeps serving
        commit("version three\n", dockerfile.replace("COPY page.html", "COPY missing-file.html"))
        with pytest.raises(ImageBuildError) as failure:
            build()
        assert "\n" not in str(failure.value) and failure.value.tail
        assert "missing-file.html" in str(failure.value) + " ".join(failure.value.tail)
        v3 = source.fetch()[:12]
        with pytest.raises(docker.errors.ImageNotFound):
            executor.api.inspect_image(image_tag("app", v3))
        assert get(f"http://127.0.0.1:{port}/") == "version two\n"
        with pytest.raises(EngineError, match="inside the source"):
            executor.build_version("app", v3, tmp_path / "app", "Dockerfile", "../..")

        # keep_versions: images of versions no longer kept go (the running one stays)
        assert executor.prune_images("app", keep={tag2}) == [tag1]
        executor.stop(new, 5)
        assert executor.owned() == []
    finally:
        for item in executor.owned():
            executor.remove(item.id)
        for tag in built:
            try:
                executor.api.remove_image(tag)
            except docker.errors.DockerException:
                pass
        executor.close()
        work.close()


DRIVER = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from supervisor.execute import logs
    from supervisor.execute.executors.container import ContainerExecutor, ContainerSpec
    state, podman_api, image, log_path = sys.argv[1:5]
    executor = ContainerExecutor(Path(state), docker_host=podman_api)
    sink = logs.LogSink("counter", Path(log_path))
    for item in executor.owned("counter"):        # a second run adopts instead of starting
        if item.status == "running":
            executor.follow(item.id, sink, "counter")
            print("adopted", item.id, flush=True)
            break
    else:
        script = ('i=0; while [ $i -lt 100000 ]; do echo "out $i"; echo "err $i" >&2; '
                  'i=$((i+1)); usleep 10000; done')
        cid = executor.start(ContainerSpec(service="counter", replica=0, version="v1", image=image,
                                           command=("/bin/sh", "-c", script), stop_signal=9), sink, "counter")
        print("started", cid, flush=True)
    threading.Event().wait()
""")


def counted(path: Path, stream: str) -> list[int]:
    text = read(path)
    return [int(n) for n in re.findall(rf"^{stream} (\d+)$", text, re.M)]


def test_kill_9_then_adopt_by_label_no_duplicate_no_lost_line(podman_api, base_image, tmp_path):
    state, log_path = tmp_path / "state", tmp_path / "counter.log"
    driver = write(tmp_path / "driver.py", DRIVER)
    argv = [sys.executable, str(driver), str(state), podman_api, base_image["tag"], str(log_path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().split()[0] == "started"
        wait_until(lambda: len(counted(log_path, "out")) > 20, timeout=20, message="output")
        first.kill()  # kill -9: no chance to save anything more
        first.wait()
    finally:
        first.kill()
        first.wait()
    lines_before = len(counted(log_path, "out"))
    executor = ContainerExecutor(state, docker_host=podman_api)
    try:
        second = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert second.stdout.readline().split()[0] == "adopted"
            running = [o for o in executor.owned("counter") if o.status == "running"]
            assert len(running) == 1  # adopted, not duplicated
            wait_until(lambda: len(counted(log_path, "out")) > lines_before + 20, timeout=20, message="more output")
        finally:
            second.kill()
            second.wait()
        [item] = executor.owned("counter")
        executor.follow(item.id, logs.LogSink("counter", log_path), "counter")  # a third adoption, in-process
        executor.stop(item.id, 5)
        for stream in ("out", "err"):
            numbers = counted(log_path, stream)
            assert numbers[: len(numbers)] == sorted(numbers)
            assert set(numbers) == set(range(max(numbers) + 1)), f"{stream}: a line was lost"
            # the cursor is saved right after each write: a kill in that instant may repeat
            # the lines of one write, never more
            assert len(numbers) - len(set(numbers)) <= 2, f"{stream}: lines repeated"
        assert executor.owned() == []
    finally:
        for item in executor.owned():
            executor.remove(item.id)
        executor.close()


def test_only_our_containers_are_touched(podman_api, base_image, tmp_path):
    ours = ContainerExecutor(tmp_path / "ours", docker_host=podman_api)
    theirs = ContainerExecutor(tmp_path / "theirs", docker_host=podman_api)
    spec = ContainerSpec(service="same-name", replica=0, version="v1", image=base_image["tag"],
                         command=("/bin/sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"), stop_timeout=5)
    try:
        foreign = theirs.start(spec)
        mine = ours.start(spec)
        assert [o.id for o in ours.owned()] == [mine]
        with pytest.raises(EngineError, match="not ours"):
            ours.stop(foreign, 5)
        with pytest.raises(EngineError, match="not ours"):
            ours.remove(foreign)
        assert ours.stop(mine, 5) == 0
        assert [o.id for o in theirs.owned()] == [foreign]
        theirs.stop(foreign, 5)
    finally:
        for executor in (ours, theirs):
            for item in executor.owned():
                executor.remove(item.id)
            executor.close()


def test_no_engine_is_one_clear_error(tmp_path):
    with pytest.raises(EngineError) as failure:
        ContainerExecutor(tmp_path, docker_host=f"unix://{tmp_path}/none.sock")
    assert "\n" not in str(failure.value)
    assert str(failure.value).startswith(f"cannot reach the container engine at unix://{tmp_path}/none.sock")


def test_a_cancelled_image_build_stops_reading_at_once(podman_api, base_image, tmp_path):
    """A build whose prepare was cancelled (a newer commit, a stop) must not run on in its
    thread: BuildCancel cuts its API stream and the thread returns at once with "cancelled",
    while the RUN step still runs. (Docker then stops the build, its client having gone away;
    podman's compat API does not, podman PR #10295: the build runs to its end there, and
    its image is pruned with the other unkept versions. This test ends the RUN step itself.)"""
    from supervisor.execute.executors.container import BuildCancel

    executor = ContainerExecutor(tmp_path / "state", docker_host=podman_api)
    marker = f"{os.getpid() % 1000 + 4000}"  # a sleep length no other test uses: finds its process
    write(tmp_path / "app" / "Dockerfile", f'FROM {base_image["tag"]}\nRUN echo building; sleep {marker}\n')
    output: list[bytes] = []
    cancel = BuildCancel()
    outcome: list[BaseException | str] = []

    def build() -> None:
        try:
            outcome.append(executor.build_version("app", "v1", tmp_path / "app", on_output=output.append,
                                                  cancel=cancel))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    def sleepers() -> list:
        import psutil

        found = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if cmdline[-1:] == [marker] and any("sleep" in part for part in cmdline):
                found.append(process)
        return found

    thread = threading.Thread(target=build)
    thread.start()
    try:
        wait_until(lambda: b"building" in b"".join(output), timeout=60, message="the RUN step running")
        wait_until(sleepers, timeout=20, message="the RUN step's sleep on the host")
        started = time.monotonic()
        cancel.cancel()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the build thread kept reading after the cancel"
        figure("image build cancel to thread end", time.monotonic() - started)
        assert isinstance(outcome[0], ImageBuildError) and "cancelled" in str(outcome[0])
        assert sleepers(), "the RUN step ended before the cancel was seen: the test proves nothing"
    finally:
        cancel.cancel()
        thread.join(timeout=30)
        for process in sleepers():
            process.kill()
        executor.close()


@pytest.mark.parametrize("plant", ["symlinked folder", "symlinked file"])
def test_log_cursors_are_never_written_outside_the_state_dir(podman_engine, tmp_path, plant):
    """Security rule "nothing written outside STATE_DIR": a symlink planted as
    ``STATE_DIR/containers`` or as a cursor file, or a container id that is not an engine's
    hex id (``..``, ``/``), never makes the cursor of a container's logs land elsewhere."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("theirs")
    cid = "ab" * 32
    if plant == "symlinked folder":
        (state / "containers").symlink_to(outside)
    else:
        (state / "containers").mkdir(mode=0o700)
        (state / "containers" / f"{cid}.json").symlink_to(victim)
    executor = ContainerExecutor(state, docker_host=podman_engine)
    try:
        for bad in (f"../../outside/{cid}", f"/{cid}", "..", "AB" * 32, cid):
            executor.cursors[bad] = {"stdout": 7}
            executor._save_cursor(bad)
            assert executor._load_cursor(bad) in ({}, {"stdout": 7})
        assert sorted(p.name for p in outside.iterdir()) == ["victim"] and victim.read_text() == "theirs"
        assert not (tmp_path / f"{cid}.json").exists() and not Path(f"/{cid}.json").exists()
        if plant == "symlinked file":  # the planted link was replaced by our own file, not written through
            entry = state / "containers" / f"{cid}.json"
            assert not entry.is_symlink() and json.loads(entry.read_text()) == {"stdout": 7}
            assert executor._load_cursor(cid) == {"stdout": 7}
    finally:
        executor.close()
