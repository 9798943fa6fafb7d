"""The kernel's time parsing: relative durations and ISO times (``remit.clock.parse_time``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from remit.clock import parse_time
from remit.errors import InvalidRequest

NOW = 1_800_000_000.0


def test_parse_time_relative_and_iso() -> None:
    assert parse_time("7d", NOW) == NOW - 7 * 86400
    assert parse_time("24h", NOW) == NOW - 86400
    assert parse_time("30m", NOW) == NOW - 1800
    assert parse_time("90s", NOW) == NOW - 90
    assert parse_time("2w", NOW) == NOW - 14 * 86400
    assert parse_time(" 1d ", NOW) == NOW - 86400
    expected = datetime(2025, 1, 31, 12, tzinfo=UTC).timestamp()
    assert parse_time("2025-01-31T12:00:00Z", NOW) == expected
    assert parse_time("2025-01-31T12:00:00", NOW) == expected  # UTC when no zone
    assert parse_time("2025-01-31T13:00:00+01:00", NOW) == expected


@pytest.mark.parametrize("text", ["", "  ", "7", "d7", "7 d", "-1d", "7y", "yesterday", "x" * 80])
def test_parse_time_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_time(text, NOW, what="--since")
    assert caught.value.reason == "bad_time" and "--since" in caught.value.message
