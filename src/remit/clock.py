"""Time is injected: the core never reads the wall clock itself."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from typing import Final, Protocol

from remit.errors import InvalidRequest

_RELATIVE: Final = re.compile(r"([0-9]{1,7})([smhdw])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_TEXT: Final = 64


class Clock(Protocol):
    """Seconds since the Unix epoch, as a float."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; for tests and replays."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, when: float) -> None:
        with self._lock:
            self._now = when


def parse_time(text: str, now: float, *, what: str = "--since") -> float:
    """A point in time: relative to ``now`` (``30m``, ``24h``, ``7d``, ``2w``, ``90s``)
    or an ISO 8601 time (UTC when it names no zone). Raises ``InvalidRequest``."""
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_TEXT:
        raise InvalidRequest(f"{what} must be a duration or an ISO time", reason="bad_time")
    value = text.strip()
    match = _RELATIVE.fullmatch(value)
    if match is not None:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{what} must be a duration such as 7d, 24h, 30m, or an ISO time "
            "such as 2025-01-31T12:00:00Z",
            reason="bad_time",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
