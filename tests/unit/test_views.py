"""views: status rows, the STATUS line and dependency conditions as pure functions of Observed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.control.verbs.status import as_asked
from supervisor.observe import views
from supervisor.desired.model import (
    Condition, Exit, Observed, Phase, ReplicaObserved, ServiceObserved, ServiceSpec, SourceSpec,
)

SPEC = ServiceSpec(name="api", command=("true",), source=SourceSpec(kind="path", path=Path("/")), replicas=2)


def service(*replicas: ReplicaObserved, **fields) -> ServiceObserved:
    return ServiceObserved(name="api", spec=fields.pop("spec", SPEC), replicas={r.index: r for r in replicas}, **fields)


def up(index: int, ready: bool = True, phase: Phase = Phase.RUNNING) -> ReplicaObserved:
    return ReplicaObserved(index=index, phase=phase, pid=100 + index, version="abc-123", started_at=1000.0,
                           ready=ready, running=True)


def test_status_rows_are_computed_from_observed_alone():
    observed = Observed({"api": service(up(0), up(1, ready=False, phase=Phase.STARTING), message="rolled back")})
    rows = views.status_rows(observed, [], now=1010.0)
    assert [(r["replica"], r["phase"], r["uptime"], r["ready"], r["message"]) for r in rows] == [
        (0, "running", 10.0, True, "rolled back"), (1, "starting", None, False, "rolled back")]
    assert views.status_rows(observed, ["other"], now=0.0) == []


@pytest.mark.parametrize("replica, phase, pid, ok", [
    (up(0), "running", 100, True),
    (up(0, phase=Phase.READY), "ready", 100, True),
    (replace(up(0), unknown="cluster unreachable: state unknown (retrying)"), "unknown", None, False),
    (replace(up(0), phase=Phase.BACKOFF, pid=None), "backoff", None, False),
    (replace(up(0), phase=Phase.EXITED, pid=None, last_exit=Exit(code=0)), "exited", None, True),
])
def test_a_replica_that_cannot_be_observed_is_unknown_and_not_as_asked(replica, phase, pid, ok):
    """A Deployment whose cluster is out of reach is not "running" (what it last was): its row
    says unknown and why, with no pid, and ``status`` exits 3 (README's exit codes)."""
    (row,) = views.status_rows(Observed({"api": service(replica)}), [], now=1010.0)
    assert (row["phase"], row["pid"]) == (phase, pid)
    assert as_asked([row]) is ok
    if phase == "unknown":
        assert row["message"].startswith("cluster unreachable") and not row["ready"]


def test_a_service_without_replicas_is_one_row():
    observed = Observed({"api": service(phase=Phase.BUILD_FAILED, build_failed=True, message="build failed")})
    (row,) = views.status_rows(observed, ["api"], now=0.0)
    assert (row["replica"], row["phase"], row["message"], row["desired"]) == (None, "build-failed", "build failed", 2)


def test_the_status_line_counts_phases_in_life_cycle_order():
    observed = Observed({"api": service(up(0), up(1, phase=Phase.BACKOFF)),
                         "db": ServiceObserved(name="db", spec=SPEC, phase=Phase.FETCHING)})
    assert views.summarize(observed) == "1 fetching, 1 running, 1 backoff"
    assert views.summarize(Observed()) == "no services"


CONDITIONS = [
    ("all up: started", service(up(0), up(1)), Condition.STARTED, True),
    ("one missing", service(up(0)), Condition.STARTED, False),
    ("not ready yet", service(up(0), up(1, ready=False)), Condition.READY, False),
    ("held never gets there", service(up(0), up(1), held=True), Condition.STARTED, None),
    ("failed never gets there", service(up(0), up(1, phase=Phase.FAILED)), Condition.STARTED, None),
    ("completed", service(ReplicaObserved(0, Phase.EXITED, last_exit=Exit(code=0)),
                          ReplicaObserved(1, Phase.EXITED, last_exit=Exit(code=0))), Condition.COMPLETED, True),
    ("completed badly", service(ReplicaObserved(0, Phase.EXITED, last_exit=Exit(code=1)), up(1)),
     Condition.COMPLETED, None),
]


def test_reached_follows_compose_conditions():
    for name, obs, condition, expected in CONDITIONS:
        assert views.reached(obs, condition) is expected, name


def test_not_up_splits_waiting_from_stuck():
    desired = {"api": SPEC, "db": SPEC, "new": SPEC}
    observed = Observed({"api": service(up(0), up(1)), "db": service(up(0), held=True, phase=Phase.STOPPED)})
    assert views.not_up(desired, observed) == (["new (pending)"], ["db (stopped)"])


def test_a_service_the_engine_has_not_taken_up_yet_is_pending():
    """Right after start-up (before the first plan) status lists what the file names as
    pending, never an empty table that reads as "all running"."""
    observed = Observed({"api": service(up(0))})
    rows = views.status_rows(observed, [], now=1010.0, listed=["api", "worker"])
    assert [(r["service"], r["phase"], r["message"]) for r in rows] == [
        ("worker", "pending", "not started yet"), ("api", "running", "")]
    assert views.status_rows(observed, ["api"], now=0.0, listed=["api", "worker"])[0]["service"] == "api"
    assert [r["service"] for r in views.status_rows(Observed({}), ["worker"], 0.0, ["api", "worker"])] == ["worker"]


@pytest.mark.parametrize("exit, text", [
    (Exit(code=3), "exit 3"),
    (Exit(signal=9), "signal 9 (SIGKILL)"),
    (Exit(), "unknown"),                                       # adopted, died by itself: nothing known
    (Exit(stopped_by=15), "stopped by supervise (SIGTERM)"),   # adopted, stopped by us: what we sent
    (Exit(stopped_by=9), "stopped by supervise (SIGKILL)"),
])
def test_an_exit_says_what_is_known_of_it(exit, text):
    assert str(exit) == text
