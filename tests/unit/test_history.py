"""The event history files (supervisor.history): bound, rotation, numbering, a torn line."""

from __future__ import annotations

from supervisor.observe import history
from supervisor.observe.events import Event, EventType, Notifier


def test_rotation_keeps_between_half_and_all_and_numbers_go_on(tmp_path):
    state = tmp_path / "state"
    bus = Notifier()
    kept = history.History(state, keep=6)
    kept.open()
    bus.add_listener(kept.write)
    for i in range(20):
        bus.emit(EventType.STARTED, "web", None, replica=0, pid=i)
    kept.close()
    events, note = history.read(state, None)
    assert [e["seq"] for e in events] == list(range(16, 21))  # the full older file of 3, and 2
    assert note is None  # no --since: nothing asked for beyond what is kept
    _, note = history.read(state, events[0]["timestamp"] - 60)
    assert note is not None and note.startswith("events before ") and "event_history" in note
    assert history.read(state, events[0]["timestamp"])[1] is None
    assert [e["pid"] for e in events] == list(range(15, 20))
    again = history.History(state, keep=6)
    again.open()
    assert again.last_seq == 20 and again.count == 2
    again.close()


def test_a_torn_line_and_the_snapshot_bound(tmp_path):
    state = tmp_path / "state"
    kept = history.History(state)
    kept.open()
    for seq in (1, 2, 3):
        kept.write(Event(EventType.READY, "db", None, {}, timestamp=100.0 * seq, seq=seq))
    kept.close()
    with open(history.folder(state) / history.CURRENT, "ab") as f:
        f.write(b'{"type": "started", "seq": 4')  # a supervisor killed mid-write
    assert history.read(state, since=150.0) == ([e for e in history.read(state, None)[0] if e["seq"] in (2, 3)], None)
    assert history.read(state, since=0.0)[1] is None  # seq 1 is kept: nothing was let go
    assert [e["seq"] for e in history.snapshot(state, upto=2).read(None)] == [1, 2]
    assert history.read(state, None, ["web"]) == ([], None)
    assert history.read(tmp_path / "nothing", None) == ([], None)
