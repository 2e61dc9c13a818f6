"""Our own log lines under journald: ``<N>`` syslog priority prefixes (sd-daemon(3)) when
``$JOURNAL_STREAM`` names stderr, plain ``supervise |`` lines otherwise. stderr here is a real
file (what journald's stream would be to us); its device and inode are what systemd would set."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from supervisor import cli


@pytest.fixture
def stderr_file(tmp_path, monkeypatch):
    """A real file to stand in for stderr; gives back (stream, what was written so far).
    Each test points sys.stderr at it itself: pytest's capture resets sys.stderr between a
    fixture's setup and the test."""
    path = tmp_path / "stderr"
    stream = open(path, "w")
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logger = logging.getLogger("supervise")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield stream, lambda: (stream.flush(), path.read_text())[1]
    logger.handlers[:], logger.level, logger.propagate = saved
    stream.close()


def emit() -> None:
    log = logging.getLogger("supervise")
    log.debug("details")
    log.info("started web[0]")
    log.warning("state_dir changes take effect at the next start")
    log.error("config not applied:\nservices.toml:3:1: bad")


def test_priority_prefix_on_every_line_when_journal_stream_is_our_stderr(stderr_file, monkeypatch):
    stream, written = stderr_file
    info = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    monkeypatch.setattr(sys, "stderr", stream)
    cli.setup_logging(verbose=True)
    emit()
    assert written().splitlines() == [
        "<7>details",
        "<6>started web[0]",
        "<4>state_dir changes take effect at the next start",
        "<3>config not applied:",
        "<3>services.toml:3:1: bad",
    ]


def test_plain_lines_without_journal_stream(stderr_file, monkeypatch):
    stream, written = stderr_file
    monkeypatch.setattr(sys, "stderr", stream)
    cli.setup_logging()
    emit()
    lines = written().splitlines()
    assert lines[0] == "supervise | started web[0]"  # debug is off without -v
    assert not any(line.startswith("<") for line in lines)


def test_an_inherited_journal_stream_that_is_not_our_stderr_is_ignored(stderr_file, monkeypatch):
    """A service of a supervise under systemd inherits JOURNAL_STREAM, but its stderr is its
    log file: the device:inode pair does not match, so no prefixes (systemd.exec(5))."""
    stream, written = stderr_file
    info = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
    monkeypatch.setattr(sys, "stderr", stream)
    cli.setup_logging()
    emit()
    assert written().splitlines()[0] == "supervise | started web[0]"
