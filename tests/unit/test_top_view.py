"""The pure parts of ``supervise top``: cells, banner, order line, advancing a snapshot."""

from __future__ import annotations

import subprocess
import sys

from supervisor import top


ROW = {"service": "api", "replica": 1, "phase": "running", "pid": 42, "version": "abc-def", "uptime": 90.0,
       "restarts": 2, "last_exit": "exit 1", "ready": True, "held": False, "message": "", "cpu": 1.25,
       "rss": 5 * 1024 * 1024}


def test_cells_follow_the_columns():
    assert top.cells(ROW) == ("api", "1", "running", "42", "abc-def", "1m30s", "2", "exit 1", "yes", "1.2%",
                              "5.0M", "")
    empty = {**ROW, "replica": None, "pid": None, "uptime": None, "cpu": None, "rss": None, "held": True,
             "phase": "stopped", "last_exit": None, "ready": False}
    assert top.cells(empty)[1:4] == ("-", "stopped (held)", "-") and top.cells(empty)[9:11] == ("-", "-")
    assert len(top.cells(ROW)) == len(top.COLUMNS)


def test_format_bytes():
    assert [top.format_bytes(n) for n in (None, 0, 1023, 1536, 3 * 1024**3)] == ["-", "0B", "1023B", "1.5K", "3.0G"]


def test_banner_and_order():
    snap = top.Snapshot(rows=[ROW, {**ROW, "phase": "backoff"}], supervisor={"pid": 7, "uptime": 3.0})
    assert top.banner(snap) == "supervise pid 7, up 3s: 1 backoff, 1 running"
    assert "no supervisor" in top.banner(top.Snapshot(error="no supervisor is running for /x"))
    assert top.order_line([["db"], ["web", "api"], ["worker"]]) == "order: db -> api, web -> worker"
    assert top.order_line([]) == "order: -"


def test_advance_moves_uptimes_on_the_clients_clock():
    snap = top.Snapshot(rows=[dict(ROW)], supervisor={"pid": 7, "uptime": 10.0}, taken=1000.0)
    later = top.advance(snap)
    passed = later.taken - 1000.0
    assert abs(later.rows[0]["uptime"] - (90.0 + passed)) < 1e-6
    assert abs(later.supervisor["uptime"] - (10.0 + passed)) < 1e-6
    assert snap.rows[0]["uptime"] == 90.0  # the old snapshot is left as it was


def test_other_verbs_do_not_import_textual():
    code = "import sys, supervisor.cli, supervisor.top; print('textual' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
