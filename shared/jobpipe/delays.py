"""When a job that must wait is due, and where it waits meanwhile: the decisions, without Kafka.

Why it exists: a job may carry `not_before` (or, for a retry with a long back-off, a due time in
a header), and a consumer must never start it earlier. A short wait is held in memory like a
retry (it holds back only its ordering unit); a longer one must not hold a partition, a slot or
the committed offset, so the job is parked in a delay tier: a topic whose records each wait a
fixed time (5 s, 1 min, 10 min or 1 h) before they are moved on. Each tier is FIFO in release
time (a record's release time is when it was parked plus the tier's wait, and records are
appended in time order), so a tier partition only ever waits for its head: it is paused until
the head's release time, with no polling and no memory per waiting job.

The rules (all times are wall-clock seconds since the epoch, passed in):
- due already: run now;
- a wait of at most the in-memory threshold, or shorter than the smallest tier: hold it in
  memory until due;
- otherwise park it in the longest tier that is no longer than the wait: it is released after
  that tier's time, so never after its due time, and never before either (release <= due);
- a released job is decided again with the time left: a lower (or the same) tier while one
  fits, or back to the jobs topic, where the consumer holds it in memory for what is left of its
  wait (under the smallest tier's 5 s).
So a job hops down the tiers, never waits in one longer than its remaining wait, and its number
of hops is at most about its wait / 1 h + the number of tiers.

Header names of the records a consumer writes for this live here too (the tiers' and the jobs
topic's consumers read them back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The delay tiers: (suffix of the topic name, seconds a record waits there). Fixed and few: each
# is a topic every member reads, and a job needs at most a handful of hops.
TIERS: tuple[tuple[str, int], ...] = (("5s", 5), ("1m", 60), ("10m", 600), ("1h", 3600))

# Headers of a parked copy, kept when it goes back to the jobs topic.
DUE_HEADER = "delay.due_ms"  # when the job may start (epoch ms): not_before, or a retry's due time
RELEASE_HEADER = "delay.release_ms"  # when it leaves the tier it is in (epoch ms)
TIER_HEADER = "delay.tier"  # the tier it was parked in (its suffix), for people
ATTEMPTS_HEADER = "retry.attempts"  # a parked retry: handler attempts made so far
ERROR_HEADER = "retry.error"  # a parked retry: the last attempt's error
PARKED_HEADERS = (DUE_HEADER, RELEASE_HEADER, TIER_HEADER, ATTEMPTS_HEADER, ERROR_HEADER)


@dataclass(frozen=True, order=True)
class Tier:
    """One delay tier: records wait `seconds` in topic `topic`."""

    seconds: int
    name: str
    topic: str


def tier_topic(jobs_topic: str, name: str) -> str:
    """The topic of tier `name` (e.g. `jobs.delay.5s`), named from JOBS_TOPIC."""
    return f"{jobs_topic}.delay.{name}"


def tiers_of(jobs_topic: str) -> tuple[Tier, ...]:
    """The delay tiers of a jobs topic, shortest first."""
    return tuple(Tier(seconds, name, tier_topic(jobs_topic, name)) for name, seconds in TIERS)


@dataclass(frozen=True)
class RunNow:
    """Due: start it."""


@dataclass(frozen=True)
class Hold:
    """Hold it in memory (as a retry is held) until `until`."""

    until: float


@dataclass(frozen=True)
class Park:
    """Publish it to `tier`; it leaves the tier at `release_at` (never after its due time)."""

    tier: Tier
    release_at: float


Decision = RunNow | Hold | Park


def decide(now: float, due: float, tiers: tuple[Tier, ...], hold_max_s: float) -> Decision:
    """What to do with a job due at `due` when a consumer has it in hand at `now`."""
    wait = due - now
    if wait <= 0:
        return RunNow()
    if wait > hold_max_s:
        tier = longest_within(wait, tiers)
        if tier is not None:
            return Park(tier, now + tier.seconds)
    return Hold(due)


def release(now: float, due: float, tiers: tuple[Tier, ...]) -> Park | None:
    """A parked job whose release time came (at `now`): the tier it goes to next, as long as one
    fits in its remaining wait, or None: back to the jobs topic, with less than the smallest
    tier (5 s) left to wait in memory there. (Not the in-memory threshold: a job back from the
    tiers is held by the consumer, and counts against MAX_IN_FLIGHT, as briefly as the tiers
    allow; with 10 s, 10,000 jobs due over a minute kept a member full and made them late.)"""
    decision = decide(now, due, tiers, 0.0)
    return decision if isinstance(decision, Park) else None


def longest_within(wait: float, tiers: tuple[Tier, ...]) -> Tier | None:
    """The longest tier whose time is at most `wait` (None: `wait` is shorter than them all)."""
    fitting = [tier for tier in tiers if tier.seconds <= wait]
    return max(fitting) if fitting else None


def head_wait(now: float, release_at: float) -> float:
    """How long a tier partition stays paused for its head (0: move it now)."""
    return max(0.0, release_at - now)


def epoch_ms(value: float) -> bytes:
    """A time (epoch seconds) as a header value: integer milliseconds, rounded up, so that a
    reader never sees it earlier than it was."""
    return str(math.ceil(value * 1000)).encode()


def header_time(value: bytes | str | None) -> float | None:
    """A time header (epoch ms) as epoch seconds; None if absent or not a number."""
    if value is None:
        return None
    try:
        return int(value) / 1000
    except ValueError:
        return None


def due_of(not_before: datetime | None, headers: Any) -> float | None:
    """When a job may start (epoch s): the due-time header of a parked copy (a retry's, or its
    not_before's), else its `not_before`; None: it may start at once. `headers` is the job's
    header mapping (name -> value)."""
    if headers:
        due = header_time(headers.get(DUE_HEADER))
        if due is not None:
            return due
    return None if not_before is None else not_before.timestamp()
