"""sd_notify(3) against a real AF_UNIX datagram socket: a path and an abstract address."""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from supervisor.observe.notify import SdNotify


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    """A bound SOCK_DGRAM socket and the ``$NOTIFY_SOCKET`` string that reaches it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"supervise-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(2.0)  # bounds every recv below
    yield sock, address
    sock.close()


def fields(sock: socket.socket) -> list[str]:
    return sock.recv(65536).decode().split("\n")


def test_each_message_is_one_datagram_of_key_value_lines(listener):
    sock, address = listener
    sd = SdNotify(address)
    assert sd.enabled
    assert sd.ready()
    assert fields(sock) == ["READY=1"]
    assert sd.status("3 running,\n1 backoff")
    assert fields(sock) == ["STATUS=3 running, 1 backoff"]
    assert sd.ready("all up")
    assert fields(sock) == ["READY=1", "STATUS=all up"]
    assert sd.stopping()
    assert fields(sock) == ["STOPPING=1"]
    assert sd.watchdog()
    assert fields(sock) == ["WATCHDOG=1"]


def test_reloading_carries_the_monotonic_clock_in_microseconds(listener):
    sock, address = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert SdNotify(address).reloading()
    reloading, stamp = fields(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    key, value = stamp.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_without_notify_socket_everything_is_a_no_op():
    sd = SdNotify.from_environ({})
    assert not sd.enabled
    assert not sd.ready() and not sd.status("x") and not sd.watchdog()
    assert sd.watchdog_interval() is None


def test_a_vanished_socket_is_not_an_error(tmp_path):
    sd = SdNotify(str(tmp_path / "gone.sock"))
    assert sd.ready() is False


def test_from_environ_can_remove_the_variables_children_would_inherit():
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()), "HOME": "/root"}
    sd = SdNotify.from_environ(env, unset=True)
    assert env == {"HOME": "/root"}
    assert sd.address == "@x"
    assert sd.watchdog_interval() == 15.0


@pytest.mark.parametrize("usec, pid, expected", [
    ("30000000", None, 15.0),          # WatchdogSec=30 -> ping every 15 s
    ("30000000", "self", 15.0),
    ("30000000", "1", None),           # the watchdog is meant for another process
    ("0", None, None),
    ("soon", None, None),
    (None, None, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only(usec, pid, expected):
    pid = str(os.getpid()) if pid == "self" else pid
    assert SdNotify("@x", usec, pid).watchdog_interval() == expected
