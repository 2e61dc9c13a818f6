"""The built-in triggers are notifiers for updates of go-micro's shape (an input the engine
reads), the same shape as a caller's own notifier: one way in for new versions."""

import threading

from supervisor.observe.events import EventType, UpdateNotifier, Updates
from supervisor.runtimes.base import Notifier
from supervisor.triggers.watch import GitPoller, SourceWatcher


def test_the_poller_and_the_watcher_are_update_notifiers_like_a_callers():
    for kind in (GitPoller, SourceWatcher, Notifier):
        assert issubclass(kind, UpdateNotifier)


def test_updates_are_read_in_order_and_the_stream_ends_at_close():
    updates = Updates()
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(updates.notify()))
    reader.start()
    updates.update("api", "abc123", revision="abc123", trigger="poll")
    updates.update("web", None, trigger="edit", last_edit=1.5)
    updates.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert [(e.type, e.service, e.version, e.data.get("trigger")) for e in seen] == [
        (EventType.UPDATE, "api", "abc123", "poll"), (EventType.UPDATE, "web", None, "edit")]
    updates.update("api", "late")  # after close: dropped
    assert updates._queue.empty()
