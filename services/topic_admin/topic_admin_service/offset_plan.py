"""What `topic-admin offsets` would do, as pure functions: the new committed offset of each
partition for a target, and how many jobs that skips or replays.

The Kafka side (reading offsets, applying the plan) is in `offsets.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from jobpipe.group_offsets import PartitionState


class TargetKind(StrEnum):
    EARLIEST = "to-earliest"
    LATEST = "to-latest"
    CURRENT = "to-current"
    DATETIME = "to-datetime"
    SHIFT = "shift-by"
    OFFSET = "to-offset"
    FILE = "from-file"


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    number: int = 0  # --shift-by N, --to-offset N
    moment: datetime | None = None  # --to-datetime
    offsets: Mapping[int, int] = field(default_factory=dict)  # --from-file: partition -> offset
    source: str = ""  # --from-file: the file's name, for people

    def __str__(self) -> str:
        if self.kind in (TargetKind.SHIFT, TargetKind.OFFSET):
            return f"--{self.kind} {self.number}"
        if self.kind is TargetKind.DATETIME and self.moment is not None:
            return f"--{self.kind} {self.moment.isoformat()}"
        if self.kind is TargetKind.FILE:
            return f"--{self.kind} {self.source}"
        return f"--{self.kind}"


@dataclass(frozen=True)
class Move:
    partition: int
    committed: int | None
    current: int  # PartitionState.position
    new: int
    start: int
    end: int
    clamped: bool = False  # the target lay outside [start, end] and was brought inside

    @property
    def skipped(self) -> int:
        """Jobs the group will never process because of this move."""
        return max(0, self.new - self.current)

    @property
    def replayed(self) -> int:
        """Jobs the group will process again because of this move."""
        return max(0, self.current - self.new)

    @property
    def change(self) -> str:
        if self.new > self.current:
            return f"skips {self.skipped}"
        if self.new < self.current:
            return f"replays {self.replayed}"
        return "unchanged"

    def as_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "committed": self.committed, "current": self.current,
                "new": self.new, "start": self.start, "end": self.end, "skipped": self.skipped,
                "replayed": self.replayed, "clamped": self.clamped}


def _clamp(offset: int, state: PartitionState) -> tuple[int, bool]:
    inside = min(max(offset, state.start), state.end)
    return inside, inside != offset


def plan(states: Iterable[PartitionState], target: Target,
         at_time: Mapping[int, int] | None = None) -> list[Move]:
    """The move of each partition to `target` (--from-file: of each partition the file names).
    `at_time` (for --to-datetime) is, per
    partition, the first offset whose timestamp is at or after the moment, -1 for none
    (then the partition moves to its end: nothing that old is left to replay)."""
    moves = []
    for state in sorted(states, key=lambda s: s.partition):
        clamped = False
        if target.kind is TargetKind.FILE and state.partition not in target.offsets:
            continue  # a partition the file does not name keeps its offset
        if target.kind is TargetKind.EARLIEST:
            new = state.start
        elif target.kind is TargetKind.LATEST:
            new = state.end
        elif target.kind is TargetKind.CURRENT:
            new = state.position
        elif target.kind is TargetKind.FILE:
            new, clamped = _clamp(target.offsets[state.partition], state)
        elif target.kind is TargetKind.OFFSET:
            new, clamped = _clamp(target.number, state)
        elif target.kind is TargetKind.SHIFT:
            new, clamped = _clamp(state.position + target.number, state)
        else:
            found = (at_time or {}).get(state.partition, -1)
            new = state.end if found < 0 else min(max(found, state.start), state.end)
        moves.append(Move(partition=state.partition, committed=state.committed, current=state.position,
                          new=new, start=state.start, end=state.end, clamped=clamped))
    return moves


def totals(moves: Iterable[Move]) -> dict[str, int]:
    listed = list(moves)
    return {"skipped": sum(m.skipped for m in listed), "replayed": sum(m.replayed for m in listed),
            "changed": sum(1 for m in listed if m.new != m.current)}


def offsets_csv(topic: str, moves: Iterable[Move]) -> str:
    """The moves' new offsets as `topic,partition,offset` lines (kafka-consumer-groups.sh's
    --export format), for --from-file later."""
    return "".join(f"{topic},{move.partition},{move.new}\n" for move in moves)


def parse_offsets_csv(text: str, topic: str) -> dict[int, int]:
    """`topic,partition,offset` lines (blank lines and `#` comments skipped) -> partition ->
    offset. ValueError naming the line for anything else: another topic, a partition given
    twice, a number that is not one."""
    offsets: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [part.strip() for part in line.split(",")]
        if len(fields) != 3:
            raise ValueError(f"line {number}: expected topic,partition,offset, got {line.strip()!r}")
        name, partition_text, offset_text = fields
        if name != topic:
            raise ValueError(f"line {number}: topic {name!r} is not {topic!r} (one topic per file)")
        try:
            partition, offset = int(partition_text), int(offset_text)
        except ValueError:
            raise ValueError(f"line {number}: partition and offset must be whole numbers, "
                             f"got {line.strip()!r}") from None
        if partition < 0 or offset < 0:
            raise ValueError(f"line {number}: partition and offset must not be negative")
        if partition in offsets:
            raise ValueError(f"line {number}: partition {partition} is given twice")
        offsets[partition] = offset
    if not offsets:
        raise ValueError("no offsets in the file")
    return offsets
