"""environ: ${VAR} interpolation (docker compose rules) and a replica's environment."""

from __future__ import annotations

import os
from types import MappingProxyType

import pytest

from supervisor.desired.environ import command_argv, expand, own_environment, replica_env

ENV = {"A": "1", "EMPTY": "", "SPACED": "a b", "DOLLAR": "$x"}

EXPAND = [
    ("${A}", "1"),
    ("x${A}y${A}z", "x1y1z"),
    ("${UNSET}", ""),
    ("${EMPTY}", ""),
    ("${A:-d}", "1"),
    ("${UNSET:-d}", "d"),
    ("${EMPTY:-d}", "d"),  # ":-": unset or empty
    ("${A-d}", "1"),
    ("${UNSET-d}", "d"),
    ("${EMPTY-d}", ""),  # "-": only unset
    ("${UNSET:-}", ""),
    ("${UNSET:-a b c}", "a b c"),
    ("${SPACED}", "a b"),
    ("${DOLLAR}", "$x"),  # values are not expanded again
    ("$$", "$"),
    ("$${A}", "${A}"),
    ("$$$${A}", "$${A}"),
    ("$$${A}", "$1"),
    ("$A", "$A"),  # only the braced form
    ("100$", "100$"),
    ("${1A}", "${1A}"),
    ("${A", "${A"),
    ("no variables", "no variables"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), EXPAND, ids=[t or "empty" for t, _ in EXPAND])
def test_expand(text, expected):
    assert expand(text, ENV) == expected


BASE = {"PATH": "/bin", "HOME": "/home/app", "A": "base"}

REPLICA_ENV = [
    # (environment, replica, expected subset)
    ({}, 0, {"PATH": "/bin", "A": "base", "REPLICA": "0", "SUPERVISE_SERVICE": "api"}),
    ({"A": "service"}, 2, {"A": "service", "REPLICA": "2"}),
    ({"DATA": "${HOME}/data"}, 0, {"DATA": "/home/app/data"}),
    ({"A": "first", "B": "${A}-second"}, 0, {"A": "first", "B": "first-second"}),
    ({"NAME": "api-${REPLICA}"}, 3, {"NAME": "api-3"}),
    ({"PRICE": "$$5"}, 0, {"PRICE": "$5"}),
    ({"U": "${NOPE:-fallback}"}, 0, {"U": "fallback"}),
    # REPLICA and SUPERVISE_SERVICE come last: a service cannot override them
    ({"REPLICA": "9", "SUPERVISE_SERVICE": "other"}, 1, {"REPLICA": "1", "SUPERVISE_SERVICE": "api"}),
]


@pytest.mark.parametrize(("environment", "replica", "expected"), REPLICA_ENV, ids=[str(r[0]) for r in REPLICA_ENV])
def test_replica_env(environment, replica, expected):
    env = replica_env("api", MappingProxyType(environment), replica, base=BASE)
    assert {key: env.get(key) for key in expected} == expected


def test_replica_env_does_not_change_its_inputs():
    base, environment = dict(BASE), {"A": "x"}
    replica_env("api", environment, 0, base=base)
    assert base == BASE and environment == {"A": "x"}


def test_replica_env_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("SUPERVISE_UNIT_PROBE", "here")
    env = replica_env("api", {"X": "${SUPERVISE_UNIT_PROBE}"}, 0)
    assert env["SUPERVISE_UNIT_PROBE"] == "here" and env["X"] == "here"


ARGV = [
    # (command, shell, expected argv)
    (("python", "-m", "api", "--port", "${PORT}"), False, ["python", "-m", "api", "--port", "8000"]),
    (("echo", "${SPACED}"), False, ["echo", "a b"]),  # no word splitting
    (("echo", "${UNSET}", "x"), False, ["echo", "", "x"]),  # an empty argument stays
    (("echo", "$$PORT", "$PORT"), False, ["echo", "$PORT", "$PORT"]),
    (("echo $PORT ${PORT} && true",), True, ["/bin/sh", "-c", "echo $PORT ${PORT} && true"]),
]


@pytest.mark.parametrize(("command", "shell", "expected"), ARGV, ids=[" ".join(a[0]) for a in ARGV])
def test_command_argv(command, shell, expected):
    assert command_argv(command, shell, {"PORT": "8000", "SPACED": "a b"}) == expected


def test_own_environment_is_a_fresh_copy_that_follows_changes_to_os_environ(monkeypatch):
    """The decoded copy of os.environ is reused between replicas, but never handed out
    itself, and a change to os.environ (set, changed, removed) is in the next copy."""
    monkeypatch.setenv("SUPERVISE_TEST_OWN", "one")
    first = own_environment()
    assert first["SUPERVISE_TEST_OWN"] == "one" and first == dict(os.environ)
    first["SUPERVISE_TEST_OWN"] = "changed by a caller"
    assert own_environment()["SUPERVISE_TEST_OWN"] == "one"
    monkeypatch.setenv("SUPERVISE_TEST_OWN", "two")
    assert own_environment()["SUPERVISE_TEST_OWN"] == "two"
    assert replica_env("web", {}, 0)["SUPERVISE_TEST_OWN"] == "two"
    monkeypatch.delenv("SUPERVISE_TEST_OWN")
    assert "SUPERVISE_TEST_OWN" not in own_environment()
