"""The overview's numbers from successive samples of offsets (pure: samples in, numbers out).

Kafka keeps no counters of jobs, but its offsets are counters:
- produced: the jobs topic's end offsets grow by one per job written (a re-driven job too);
- processed: the group's committed offsets grow by one per job finished, that is handled
  successfully or dead-lettered after its last attempt (the consumer commits both);
- dead-lettered: the dead-letter topic's end offsets grow by one per job given up.
A failed attempt that is retried moves no offset, so it is not seen here (the consumer's
`jobs_failed_total` metric counts those). Consumers commit about once a second, so
rates are taken over a window of several samples rather than between the last two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from jobpipe.group_offsets import Member, PartitionState

RATE_WINDOW_S = 10.0  # rates are averaged over about this many seconds of samples


@dataclass(frozen=True)
class Sample:
    """What the broker said at one moment."""

    at: float  # time.monotonic()
    wall: datetime  # the same moment on the clock, for people
    jobs: tuple[PartitionState, ...]  # the jobs topic, with the group's committed offsets
    dlq_end: int | None  # the dead-letter topic's end offsets, summed (None: no such topic)
    group_state: str = "unknown"
    members: tuple[Member, ...] = ()

    @property
    def produced(self) -> int:
        return sum(p.end for p in self.jobs)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.jobs)


@dataclass(frozen=True)
class Rates:
    """Jobs per second over `seconds`; None where it cannot be said (one sample, a topic
    re-created, offsets moved back by `topic-admin offsets`)."""

    seconds: float
    produced: float | None
    processed: float | None
    dead_lettered: float | None


def _per_second(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0 or after < before:
        return None
    return (after - before) / seconds


def _positions(sample: Sample, partitions: set[int]) -> int:
    return sum(p.position for p in sample.jobs if p.partition in partitions)


def _ends(sample: Sample, partitions: set[int]) -> int:
    return sum(p.end for p in sample.jobs if p.partition in partitions)


def rates(history: Sequence[Sample], window_s: float = RATE_WINDOW_S) -> Rates:
    """The rates between the newest sample and the oldest one at most `window_s` before it
    (the one just before that window when none is inside it)."""
    if len(history) < 2:
        return Rates(0.0, None, None, None)
    newest = history[-1]
    oldest = history[-2]
    for sample in reversed(history[:-1]):
        if newest.at - sample.at > window_s:
            break
        oldest = sample
    seconds = newest.at - oldest.at
    common = {p.partition for p in newest.jobs} & {p.partition for p in oldest.jobs}
    return Rates(seconds=seconds,
                 produced=_per_second(_ends(oldest, common), _ends(newest, common), seconds),
                 processed=_per_second(_positions(oldest, common), _positions(newest, common), seconds),
                 dead_lettered=_per_second(oldest.dlq_end, newest.dlq_end, seconds))


def progress_times(previous: Mapping[int, datetime], before: Sample | None,
                   after: Sample) -> dict[int, datetime]:
    """Per partition, when the group's committed offset last moved forward, given the times
    known before and two successive samples (a first commit counts). Before a second sample,
    nothing is known."""
    known = dict(previous)
    if before is None:
        return known
    was = {p.partition: p.committed for p in before.jobs}
    for state in after.jobs:
        old = was.get(state.partition)
        if state.committed is not None and (old is None or state.committed > old):  # None: its first commit
            known[state.partition] = after.wall
    return known


@dataclass(frozen=True)
class MemberRow:
    client_id: str
    host: str
    member_id: str
    partitions: tuple[int, ...]
    lag: int
    last_progress: datetime | None  # the latest commit forward on any of its partitions
    caught_up: bool  # no lag on its partitions: nothing to make progress on


def member_rows(sample: Sample, progress: Mapping[int, datetime]) -> list[MemberRow]:
    lags = {p.partition: p.lag for p in sample.jobs}
    rows = []
    for member in sample.members:
        moved = [progress[p] for p in member.partitions if p in progress]
        lag = sum(lags.get(p, 0) for p in member.partitions)
        rows.append(MemberRow(client_id=member.client_id, host=member.host, member_id=member.member_id,
                              partitions=member.partitions, lag=lag, last_progress=max(moved, default=None),
                              caught_up=lag == 0))
    return sorted(rows, key=lambda row: (row.partitions[:1] or (10**9,), row.client_id))


@dataclass(frozen=True)
class LagSeries:
    """The lag of each partition over the samples, as a chart takes it: one x (Unix seconds)
    and one y list per partition (None where the partition was not there)."""

    times: list[float] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    lags: list[list[int | None]] = field(default_factory=list)


def lag_series(history: Sequence[Sample]) -> LagSeries:
    partitions = sorted({p.partition for sample in history for p in sample.jobs})
    series = LagSeries(partitions=partitions, lags=[[] for _ in partitions])
    for sample in history:
        series.times.append(round(sample.wall.timestamp(), 3))
        lags = {p.partition: p.lag for p in sample.jobs}
        for index, partition in enumerate(partitions):
            series.lags[index].append(lags.get(partition))
    return series
