"""The dead-letter list's filters and page cursor, from a query string to topic-admin's
`Selection` (pure: the same filters `topic-admin dlq list` and `redrive` take, and the same
code matching them).

    ?error=timeout&key=p1-*&since=2h&until=2026-12-07T10:00:00Z&attempts=5&after=0:120,1:98
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from topic_admin_service.redrive import Selection
from topic_admin_service.when import BadTime, parse_when

FIELDS = ("error", "key", "since", "until", "attempts", "at")  # at: one letter, PARTITION:OFFSET


class BadFilter(ValueError):
    """A filter the console cannot use; the message names it."""


@dataclass(frozen=True)
class Filters:
    """The filters as typed (to show them again and pass them on), and what they select."""

    texts: dict[str, str] = field(default_factory=dict)  # only those given, stripped
    selection: Selection = field(default_factory=Selection)

    @property
    def any(self) -> bool:
        return bool(self.texts)

    def query(self, **more: str) -> str:
        """The query string of these filters (plus `more`), for links and forms."""
        return urlencode({**self.texts, **{k: v for k, v in more.items() if v}})


def parse_filters(params: Mapping[str, str], now: datetime) -> Filters:
    """`params` (a query string or a form) as Filters; BadFilter naming the first bad one."""
    texts = {name: str(params.get(name, "")).strip() for name in FIELDS}
    texts = {name: text for name, text in texts.items() if text}
    moments: dict[str, datetime] = {}
    for name in ("since", "until"):
        if name in texts:
            try:
                moments[name] = parse_when(texts[name], now)
            except BadTime as error:
                raise BadFilter(f"{name}: {texts[name]!r}: {error}") from None
    if "since" in moments and "until" in moments and moments["since"] >= moments["until"]:
        raise BadFilter("since: must be before until")
    attempts = None
    if "attempts" in texts:
        if not texts["attempts"].isdigit() or len(texts["attempts"]) > 6:
            raise BadFilter(f"attempts: {texts['attempts']!r}: expected a whole number, e.g. 5")
        attempts = int(texts["attempts"])
    at = None
    if "at" in texts:
        position = parse_cursor(texts["at"], name="at")
        if len(position) != 1:
            raise BadFilter(f"at: {texts['at']!r}: expected one PARTITION:OFFSET, e.g. 0:42")
        at = next(iter(position.items()))
    if len(texts.get("error", "")) > 500 or len(texts.get("key", "")) > 500:
        raise BadFilter("error, key: at most 500 characters")
    return Filters(texts, Selection(error_contains=texts.get("error"), key_pattern=texts.get("key"),
                                    since=moments.get("since"), until=moments.get("until"),
                                    attempts=attempts, at=at))


def parse_cursor(text: str | None, name: str = "after") -> dict[int, int]:
    """`0:120,1:98` (per DLQ partition, the offset the page starts at) as a dict; "" is the
    first page. BadFilter for anything else."""
    cursor: dict[int, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        partition, sep, offset = part.strip().partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit() or len(partition) > 6 \
                or len(offset) > 19:
            raise BadFilter(f"{name}: {part.strip()!r}: expected PARTITION:OFFSET pairs, e.g. 0:120,1:98")
        cursor[int(partition)] = int(offset)
    return cursor


def format_cursor(cursor: Mapping[int, int]) -> str:
    return ",".join(f"{partition}:{offset}" for partition, offset in sorted(cursor.items()))
