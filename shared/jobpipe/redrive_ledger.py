"""The redrive ledger: which dead letters `topic-admin redrive` has moved back to the jobs topic.

Why it exists: two processes read the ledger and must agree on what it says. `topic-admin
redrive` writes one record per committed transaction (the DLQ offsets it moved, by partition)
and reads them to leave those letters alone; the lag exporter reads them to tell how many dead
letters still wait. The record format and the counting live here, as pure functions; the
reading and writing stay with each process.

A record names the DLQ's Kafka topic id: a DLQ deleted and created again starts clean.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

Range = tuple[int, int]  # inclusive [first, last] DLQ offsets


def ledger_topic(dlq_topic: str) -> str:
    return f"{dlq_topic}.redriven"


def offset_ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Sorted offsets as inclusive [first, last] runs: [3, 4, 5, 9] -> [[3, 5], [9, 9]]."""
    runs: list[list[int]] = []
    for offset in sorted(set(offsets)):
        if runs and runs[-1][1] == offset - 1:
            runs[-1][1] = offset
        else:
            runs.append([offset, offset])
    return runs


def read_ledger_record(value: bytes | None, topic_id: str) -> dict[int, list[Range]]:
    """The offset ranges a ledger record lists for the DLQ with `topic_id` ({} for another
    topic id, or a record that is not one of ours)."""
    try:
        record = json.loads(value or b"")
    except ValueError:
        return {}
    if not isinstance(record, dict) or record.get("topic_id") != topic_id:
        return {}
    moved = record.get("moved")
    if not isinstance(moved, Mapping):
        return {}
    found: dict[int, list[Range]] = {}
    for partition, runs in moved.items():
        try:
            found[int(partition)] = [(int(first), int(last)) for first, last in runs]
        except (TypeError, ValueError):
            continue
    return found


def merged(ranges: Iterable[Range]) -> list[Range]:
    """The same offsets as fewer, sorted, disjoint ranges (overlapping and touching ones joined)."""
    out: list[Range] = []
    for first, last in sorted(r for r in ranges if r[0] <= r[1]):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def dead_letters_waiting(start: int, letters: Iterable[Range], redriven: Iterable[Range]) -> int:
    """Dead letters of one DLQ partition not yet re-driven: the offsets of `letters` (those a
    read_committed reader of the partition got) from `start` (the partition's first offset:
    retention may have deleted some) that no committed redrive lists. Offsets are not all
    letters: a DLQ written under exactly_once also holds one transaction marker per
    transaction, and the records of aborted ones, which no reader sees."""
    kept = [(max(first, start), last) for first, last in merged(letters) if last >= start]
    return _count(kept) - _count(_overlaps(kept, merged(redriven)))


def _count(ranges: Iterable[Range]) -> int:
    return sum(last - first + 1 for first, last in ranges)


def _overlaps(ours: list[Range], theirs: list[Range]) -> list[Range]:
    """The offsets in both of two sorted lists of disjoint ranges, as ranges."""
    both: list[Range] = []
    i = j = 0
    while i < len(ours) and j < len(theirs):
        first, last = max(ours[i][0], theirs[j][0]), min(ours[i][1], theirs[j][1])
        if first <= last:
            both.append((first, last))
        if ours[i][1] < theirs[j][1]:
            i += 1
        else:
            j += 1
    return both
