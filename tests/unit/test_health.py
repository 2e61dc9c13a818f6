"""health.local_port: which ready checks reach this machine, so that who answers them can be
looked up (a start-first candidate must not be promoted on the old replica's answer)."""

from __future__ import annotations

import pytest

from supervisor.execute.health import local_port


@pytest.mark.parametrize("check, port", [
    ({"tcp": "127.0.0.1:8661"}, 8661),
    ({"tcp": "localhost:5432"}, 5432),
    ({"tcp": "[::1]:9000"}, 9000),
    ({"tcp": "0.0.0.0:80"}, 80),
    ({"http": "http://127.0.0.1:8661/health"}, 8661),
    ({"http": "http://localhost/"}, 80),
    ({"http": "https://127.0.0.1/"}, 443),
    ({"http": "http://127.0.0.1:${PORT}/"}, 7000),  # expanded with the replica's env
    ({"tcp": "db.example.org:5432"}, None),  # a name: not resolved on every probe
    ({"tcp": "192.0.2.10:5432"}, None),  # TEST-NET-1: no interface of ours has it
    ({"http": "http://example.org/"}, None),
    ({"exec": ["true"]}, None),
    ({"tcp": "127.0.0.1:notaport"}, None),
])
def test_local_port(check, port):
    (kind, target), = check.items()
    assert local_port({"kind": kind, kind: target}, {"PORT": "7000"}) == port
