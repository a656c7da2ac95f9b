"""What `topic-admin redrive` decides, as pure functions: which dead letters move, with which
headers, to which partition, and how the moves are recorded in the redrive ledger.

The Kafka side (reading the DLQ, the transactions) is in `redriver.py`.

A dead letter is one of:
- already re-driven: a committed transaction of an earlier run moved it (the ledger says so);
- skipped by the filter: `--error-contains`, `--key`, `--since`/`--until` do not all match;
- left because of `--max-redrives N`: it has already been re-driven N times;
- moved (or, with `--dry-run`, would be moved).
The first `--limit N` moves end the run.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from jobpipe.delays import DUE_HEADER, PARKED_HEADERS, epoch_ms
from jobpipe.redrive_ledger import offset_ranges

DLQ_HEADER_PREFIX = "dlq."
REDRIVE_HEADER_PREFIX = "redrive."
REDRIVE_COUNT = "redrive.count"
REDRIVE_SOURCE = "redrive.source"
NO_ERROR = "(no dlq.error header)"

Header = tuple[str, bytes | None]


class KafkaMessage(Protocol):
    """The parts of a confluent_kafka.Message a dead letter is read from."""

    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> str | bytes | None: ...
    def value(self) -> str | bytes | None: ...
    def headers(self) -> dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


def _as_bytes(data: str | bytes | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


@dataclass(frozen=True)
class DeadLetter:
    """One message of DLQ_TOPIC, with the `dlq.*` headers the consumer wrote."""

    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[Header, ...] = ()
    timestamp_ms: int | None = None  # the message's own timestamp: a fallback for dlq.failed_at

    @classmethod
    def from_message(cls, message: KafkaMessage) -> DeadLetter:
        kind, stamp = message.timestamp()
        raw = message.headers() or []
        pairs = list(raw.items()) if isinstance(raw, dict) else raw
        return cls(partition=message.partition() or 0, offset=message.offset() or 0,
                   key=_as_bytes(message.key()), value=_as_bytes(message.value()),
                   headers=tuple((name, _as_bytes(value)) for name, value in pairs),
                   timestamp_ms=stamp if kind != 0 else None)  # 0: TIMESTAMP_NOT_AVAILABLE

    def header(self, name: str) -> str | None:
        """The last value of header `name`, as text (None if absent)."""
        found = None
        for header, value in self.headers:
            if header == name:
                found = value.decode(errors="replace") if value is not None else ""
        return found

    @property
    def error(self) -> str:
        return self.header("dlq.error") or NO_ERROR

    @property
    def key_text(self) -> str:
        return self.key.decode(errors="replace") if self.key is not None else ""

    @property
    def failed_at(self) -> datetime | None:
        """When the job was given up: `dlq.failed_at`, else the message's timestamp."""
        text = self.header("dlq.failed_at")
        if text:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                moment = None
            if moment is not None:
                return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        if self.timestamp_ms is not None:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        return None

    def _number(self, header: str) -> int | None:
        text = self.header(header)
        try:
            return int(text) if text else None
        except ValueError:
            return None

    @property
    def attempts(self) -> int | None:
        """How often the handler ran before it was given up (`dlq.attempts`; 0: not a job)."""
        return self._number("dlq.attempts")

    @property
    def original_partition(self) -> int | None:
        """The jobs topic's partition it was read from (`dlq.original.partition`)."""
        return self._number("dlq.original.partition")

    @property
    def original_offset(self) -> int | None:
        return self._number("dlq.original.offset")

    @property
    def redrives(self) -> int:
        """How often this job has been re-driven before (its `redrive.count` header)."""
        text = self.header(REDRIVE_COUNT)
        try:
            return max(0, int(text)) if text else 0
        except ValueError:
            return 0


class Verdict(StrEnum):
    MOVE = "moved"
    ALREADY = "already_redriven"
    FILTERED = "skipped_by_filter"
    MAX_REDRIVES = "left_max_redrives"


@dataclass(frozen=True)
class Selection:
    """The command's filters. A dead letter moves when every given filter matches it."""

    error_contains: str | None = None  # in dlq.error, whatever the case
    error_pattern: re.Pattern[str] | None = None  # searched in dlq.error (compiled by the caller)
    key_pattern: str | None = None  # a shell-style pattern: p1-*, p?-m1[0-9]
    since: datetime | None = None  # failed at or after (inclusive)
    until: datetime | None = None  # failed before (exclusive)
    limit: int | None = None
    max_redrives: int | None = None
    original_partition: int | None = None  # the jobs topic's partition it came from
    original_offset: int | None = None  # ... and offset
    attempts: int | None = None  # exactly this many attempts (0: a message that was not a job)
    at: tuple[int, int] | None = None  # one dead letter: (DLQ partition, offset)

    def matches(self, letter: DeadLetter) -> bool:
        if self.at is not None and (letter.partition, letter.offset) != self.at:
            return False
        if self.error_contains is not None and self.error_contains.casefold() not in letter.error.casefold():
            return False
        if self.error_pattern is not None and not self.error_pattern.search(letter.error):
            return False
        if self.key_pattern is not None and not fnmatch.fnmatchcase(letter.key_text, self.key_pattern):
            return False
        for wanted, found in ((self.original_partition, letter.original_partition),
                              (self.original_offset, letter.original_offset),
                              (self.attempts, letter.attempts)):
            if wanted is not None and wanted != found:
                return False
        if self.since is not None or self.until is not None:
            failed = letter.failed_at
            if failed is None:
                return False
            if self.since is not None and failed < self.since:
                return False
            if self.until is not None and failed >= self.until:
                return False
        return True

    def verdict(self, letter: DeadLetter, *, already_redriven: bool) -> Verdict:
        if already_redriven:
            return Verdict.ALREADY
        if not self.matches(letter):
            return Verdict.FILTERED
        if self.max_redrives is not None and letter.redrives >= self.max_redrives:
            return Verdict.MAX_REDRIVES
        return Verdict.MOVE


@dataclass
class Tally:
    """What a run did (or, dry, would do); `moved_by_error` counts the moves by `dlq.error`."""

    dry_run: bool = False
    scanned: int = 0
    counts: Counter[Verdict] = field(default_factory=Counter)
    moved_by_error: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False

    def add(self, verdict: Verdict, letter: DeadLetter) -> None:
        self.scanned += 1
        self.counts[verdict] += 1
        if verdict is Verdict.MOVE:
            self.moved_by_error[letter.error] += 1

    @property
    def moved(self) -> int:
        return self.counts[Verdict.MOVE]

    def limit_reached(self, selection: Selection) -> bool:
        return selection.limit is not None and self.moved >= selection.limit

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "interrupted": self.interrupted, "scanned": self.scanned,
                **{verdict.value: self.counts[verdict] for verdict in Verdict},
                "moved_by_error": dict(self.moved_by_error.most_common())}


def redriven_headers(letter: DeadLetter, dlq_topic: str, due: float | None = None) -> list[Header]:
    """The copy's headers: the original ones, without `dlq.*` (and an earlier redrive's
    `redrive.*`, and a parked copy's `delay.*`/`retry.*`: kept, a retry's attempt count would
    number the re-driven job's attempts after it), plus `redrive.count` (one more than before)
    and `redrive.source`; with `due` (epoch seconds, `--delay`), `delay.due_ms`: no consumer
    starts the job before then (jobpipe.delays)."""
    kept = [(name, value) for name, value in letter.headers
            if not name.startswith((DLQ_HEADER_PREFIX, REDRIVE_HEADER_PREFIX)) and name not in PARKED_HEADERS]
    ours: list[Header] = [(REDRIVE_COUNT, str(letter.redrives + 1).encode()),
                          (REDRIVE_SOURCE, f"{dlq_topic}/{letter.partition}/{letter.offset}".encode())]
    if due is not None:
        ours.append((DUE_HEADER, epoch_ms(due)))
    return [*kept, *ours]


def target_partition(letter: DeadLetter, jobs_topic: str, jobs_partitions: int) -> int | None:
    """The jobs partition the job came from, when that is known and still exists (so jobs of
    one key stay in one partition whatever partitioner the producer used); None lets the
    producer place it by its key."""
    if letter.header("dlq.original.topic") != jobs_topic:
        return None
    try:
        partition = int(letter.header("dlq.original.partition") or "")
    except ValueError:
        return None
    return partition if 0 <= partition < jobs_partitions else None


# ---- the ledger: which dead letters committed transactions moved --------------------------

def ledger_record(dlq_topic: str, topic_id: str, moved: Sequence[DeadLetter], at: datetime) -> bytes:
    """One ledger record per transaction: the DLQ offsets it moved, by partition. `topic_id`
    is the DLQ's Kafka topic id, so a DLQ deleted and created again starts with a clean slate."""
    by_partition: dict[int, list[int]] = {}
    for letter in moved:
        by_partition.setdefault(letter.partition, []).append(letter.offset)
    return json.dumps({"dlq_topic": dlq_topic, "topic_id": topic_id,
                       "at": at.isoformat(timespec="milliseconds"),
                       "moved": {str(p): offset_ranges(offsets)
                                for p, offsets in sorted(by_partition.items())}},
                      separators=(",", ":")).encode()


class Ledger:
    """The set of DLQ offsets already moved, per partition."""

    def __init__(self) -> None:
        self._done: dict[int, set[int]] = {}

    def add_ranges(self, ranges: Mapping[int, Iterable[tuple[int, int]]]) -> None:
        for partition, runs in ranges.items():
            offsets = self._done.setdefault(partition, set())
            for first, last in runs:
                offsets.update(range(first, last + 1))

    def add(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self._done.setdefault(letter.partition, set()).add(letter.offset)

    def __contains__(self, letter: object) -> bool:
        return isinstance(letter, DeadLetter) and letter.offset in self._done.get(letter.partition, ())

    def __len__(self) -> int:
        return sum(len(offsets) for offsets in self._done.values())


def pace(moved: int, elapsed_s: float, rate: float | None) -> float:
    """How long to wait before the next move so that `moved` moves in `elapsed_s` keep to
    `rate` per second (`--rate`; None: no limit)."""
    if rate is None:
        return 0.0
    return max(0.0, moved / rate - elapsed_s)
