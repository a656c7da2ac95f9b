"""Points in time given on the command line: RFC 3339, or a duration back from now (`2h`).

    2026-11-28T10:00:00Z, 2026-11-28T11:00:00+01:00, 2026-11-28 10:00:00.250Z   RFC 3339
    90s, 30m, 2h, 7d, 1w, 1h30m                                                that long ago

Pure: `now` is passed in, so the same text always gives the same answer in a test.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

EXPECTED = "expected RFC 3339 (e.g. 2026-11-28T10:00:00Z) or a duration ago (e.g. 90s, 30m, 2h, 7d)"


class BadTime(ValueError):
    """Text that is neither RFC 3339 with a time zone nor a duration."""


def parse_duration(text: str) -> timedelta | None:
    """`2h`, `1h30m`, `7d` as a timedelta; None if `text` is not a duration."""
    compact = text.strip().lower()
    if not _DURATION.match(compact):
        return None
    return timedelta(seconds=sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(compact)))


def parse_when(text: str, now: datetime) -> datetime:
    """The moment `text` names, time zone aware; raise BadTime if it names none."""
    duration = parse_duration(text)
    if duration is not None:
        return now - duration
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadTime(EXPECTED) from None
    if moment.tzinfo is None:
        raise BadTime(f"{EXPECTED}; an RFC 3339 time needs its time zone (Z or +hh:mm)")
    return moment.astimezone(UTC)


def to_millis(moment: datetime) -> int:
    """Kafka's timestamps: milliseconds since the epoch."""
    return int(moment.timestamp() * 1000)
