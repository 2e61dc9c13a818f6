"""Events as JSON lines: what `supervise events` prints reads back into the same Event."""

import json

from supervisor.observe.events import Event, EventType, Notifier


def test_json_line_round_trip():
    event = Event(EventType.EXITED, "api", "abc-123", {"replica": 1, "exit": "exit 3"}, timestamp=1.5)
    line = event.to_json()
    assert "\n" not in line
    assert json.loads(line) == {"type": "exited", "timestamp": 1.5, "service": "api", "version": "abc-123",
                                "replica": 1, "exit": "exit 3"}
    assert Event.from_dict(json.loads(line)) == event


def test_listeners_see_every_event_until_close():
    bus = Notifier()
    seen: list[Event] = []
    bus.add_listener(seen.append)
    bus.emit(EventType.CREATE, "db")
    bus.close()
    bus.emit(EventType.DELETE, "db")
    assert [e.type for e in seen] == [EventType.CREATE]
