"""The run-once rule (supervisor.runonce) on data: when the run is over and its exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.desired import config
from supervisor.desired.model import Exit, Observed, Phase, ReplicaObserved, ServiceObserved
from supervisor.decide.runonce import RunOnceError, Until, check, exit_status, outcome

FILE = """
[services.db]
command = ["db"]
[services.migrate]
command = ["migrate"]
restart = "never"
depends_on = ["db"]
[services.test]
command = ["test"]
restart = "on-failure"
replicas = 2
depends_on = { migrate = "completed" }
[services.docs]
command = ["docs"]
restart = "never"
"""
SPECS = config.parse(FILE, Path("/tmp/services.toml")).services


def obs(name: str, *replicas: tuple[Phase, Exit | None], **kw) -> ServiceObserved:
    return ServiceObserved(name, SPECS[name], {i: ReplicaObserved(i, phase, last_exit=last)
                                               for i, (phase, last) in enumerate(replicas)}, **kw)


RUNNING = (Phase.RUNNING, None)
OK = (Phase.EXITED, Exit(code=0))


def observed(**services: ServiceObserved) -> Observed:
    return Observed(services)


@pytest.mark.parametrize("until, services, expect", [
    # nothing known yet, or jobs still running: not over
    (Until(), {}, None),
    (Until(), {"db": obs("db", RUNNING), "migrate": obs("migrate", OK), "test": obs("test", OK, RUNNING),
               "docs": obs("docs", OK)}, None),
    # every job exited 0 (the server still runs): over, 0
    (Until(), {"db": obs("db", RUNNING), "migrate": obs("migrate", OK), "test": obs("test", OK, OK),
               "docs": obs("docs", OK)}, 0),
    # one job failed while another runs: over at once, with its code
    (Until(), {"db": obs("db", RUNNING), "migrate": obs("migrate", (Phase.EXITED, Exit(code=3)))}, 3),
    # killed by signal 9: 137; a server at its start limit: its code (exit 0 still fails: 1)
    (Until(), {"docs": obs("docs", (Phase.EXITED, Exit(signal=9)))}, 137),
    (Until(), {"db": obs("db", (Phase.FAILED, Exit(code=0)))}, 1),
    (Until(), {"db": obs("db", (Phase.FAILED, Exit(code=5)))}, 5),
    # a build that failed with nothing running: 1
    (Until(), {"docs": obs("docs", build_failed=True)}, 1),
    # --exit-when docs: the others do not matter, failed or not
    (Until(("docs",)), {"docs": obs("docs", OK), "migrate": obs("migrate", (Phase.EXITED, Exit(code=3)))}, 0),
    (Until(("docs",)), {"docs": obs("docs", OK), "db": obs("db", RUNNING)}, 0),
    (Until(("docs",)), {"docs": obs("docs", RUNNING), "test": obs("test", (Phase.FAILED, Exit(code=2)), OK)}, None),
    # --exit-when test: a failed dependency (transitively) ends it
    (Until(("test",)), {"db": obs("db", (Phase.FAILED, Exit(code=4)))}, 4),
    # a held (user-stopped) job counts as finished
    (Until(("docs",)), {"docs": obs("docs", RUNNING, held=True)}, 0),
])
def test_outcome(until, services, expect):
    result = outcome(until, SPECS, observed(**services))
    assert (result.code if result is not None else None) == expect


def test_check_refuses_what_never_ends():
    check(Until(), SPECS)
    check(Until(("docs", "test")), SPECS)
    with pytest.raises(RunOnceError, match='db has restart = "always"'):
        check(Until(("db",)), SPECS)
    with pytest.raises(RunOnceError) as unknown:
        check(Until(("nope",)), SPECS)
    assert unknown.value.code == 4
    servers = config.parse('[services.a]\ncommand = ["a"]\n', Path("/tmp/s.toml")).services
    with pytest.raises(RunOnceError, match="no service can finish"):
        check(Until(), servers)


def test_exit_status_is_a_shells():
    assert [exit_status(e) for e in (Exit(code=0), Exit(code=3), Exit(signal=15), Exit(), None)] == [0, 3, 143, 1, 1]
