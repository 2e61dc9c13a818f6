"""durations: "500ms", "1m30s", numbers of seconds; and the short human form."""

from __future__ import annotations

import math

import pytest

from supervisor.cli import join_dashed_values
from supervisor.desired.durations import format_duration, parse_duration, parse_since

PARSE = [
    ("500ms", 0.5),
    ("10s", 10.0),
    ("1m30s", 90.0),
    ("1m", 60.0),
    ("2h", 7200.0),
    ("1d", 86400.0),
    ("1h1m1s", 3661.0),
    ("1.5s", 1.5),
    ("0.25m", 15.0),
    ("250us", 0.00025),
    ("1s500ms", 1.5),
    ("0s", 0.0),
    (" 1m 30s ", 90.0),
    (5, 5.0),
    (0, 0.0),
    (0.25, 0.25),
    (86400, 86400.0),
]


@pytest.mark.parametrize(("value", "expected"), PARSE, ids=repr)
def test_parse(value, expected):
    result = parse_duration(value)
    assert result == pytest.approx(expected)
    assert isinstance(result, float)


BAD = [
    ("", "empty duration"),
    ("   ", "empty duration"),
    ("10", "bad duration"),
    ("1m30", "bad duration"),
    ("1x", "bad duration"),
    ("s", "bad duration"),
    ("ms", "bad duration"),
    ("-1s", "bad duration"),
    ("1.s", "bad duration"),
    (".5s", "bad duration"),
    ("10S", "bad duration"),
    ("1e3s", "bad duration"),
    ("ten seconds", "bad duration"),
    (-1, "must not be negative"),
    (-0.5, "must not be negative"),
    (True, "got a boolean"),
    (False, "got a boolean"),
    (None, "got NoneType"),
    ([1], "got list"),
    (math.nan, "finite"),
    (math.inf, "finite"),
    (-math.inf, "finite"),
]


@pytest.mark.parametrize(("value", "message"), BAD, ids=repr)
def test_parse_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


FORMAT = [
    (0, "0ms"),
    (0.85, "850ms"),
    (0.001, "1ms"),
    (1, "1s"),
    (12.9, "12s"),
    (59.99, "59s"),
    (60, "1m0s"),
    (184, "3m4s"),
    (3599, "59m59s"),
    (3600, "1h0m"),
    (7500, "2h5m"),
    (86399, "23h59m"),
    (86400, "1d0h"),
    (90000, "1d1h"),
]


@pytest.mark.parametrize(("seconds", "expected"), FORMAT, ids=repr)
def test_format(seconds, expected):
    assert format_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [1, 10, 59, 60, 90, 184, 3599])
def test_format_parses_back(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value, expected", [("5m", 300.0), ("-5m", 300.0), (" -1h30m", 5400.0), ("-0.5s", 0.5)])
def test_since_takes_a_duration_with_or_without_a_minus(value, expected):
    """``--since -5m`` means five minutes ago, as journalctl writes it; ``5m`` the same."""
    assert parse_since(value) == expected


@pytest.mark.parametrize("value", ["-", "--5m", "-5x", "5x"])
def test_a_bad_since_is_one_line_naming_the_value_as_given(value):
    with pytest.raises(ValueError) as error:
        parse_since(value)
    assert "\n" not in str(error.value) and repr(value.strip()) in str(error.value)


@pytest.mark.parametrize("argv, joined", [
    (["events", "--since", "-5m"], ["events", "--since=-5m"]),
    (["logs", "-f", "--since", "-.5s", "api"], ["logs", "-f", "--since=-.5s", "api"]),
    (["events", "--since", "5m"], ["events", "--since", "5m"]),            # nothing to join
    (["events", "--since", "-c", "x.toml"], ["events", "--since", "-c", "x.toml"]),  # an option, left to argparse
    (["exec", "api", "--", "tool", "--since", "-5m"], ["exec", "api", "--", "tool", "--since", "-5m"]),
    (["events", "--since"], ["events", "--since"]),
])
def test_a_dashed_since_value_is_joined_to_its_option(argv, joined):
    assert join_dashed_values(argv) == joined
