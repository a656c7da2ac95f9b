"""`describe --watch`: rates and lag trend from successive samples (pure; the loop that takes
the samples and draws the table is in main.py).

Per partition: jobs/s written (end offset growth), jobs/s finished by the group (committed
offset growth; consumers commit about once a second, so short intervals read jumpy), the
lag's change per second and a sparkline of the lag over the last samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from topic_admin_service.topics import Description

SPARKS = "▁▂▃▄▅▆▇█"
HISTORY = 20  # samples the sparkline spans


@dataclass(frozen=True)
class PartitionSample:
    end: int
    committed: int | None
    lag: int | None


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() when taken
    partitions: dict[tuple[str, int], PartitionSample]
    total_lag: int


def sample_of(description: Description, at: float) -> Sample:
    return Sample(at=at, total_lag=description.total_lag, partitions={
        (topic.name, p.partition): PartitionSample(end=p.end_offset, committed=p.committed, lag=p.lag)
        for topic in description.topics for p in topic.partitions})


@dataclass(frozen=True)
class WatchRow:
    topic: str
    partition: int
    end: int
    committed: int | None
    lag: int | None
    in_per_s: float | None  # None on the first sample
    out_per_s: float | None
    lag_per_s: float | None
    trend: str

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "end_offset": self.end,
                "committed": self.committed, "lag": self.lag, "in_per_s": self.in_per_s,
                "out_per_s": self.out_per_s, "lag_per_s": self.lag_per_s, "trend": self.trend}


def sparkline(values: Sequence[int | None]) -> str:
    """One block character per value, scaled from 0 to the largest value; ' ' for unknown."""
    known = [v for v in values if v is not None]
    top = max(known, default=0)
    if top <= 0:
        return "".join(" " if v is None else SPARKS[0] for v in values)
    return "".join(" " if v is None else SPARKS[round(v / top * (len(SPARKS) - 1))] for v in values)


def _per_second(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    return round((after - before) / seconds, 1)


def watch_rows(history: Sequence[Sample]) -> list[WatchRow]:
    """The rows for the newest sample of `history` (oldest first), rates against the one before."""
    if not history:
        return []
    current = history[-1]
    previous = history[-2] if len(history) > 1 else None
    seconds = current.at - previous.at if previous is not None else 0.0
    rows = []
    for (topic, partition), now in sorted(current.partitions.items()):
        before = previous.partitions.get((topic, partition)) if previous is not None else None
        lags = [s.partitions[(topic, partition)].lag if (topic, partition) in s.partitions else None
                for s in history[-HISTORY:]]
        rows.append(WatchRow(
            topic=topic, partition=partition, end=now.end, committed=now.committed, lag=now.lag,
            in_per_s=_per_second(before.end if before else None, now.end, seconds),
            out_per_s=_per_second(before.committed if before else None, now.committed, seconds),
            lag_per_s=_per_second(before.lag if before else None, now.lag, seconds),
            trend=sparkline(lags) if now.lag is not None else ""))
    return rows


def lag_direction(lag_per_s: float | None) -> str:
    """An arrow for a person: growing, shrinking or steady lag."""
    if lag_per_s is None:
        return ""
    if lag_per_s > 0:
        return f"↑ +{lag_per_s:g}/s"
    if lag_per_s < 0:
        return f"↓ {lag_per_s:g}/s"
    return "→ 0/s"
