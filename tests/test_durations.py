"""Durations as batch scripts write them: parse_duration and format_duration."""

from __future__ import annotations

import pytest

from qlam_hpc._durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("3d", 259200),
        ("1.5h", 5400),
        ("0s", 0),
    ],
)
def test_each_unit(text, seconds):
    """Each unit suffix s, m, h, d scales the number before it."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1d12h", 129600),
        ("1h30m", 5400),
        ("2m30s", 150),
        ("1d1h1m1s", 90061),
        ("30m1h", 5400),
    ],
)
def test_combined_units_add_up(text, seconds):
    """Several number-unit pairs in one duration are summed."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("0", 0), ("2.5", 2.5), ("1e3", 1000)])
def test_bare_number_is_seconds(text, seconds):
    """A number without a unit is a number of seconds."""
    assert parse_duration(text) == seconds


def test_case_and_surrounding_whitespace_are_ignored():
    """``" 2H "`` from a sloppy batch script still means two hours."""
    assert parse_duration(" 2H ") == 7200
    assert parse_duration("1D12H\n") == 129600


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "5x",
        "h",
        "m5",
        "1h30",
        "1 h",
        "1h-5m",
        "0x10",
        "2w",
    ],
)
def test_garbage_is_rejected(text):
    """Text that is not a duration raises ValueError naming what was wrong."""
    with pytest.raises(ValueError, match=r"(invalid|empty) duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-1", "-90", "-0.5"])
def test_negative_is_rejected(text):
    """A negative duration raises ValueError that quotes the input."""
    with pytest.raises(ValueError, match="must be a finite number"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["inf", "-inf", "Infinity", "nan", "NaN", "1e400"])
def test_non_finite_is_rejected(text):
    """inf, nan and numbers that overflow to inf raise ValueError instead of becoming a timeout."""
    with pytest.raises(ValueError, match="finite"):
        parse_duration(text)


def test_error_message_quotes_the_input():
    """The error message shows the text the user wrote, so they can find it in their script."""
    with pytest.raises(ValueError, match="'5 minutes'"):
        parse_duration("5 minutes")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (42, "42s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (3600, "1h"),
        (86400, "1d"),
        (129600, "1d12h"),
        (90061, "1d1h"),
        (3599, "59m59s"),
        (7199, "2h"),
    ],
)
def test_format_duration(seconds, text):
    """Seconds are shown in their two largest units, zero parts left out."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86399, "1d"),
        (86399.4, "1d"),
        (15 * 86400 - 3, "15d"),
        (3 * 3600 - 1, "3h"),
        (23 * 3600 + 29 * 60 + 59, "23h30m"),
    ],
)
def test_a_second_short_of_a_round_duration_reads_as_that_duration(seconds, text):
    """A 24 h token read a second after it was issued is "1d", as the login's 15 days are "15d":
    one format everywhere, never "23h59m59s" beside "1d"."""
    assert format_duration(seconds) == text


def test_format_duration_rounds_to_whole_seconds():
    """Fractions of a second are rounded, not truncated."""
    assert format_duration(41.6) == "42s"
    assert format_duration(59.6) == "1m"


def test_format_negative_duration():
    """A negative duration (an already expired token) keeps its sign."""
    assert format_duration(-90) == "-1m30s"
    assert format_duration(-5) == "-5s"


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 3599, 3600, 86400, 129600, 90000, 31622400])
def test_format_then_parse_round_trips(seconds):
    """What format_duration writes, parse_duration reads back: exactly, for a duration of two units."""
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("seconds", [86399, 90061, 1234567, 45296])
def test_format_then_parse_is_within_half_of_the_smaller_unit(seconds):
    """Longer durations are rounded to their second unit: off by at most half of it."""
    text = format_duration(seconds)
    largest = next(c for c in text if c.isalpha())
    half_of_the_next_unit = {"d": 1800, "h": 30, "m": 0.5, "s": 0.5}[largest]
    assert abs(parse_duration(text) - seconds) <= half_of_the_next_unit


@pytest.mark.parametrize("text", ["42s", "1m", "1h30m", "1d12h", "2m30s"])
def test_parse_then_format_round_trips(text):
    """A duration written in canonical form is formatted back to the same text."""
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["1.2.3s", ".s", "1..5m"])
def test_malformed_number_before_unit_gets_a_readable_message(text):
    """A malformed number before a unit gets the same readable message, quoting the input."""
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
