"""What `topic-admin offsets` would do, as pure functions: the new committed offset of each
partition for a target, and how many jobs that skips or replays.

The Kafka side (reading offsets, applying the plan) is in `offsets.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from jobpipe.group_offsets import PartitionState


class TargetKind(StrEnum):
    EARLIEST = "to-earliest"
    LATEST = "to-latest"
    DATETIME = "to-datetime"
    SHIFT = "shift-by"
    OFFSET = "to-offset"


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    number: int = 0  # --shift-by N, --to-offset N
    moment: datetime | None = None  # --to-datetime

    def __str__(self) -> str:
        if self.kind in (TargetKind.SHIFT, TargetKind.OFFSET):
            return f"--{self.kind} {self.number}"
        if self.kind is TargetKind.DATETIME and self.moment is not None:
            return f"--{self.kind} {self.moment.isoformat()}"
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
    """The move of each partition to `target`. `at_time` (for --to-datetime) is, per
    partition, the first offset whose timestamp is at or after the moment, -1 for none
    (then the partition moves to its end: nothing that old is left to replay)."""
    moves = []
    for state in sorted(states, key=lambda s: s.partition):
        clamped = False
        if target.kind is TargetKind.EARLIEST:
            new = state.start
        elif target.kind is TargetKind.LATEST:
            new = state.end
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
