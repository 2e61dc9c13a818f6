"""The state-file record is typed at the border: parsed once, validated, written back in the
format older supervise versions wrote (an upgrade adopts what they left)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.observe import state
from supervisor.execute.executors.local import ProcessRecord
from supervisor.desired.model import Backoff, Check, ServiceSpec, SourceSpec, StartLimit

#: A record as supervise wrote it before the typed records (and still writes it).
OLDER = {"service": "api", "held": False, "replicas": {"0": {
    "pid": 4242, "pgid": 4242, "create_time": 1764500000.25, "fifo": "/s/run/api.0.fifo", "cgroup": None,
    "instance": "abc", "version": "main-0123456789ab", "revision": "0123456789abcdef", "workdir": "/s/src/api/x",
    "started_at": 1764500001.0, "restarts": 2, "fingerprint": "f" * 64}},
    "command": ["python", "app.py"], "stop_signal": 15, "stop_timeout": 10.0}


def test_an_older_record_parses_and_writes_back_unchanged():
    record = state.ServiceRecord.from_dict(json.loads(json.dumps(OLDER)))
    replica = record.replicas[0]
    assert (replica.version, replica.workdir, replica.restarts, replica.runtime) == (
        "main-0123456789ab", Path("/s/src/api/x"), 2, "local")
    assert ProcessRecord.from_dict(replica.handle) == ProcessRecord(
        pid=4242, create_time=1764500000.25, pgid=4242, fifo=Path("/s/run/api.0.fifo"), instance="abc")
    assert record.to_dict() == OLDER


def test_a_container_replica_names_its_runtime():
    replica = state.ReplicaRecord(version="v", workdir=Path("/w"), runtime="container", handle={"id": "c0ffee"})
    assert state.ReplicaRecord.from_dict(replica.to_dict()) == replica


@pytest.mark.parametrize("entry, why", [
    ("nonsense", "JSON object"),
    ({"workdir": "/"}, "version"),
    ({"version": 1, "workdir": "/"}, "version"),
    ({"version": "v", "workdir": ""}, "workdir"),
    ({"version": "v", "workdir": "/", "restarts": -1}, "restarts"),
    ({"version": "v", "workdir": "/", "started_at": "yesterday"}, "started_at"),
])
def test_bad_replica_entries_are_set_aside_with_the_reason(entry, why):
    record = state.ServiceRecord.from_dict({"service": "api", "replicas": {"0": entry, "x": {}}})
    assert record.replicas == {}
    assert why in record.invalid["0"] and "index" in record.invalid["x"]


@pytest.mark.parametrize("data", [[], {"replicas": []}, {"held": "yes"}, {"service": 3}])
def test_a_record_of_the_wrong_shape_is_refused(data):
    with pytest.raises(state.RecordError):
        state.ServiceRecord.from_dict(data)


def test_a_record_of_the_wrong_shape_is_reported_unreadable(tmp_path):
    state.save(tmp_path, "api", {"service": "api", "replicas": ["0"]})
    state.save(tmp_path, "db", state.ServiceRecord.from_dict(OLDER))
    unreadable: dict[str, str] = {}
    assert set(state.load_all(tmp_path, unreadable)) == {"db"}
    assert "replicas" in unreadable["api"]


@pytest.mark.parametrize("handle", [{}, {"pid": "1", "create_time": 1.0}, {"pid": 1, "create_time": "x"},
                                    {"pid": True, "create_time": 1.0}, {"pid": 5, "create_time": 1.0, "fifo": 7}])
def test_process_records_are_checked(handle):
    with pytest.raises(state.RecordError):
        ProcessRecord.from_dict(handle)


def test_checks_are_typed_and_keep_their_table():
    check = Check.of({"kind": "exec", "exec": ["true"], "interval": 2, "retries": 1})
    assert (check.argv, check.interval, check.timeout, check.retries) == (("true",), 2.0, 1.0, 1)
    assert Check.of(check.to_dict()) == check
    for bad in ({"kind": "udp"}, {"kind": "tcp", "tcp": 80}, {"kind": "tcp", "tcp": "a:1", "retries": 0},
                {"kind": "http", "http": "http://a/", "interval": "1s"}):
        with pytest.raises(ValueError):
            Check.of(bad)



def failed_spec(**changes):
    spec = ServiceSpec(name="api", command=("app",), source=SourceSpec(kind="path", path=Path("/app")), replicas=2,
                       start_limit=StartLimit(burst=3, interval=60.0))
    return replace(spec, **changes)


def failed_key_of(spec) -> str:
    return state.failed_key(state.fingerprint(spec), spec)


@pytest.mark.parametrize("now, slots, kept", [
    ({}, 2, [0]),                                                # the very spec it failed with: still failed
    ({"command": ("app", "-v")}, 2, []),                        # what the processes are made of changed
    ({"environment": {"A": "1"}}, 2, []),
    ({"start_limit": StartLimit(burst=4, interval=60.0)}, 2, []),  # its start limit (as while running)
    ({"backoff": Backoff(initial=2.0)}, 2, []),
    ({"replicas": 0}, 0, []),                                    # scaled to zero: nothing to keep failed
])
def test_a_start_limit_failure_is_kept_for_the_same_spec_only(now, slots, kept):
    """systemd: a unit stays failed until reset-failed or a changed unit (a user start clears it
    in the driver). The record keeps it across a supervisor restart; ``still_failed`` decides."""
    mark = state.Failure(failed_key_of(failed_spec()), "v1", "r1", "/s/v1", "start limit hit: 3 starts in 60s")
    record = state.ServiceRecord(service="api", failed={0: mark, 5: mark})
    again = state.ServiceRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record  # written and read back as is
    assert sorted(again.still_failed(failed_key_of(failed_spec(**now)), slots)) == kept


def test_bad_failed_entries_are_dropped_and_older_records_have_none():
    assert state.ServiceRecord.from_dict(OLDER).failed == {}
    record = state.ServiceRecord.from_dict({"service": "api", "failed": {"0": {"version": "v"}, "x": {}, "1": 3}})
    assert record.failed == {}


@pytest.mark.parametrize("now, kept", [
    ({}, True),                                  # the file still has the spec the version failed with
    ({"command": ("app", "-v")}, False),         # the service changed in the file: deployed again
    ({"start_limit": StartLimit(burst=4, interval=60.0)}, True),  # settings applied in place: no redeploy
])
def test_a_rollback_is_kept_for_the_same_spec_only(now, kept):
    mark = state.Failure(state.fingerprint(failed_spec()), "r2-b", "r2", "/s/r2", "rolled back r2-b -> r1-b: crashed")
    record = state.ServiceRecord(service="api", rolled_back=mark)
    again = state.ServiceRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert (again.still_rolled_back(state.fingerprint(failed_spec(**now))) is not None) is kept
    assert state.ServiceRecord.from_dict({"service": "api", "rolled_back": {"version": "v"}}).rolled_back is None


def test_a_finished_job_is_kept_by_its_key_and_a_bad_entry_is_dropped():
    from supervisor.observe.state import CompletedReplica, ServiceRecord

    mark = CompletedReplica("k1", code=0, at=1.5, version="v1", revision="r", workdir="/w")
    record = ServiceRecord("migrate", completed={0: mark, 2: CompletedReplica("k1", signal=9)})
    again = ServiceRecord.from_dict(record.to_dict())
    assert again.completed == record.completed
    assert again.still_completed("k1", slots=1) == {0: mark}  # index 2 is past the replica count
    assert again.still_completed("k2", slots=3) == {}  # another spec: the job runs again
    data = record.to_dict()
    data["completed"]["1"] = {"key": "", "code": "x"}
    data["completed"]["x"] = {"key": "k1"}
    assert set(ServiceRecord.from_dict(data).completed) == {0, 2}
    assert "completed" not in ServiceRecord("idle").to_dict()  # the older format when there is none
