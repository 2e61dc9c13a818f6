"""Self-update's pure parts and hand-overs, in one process: the ``[supervise] self`` key, the
hand-over variables, version labels, and the state lock and control socket taken over through
fds as after an exec (no process is started here: the exec itself is in
tests/integration/test_self_update.py and test_upgrade_boot.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import textwrap
from pathlib import Path

import pytest

from supervisor import selfupdate
from supervisor.desired import config
from supervisor.desired.config import ConfigError
from supervisor.control.server import ControlServer
from supervisor.engine import AlreadyRunning, StateLock
from supervisor.desired.model import SourceSpec


def load(tmp_path: Path, table: str):
    path = tmp_path / "services.toml"
    path.write_text(textwrap.dedent(table).lstrip() + '\n[services.a]\ncommand = ["true"]\n')
    return config.load(path)


def errors(tmp_path: Path, table: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, table)
    return [str(d) for d in caught.value.diagnostics]


def test_self_key_takes_a_git_or_a_pip_source(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    settings = load(tmp_path, '[supervise]\nself = { git = "./repo", ref = "main", poll = "1h" }').settings
    assert settings.self_source == SourceSpec(kind="git", url=str(repo), ref="main", poll=3600.0)
    settings = load(tmp_path, '[supervise]\nself = { pip = "supervise>=0.2", index = "https://i.example/simple" }').settings
    assert settings.self_source == SourceSpec(kind="pip", requirement="supervise>=0.2", index="https://i.example/simple")
    assert load(tmp_path, "").settings.self_source is None


@pytest.mark.parametrize(("table", "message"), [
    ('[supervise]\nself = "https://e.example/s.git"\n', '2:1: "self" must be a table { git = "URL or path"'),
    ('[supervise]\nself = { image = "supervise:1" }\n', '"self" must be a table'),
    ('[supervise]\nself = { git = "https://e.example/s.git", reff = "main" }\n', 'unknown key "reff" (did you mean "ref"?)'),
    ('[supervise]\nself = { pip = "supervise @ https://e.example/s.whl" }\n', "names a URL"),
    ('[supervise]\nself = { git = "https://e.example/s.git", poll = "often" }\n', '"poll": bad duration'),
])
def test_self_key_mistakes_are_located(tmp_path, table, message):
    found = errors(tmp_path, table)
    assert len(found) == 1 and message in found[0], found
    assert found[0].startswith(f"{tmp_path / 'services.toml'}:2:")


def test_handover_variables_are_taken_out_of_the_environment():
    env = {"PATH": "/bin", "SUPERVISE_READY_FD": "7", "SUPERVISE_BOOT": "{}", "SUPERVISE_HANDOVER": json.dumps({
        "lock": [5, 6], "control": 9, "revision": "abc", "from": {"version": "0.1.0", "revision": None, "id": "x"},
        "bad": ["def", 3]})}
    handover = selfupdate.take_handover(env)
    assert env == {"PATH": "/bin"}  # services inherit the supervisor's environment: nothing of ours
    assert selfupdate.ORIGINAL_ENV == {"PATH": "/bin"}
    assert (handover.lock, handover.control, handover.revision, handover.ready_fd) == ((5, 6), 9, "abc", 7)
    assert handover.upgraded_from == {"version": "0.1.0", "revision": None, "id": "x"}
    assert handover.bad == ["def"] and handover.failed is None


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", json.dumps({"lock": [0, 1], "control": True, "bad": None})])
def test_a_malformed_handover_is_ignored(raw):
    handover = selfupdate.take_handover({"SUPERVISE_HANDOVER": raw})
    assert (handover.lock, handover.control, handover.revision, handover.bad) == (None, None, None, [])


def test_labels():
    assert selfupdate.label("0.1.1", None) == "0.1.1"
    assert selfupdate.label("0.2.0", "0.2.0") == "0.2.0"
    assert selfupdate.label("0.1.1", "1a2b3c4d5e6f7a8b9c0d") == "0.1.1 (git 1a2b3c4d5e6f)"


def test_the_state_lock_is_taken_over_through_its_fds_and_garbage_is_refused(tmp_path):
    first = StateLock(tmp_path / "state")
    first.acquire()
    try:
        fds = first.handover_fds()
        assert fds is not None
        # what an exec'd supervise of the same pid gets: the same open fds, checked, then held
        second = StateLock(tmp_path / "state")
        second.inherited = fds
        second.acquire()
        assert second.handover_fds() == fds and not os.get_inheritable(fds[0])
        second.anchor.detach()  # (one process here: let `first` close them)
        os.close(second.dir_fd)
        # fds that are not this state dir's lock are not taken (and not closed): the usual way
        other = tmp_path / "other"
        other.write_text("")
        with open(other) as f:
            third = StateLock(tmp_path / "state")
            third.inherited = (f.fileno(), f.fileno())
            with pytest.raises(AlreadyRunning):
                third.acquire()
            os.fstat(f.fileno())  # still open
    finally:
        first.release()


def test_the_control_socket_is_handed_over_and_a_client_meanwhile_waits(tmp_path):
    async def ping(request, writer):
        return {"pid": os.getpid(), "who": request.get("who")}

    async def body():
        path = tmp_path / "control.sock"
        first = ControlServer(path, {"ping": ping})
        await first.start()
        fd = await first.hand_over()
        assert fd is not None and path.exists()
        # a client connects between the two servers: it waits in the backlog, not refused
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        client.connect(str(path))
        client.sendall(b'{"verb": "ping", "who": "between"}\n')
        second = ControlServer(path, {"ping": ping}, inherited=fd)
        await second.start()
        reader, writer = await asyncio.open_unix_connection(sock=client)
        reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert reply == {"ok": True, "pid": os.getpid(), "who": "between"}
        writer.close()
        await second.close()
        assert not path.exists()

    asyncio.run(body())


def test_an_inherited_fd_that_is_not_our_socket_is_left_alone(tmp_path):
    async def body():
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(tmp_path / "elsewhere.sock"))
        other.listen()
        server = ControlServer(tmp_path / "control.sock", {}, inherited=other.fileno())
        await server.start()  # listens on its own path anew
        assert (tmp_path / "control.sock").exists()
        assert other.fileno() >= 0 and other.getsockname() == str(tmp_path / "elsewhere.sock")
        await server.close()
        other.close()

    asyncio.run(body())


def test_failed_revisions_are_kept_in_the_state_dir(tmp_path):
    state = tmp_path / "state"
    assert selfupdate.load_failed(state) == set()  # none yet (no folder either)
    selfupdate.save_failed(state, {"b" * 40, "a" * 40})
    assert selfupdate.load_failed(state) == {"a" * 40, "b" * 40}
    (state / "self" / "failed.json").write_text("{not json")
    assert selfupdate.load_failed(state) == set()  # unreadable: as if none
