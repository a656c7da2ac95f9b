"""The scheduler's decisions, with a fake clock: what starts, what waits, what pauses, what commits.

The property-based test at the end drives random interleavings of fetch, start (in runs),
handler calls that run over several steps, success, failure, due retry, dead letter,
revoke, lost and re-assignment (also while a call of the partition still runs) against a
fake broker, and checks the guarantees the consumer is built on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from consumer_service.offsets import TP
from consumer_service.scheduler import Block, Ordering, Scheduler, Task

P0: TP = ("jobs", 0)
P1: TP = ("jobs", 1)
P2: TP = ("jobs", 2)



def fetch_one(s: Scheduler, tp: TP, offset: int, key: bytes | None, payload: Any) -> Task | None:
    """One fetched message (the loop hands over batches: Scheduler.fetched_many)."""
    tasks = s.fetched_many(tp, (payload,), lambda _: offset, lambda _: key)
    return tasks[0] if tasks else None


def scheduler(ordering: str = "key", concurrency: int = 4, max_in_flight: int = 100,
              tps: Iterable[TP] = (P0, P1)) -> Scheduler:
    s = Scheduler(ordering, concurrency, max_in_flight)
    s.assign(tps)
    assert s.flow() == ([], [])
    return s


def feed(s: Scheduler, tp: TP, keys: Iterable[bytes | None], first: int = 0) -> list[Task]:
    tasks = []
    for offset, key in enumerate(keys, start=first):
        task = fetch_one(s, tp, offset, key, f"{tp[1]}@{offset}")
        assert task is not None
        tasks.append(task)
    return tasks


def start(s: Scheduler, now: float) -> list[Task]:
    """The tasks whose handler call starts now, one per free slot (runs of one task)."""
    return [run.tasks[0] for run in s.start_runs(now, 1)]


def offsets_of(tasks: Iterable[Task]) -> list[tuple[int, int]]:
    return [(task.tp[1], task.offset) for task in tasks]


# ---- ordering --------------------------------------------------------------------------


def test_key_mode_runs_a_key_in_offset_order_and_other_keys_alongside() -> None:
    s = scheduler("key", concurrency=8)
    a0, b1, a2, c3, b4 = feed(s, P0, [b"a", b"b", b"a", b"c", b"b"])
    assert start(s, 0.0) == [a0, b1, c3]
    assert (a2.state, b4.state) == ("pending", "pending")
    assert s.in_flight == 3
    s.succeeded(b1)
    assert start(s, 0.0) == [b4]
    s.succeeded(a0)
    assert start(s, 0.0) == [a2]
    assert start(s, 0.0) == []


def test_key_mode_a_message_without_a_key_waits_for_nothing() -> None:
    s = scheduler("key", concurrency=8)
    tasks = feed(s, P0, [None, None, b"a", None])
    assert start(s, 0.0) == tasks


def test_the_same_key_on_two_partitions_is_two_units() -> None:
    s = scheduler("key", concurrency=8)
    (a0,) = feed(s, P0, [b"a"])
    (a1,) = feed(s, P1, [b"a"])
    assert start(s, 0.0) == [a0, a1]


def test_partition_mode_runs_one_job_per_partition_and_partitions_alongside() -> None:
    s = scheduler("partition", concurrency=8)
    p0 = feed(s, P0, [b"a", b"b", b"c"])
    p1 = feed(s, P1, [b"a", b"b"])
    assert start(s, 0.0) == [p0[0], p1[0]]
    s.succeeded(p0[0])
    assert start(s, 0.0) == [p0[1]]
    s.succeeded(p1[0])
    s.succeeded(p0[1])
    assert start(s, 0.0) == [p1[1], p0[2]]


def test_none_mode_runs_everything_up_to_the_concurrency() -> None:
    s = scheduler("none", concurrency=3)
    tasks = feed(s, P0, [b"a", b"a", b"a", b"a"])
    assert start(s, 0.0) == tasks[:3]
    assert start(s, 0.0) == [], "no free slot"
    s.succeeded(tasks[1])
    assert start(s, 0.0) == [tasks[3]]


def test_starts_never_exceed_the_concurrency() -> None:
    s = scheduler("key", concurrency=2)
    tasks = feed(s, P0, [b"a", b"b", b"c", b"d"])
    assert start(s, 0.0) == tasks[:2]
    assert start(s, 0.0) == []
    assert s.in_flight == 2
    s.succeeded(tasks[0])
    assert start(s, 0.0) == [tasks[2]]


def test_unit_successors_queue_behind_jobs_that_were_ready_first() -> None:
    """FIFO among ready jobs: a unit's next job does not jump jobs of other units."""
    s = scheduler("key", concurrency=1)
    a0, b1, a2 = feed(s, P0, [b"a", b"b", b"a"])
    assert start(s, 0.0) == [a0]
    s.succeeded(a0)
    assert start(s, 0.0) == [b1]
    s.succeeded(b1)
    assert start(s, 0.0) == [a2]


# ---- retries -----------------------------------------------------------------------------


def test_a_retry_holds_back_only_its_key() -> None:
    s = scheduler("key", concurrency=4)
    a0, b1, a2, b3 = feed(s, P0, [b"a", b"b", b"a", b"b"])
    assert start(s, 0.0) == [a0, b1]
    assert s.failed(a0, retry_at=10.0)
    assert (a0.state, a0.attempt) == ("waiting", 2)
    assert s.next_due() == 10.0
    assert s.retrying() == [a0]
    s.succeeded(b1)
    assert start(s, 5.0) == [b3], "the other key flows; a2 waits behind the retry"
    assert a2.state == "pending"
    assert start(s, 9.999) == []
    assert start(s, 10.0) == [a0]
    assert s.next_due() is None
    s.succeeded(a0)
    assert start(s, 10.0) == [a2]


def test_a_retry_in_partition_mode_holds_the_partition_and_pauses_it() -> None:
    s = scheduler("partition", concurrency=4)
    x0, x1 = feed(s, P0, [b"a", b"b"])
    (y0,) = feed(s, P1, [b"a"])
    assert start(s, 0.0) == [x0, y0]
    s.failed(x0, retry_at=1.0)
    assert s.flow() == ([P0], []), "nothing of P0 can run: stop fetching it"
    s.succeeded(y0)
    assert start(s, 0.5) == []
    assert x1.state == "pending"
    assert start(s, 1.0) == [x0]
    assert s.flow() == ([], []), "paused until the job is done, not just due"
    s.succeeded(x0)
    assert s.flow() == ([], [P0])
    assert start(s, 1.0) == [x1]


def test_due_retries_start_before_fresh_jobs() -> None:
    s = scheduler("none", concurrency=1)
    a0, b1, c2 = feed(s, P0, [b"a", b"b", b"c"])
    assert start(s, 0.0) == [a0]
    s.failed(a0, retry_at=1.0)
    assert start(s, 0.5) == [b1]
    s.succeeded(b1)
    assert start(s, 2.0) == [a0], "due, and older than c2"
    s.succeeded(a0)
    assert start(s, 2.0) == [c2]


def test_retries_come_due_in_time_order() -> None:
    s = scheduler("none", concurrency=4)
    a, b, c = feed(s, P0, [b"a", b"b", b"c"])
    start(s, 0.0)
    s.failed(a, 3.0)
    s.failed(b, 1.0)
    s.failed(c, 2.0)
    assert s.retrying() == [b, c, a]
    assert s.next_due() == 1.0
    assert start(s, 2.5) == [b, c]
    assert s.next_due() == 3.0


def test_the_watermark_waits_for_a_retrying_job() -> None:
    s = scheduler("key", concurrency=4)
    a0, b1 = feed(s, P0, [b"a", b"b"])
    start(s, 0.0)
    s.failed(a0, 1.0)
    s.succeeded(b1)
    assert s.offsets() == []
    assert s.committable(P0) == 0
    start(s, 1.0)
    s.succeeded(a0)
    assert s.offsets() == [(P0, 2)]


# ---- dead letters --------------------------------------------------------------------------


def test_a_dead_letter_frees_its_slot_but_holds_its_key_and_the_watermark() -> None:
    s = scheduler("key", concurrency=1)
    a0, b1, a2 = feed(s, P0, [b"a", b"b", b"a"])
    assert start(s, 0.0) == [a0]
    assert s.settling(a0)
    assert (a0.state, s.in_flight) == ("settling", 0)
    assert start(s, 0.0) == [b1], "the slot is free"
    s.succeeded(b1)
    assert start(s, 0.0) == [], "a2 waits for a0's dead letter"
    assert s.offsets() == []
    assert s.settled(a0)
    assert s.offsets() == [(P0, 2)]
    assert start(s, 0.0) == [a2]


def test_a_failed_dead_letter_publish_is_retried_with_the_same_attempt() -> None:
    s = scheduler("key", concurrency=1)
    (a0,) = feed(s, P0, [b"a"])
    start(s, 0.0)
    s.settling(a0)
    a0.note = "dead letter: bad payload"
    assert s.failed(a0, retry_at=2.0)
    assert (a0.state, a0.attempt) == ("waiting", 1)
    assert start(s, 2.0) == [a0]
    assert a0.note == "dead letter: bad payload", "the caller's note tells it to publish again"
    s.settling(a0)
    s.settled(a0)
    assert s.offsets() == [(P0, 1)]


def test_a_dead_letter_that_needs_no_wait_finishes_from_running() -> None:
    s = scheduler("key", concurrency=1)
    (a0,) = feed(s, P0, [b"a"])
    start(s, 0.0)
    assert s.settled(a0)
    assert (s.in_flight, s.held, a0.state) == (0, 0, "finished")
    assert s.offsets() == [(P0, 1)]


def test_reporting_an_outcome_for_a_task_that_is_not_running_is_a_bug() -> None:
    s = scheduler("key", concurrency=1)
    a0, b1 = feed(s, P0, [b"a", b"b"])
    start(s, 0.0)
    s.succeeded(a0)
    with pytest.raises(ValueError, match="not running"):
        s.succeeded(a0)
    with pytest.raises(ValueError, match="not running"):
        s.settling(b1)
    with pytest.raises(ValueError, match="neither running nor settling"):
        s.failed(b1, 1.0)


# ---- offsets -------------------------------------------------------------------------------


def test_offsets_report_each_moved_watermark_once() -> None:
    s = scheduler("none", concurrency=8)
    tasks = feed(s, P0, [b"a"] * 4)
    (other,) = feed(s, P1, [b"x"])
    start(s, 0.0)
    s.succeeded(tasks[2])
    s.succeeded(tasks[1])
    assert s.offsets() == []
    s.succeeded(tasks[0])
    assert s.offsets() == [(P0, 3)]
    s.succeeded(tasks[3])
    s.succeeded(other)
    assert sorted(s.offsets()) == [(P0, 4), (P1, 1)]
    assert s.offsets() == []


def test_duplicates_and_unassigned_partitions_are_not_work() -> None:
    s = scheduler("key", tps=[P0])
    assert fetch_one(s, P0, 0, b"a", None) is not None
    assert fetch_one(s, P0, 0, b"a", None) is None
    assert fetch_one(s, P2, 0, b"a", None) is None
    assert s.held == 1


# ---- backpressure --------------------------------------------------------------------------


def test_a_full_member_pauses_every_partition_and_resumes_with_a_quarter_free() -> None:
    s = scheduler("none", concurrency=2, max_in_flight=8, tps=[P0, P1])
    tasks = feed(s, P0, [b"k"] * 7)
    assert s.flow() == ([], [])
    assert s.room == 1
    tasks += feed(s, P1, [b"k"], first=0)
    assert s.room == 0
    assert s.flow() == ([P0, P1], [])
    assert s.paused == [P0, P1]
    s.assign([P2])
    assert s.flow() == ([P2], []), "a partition assigned while full is paused at once"
    started = start(s, 0.0)
    s.succeeded(started[0])
    assert s.flow() == ([], []), "one free is not enough"
    s.succeeded(started[1])
    assert s.held == 6
    assert s.flow() == ([], [P0, P1, P2])


def test_key_mode_pauses_a_partition_whose_stuck_key_holds_half_the_budget() -> None:
    s = scheduler("key", concurrency=2, max_in_flight=8, tps=[P0, P1])
    (a0,) = feed(s, P0, [b"a"])
    start(s, 0.0)
    s.failed(a0, retry_at=60.0)
    feed(s, P0, [b"a"] * 2, first=1)
    assert s.flow() == ([], []), "a key waits; the partition's other keys may still come"
    feed(s, P0, [b"a"], first=3)
    assert s.flow() == ([P0], []), "4 of 8 held behind a retry: stop fetching P0 only"
    feed(s, P1, [b"b"] * 2)
    assert s.flow() == ([], [])
    start(s, 60.0)
    s.succeeded(a0)
    assert s.flow() == ([], [P0])


def test_a_stuck_watermark_pauses_its_partition_at_half_the_budget_and_others_go_on() -> None:
    """MAX_IN_FLIGHT bounds the jobs at risk (unfinished, or finished above an unfinished one):
    a long job at P0's watermark lets at most half the budget finish above it before P0 is
    paused, while P1 goes on; P0 resumes once the long job is done."""
    s = scheduler("none", concurrency=2, max_in_flight=8, tps=[P0, P1])
    stuck, *quick = feed(s, P0, [None] * 5)
    assert start(s, 0.0) == [stuck, quick[0]]  # the stuck job holds one slot from now on
    for index, task in enumerate(quick):
        s.succeeded(task)
        if index == 2:
            assert s.flow() == ([], []), "3 finished above the watermark: not yet"
        assert start(s, 0.0) == quick[index + 1:index + 2]
    assert (s.held, s.at_risk, s.room) == (1, 5, 3)
    assert s.flow() == ([P0], []), "4 (half of 8) finished above a stuck job: P0 pauses"
    feed(s, P1, [None] * 2)
    assert s.flow() == ([], []), "P1 is not held back (7 of the member's 8 at risk)"
    s.succeeded(stuck)
    assert (s.at_risk, s.held) == (2, 2), "P0's watermark passed all 5: only P1's 2 at risk"
    assert s.flow() == ([], [P0])


def test_none_mode_never_pauses_for_a_retry() -> None:
    s = scheduler("none", concurrency=1, max_in_flight=8, tps=[P0])
    (a0,) = feed(s, P0, [b"a"])
    start(s, 0.0)
    s.failed(a0, retry_at=60.0)
    feed(s, P0, [b"a"] * 5, first=1)
    assert s.flow() == ([], [])


def test_settings_below_their_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Scheduler("key", 0, 10)
    with pytest.raises(ValueError, match="max_in_flight"):
        Scheduler("key", 8, 4)
    with pytest.raises(ValueError):
        Scheduler("random", 1, 10)
    assert Scheduler(Ordering.PARTITION, 1, 1).ordering is Ordering.PARTITION


# ---- rebalances ----------------------------------------------------------------------------


def test_a_revoke_waits_for_jobs_in_flight_and_drops_the_rest_uncommitted() -> None:
    s = scheduler("key", concurrency=4)
    a0, b1, a2, c3 = feed(s, P0, [b"a", b"b", b"a", b"c"])
    (x0,) = feed(s, P1, [b"x"])
    assert start(s, 0.0) == [a0, b1, c3, x0]
    assert a2.state == "pending"
    s.failed(c3, retry_at=5.0)
    waits = s.revoke([P0])
    assert set(waits) == {a0, b1}, "in flight on P0; c3 (waiting) and a2 (pending) are dropped"
    assert (a2.state, c3.state, a0.state) == ("dropped", "dropped", "running")
    assert s.assigned == [P1]
    assert s.held == 3, "a0, b1 and x0"
    assert fetch_one(s, P0, 4, b"d", None) is None, "nothing more is taken from a revoked partition"
    assert s.succeeded(a0)
    assert not s.failed(b1, retry_at=1.0), "no retry on a partition being revoked: handed back"
    assert s.in_flight_on([P0]) == []
    assert s.offsets() == [(P0, 1)], "a0 is committed before the partition goes; b1 is not"
    assert s.drop([P0]) == []
    assert start(s, 10.0) == [], "c3's retry is gone with its partition"
    assert s.next_due() is None
    s.succeeded(x0)
    assert (s.held, s.in_flight) == (0, 0)


def test_jobs_still_running_when_a_partition_is_dropped_are_handed_back() -> None:
    s = scheduler("key", concurrency=2)
    a0, b1, c2 = feed(s, P0, [b"a", b"b", b"c"])
    (x0,) = feed(s, P1, [b"x"])
    assert start(s, 0.0) == [a0, b1]
    s.settling(b1)
    assert start(s, 0.0) == [c2]
    assert set(s.drop([P0])) == {a0, b1, c2}, "lost: nothing waited for"
    assert s.held == 1
    assert s.in_flight == 2, "a0's and c2's handler calls still run and hold their slots"
    assert start(s, 0.0) == [], "so x0 cannot start yet"
    assert not s.succeeded(a0), "its outcome changes nothing but the slot"
    assert not s.settled(b1)
    assert not s.failed(c2, retry_at=1.0)
    assert s.offsets() == []
    assert s.next_due() is None
    assert start(s, 0.0) == [x0]
    assert (a0.state, b1.state, c2.state) == ("dropped", "dropped", "dropped")


def test_a_partition_assigned_again_starts_afresh() -> None:
    s = scheduler("key", concurrency=2)
    (a0,) = feed(s, P0, [b"a"])
    start(s, 0.0)
    s.revoke([P0])
    assert s.assign([P0]) == [a0], "a revoke not finished yet is finished by the new assignment"
    assert not s.succeeded(a0)
    assert s.committable(P0) is None
    assert fetch_one(s, P0, 0, b"a", None) is not None, "the next owner's fetch is work again"


# ---- the property-based test -----------------------------------------------------------------

MAX_ATTEMPTS = 3
KEYS = [b"a", b"b", b"c", None]
backlogs = st.lists(st.lists(st.sampled_from(KEYS), max_size=12), min_size=3, max_size=3)


def test_a_run_hands_a_unit_its_followers_in_offset_order() -> None:
    s = scheduler("partition", concurrency=1)
    feed(s, P0, [b"a", b"b", b"c", b"d"])
    feed(s, P1, [b"x"])
    (run,) = s.start_runs(0.0, 3)
    assert offsets_of(run) == [(0, 0), (0, 1), (0, 2)]
    assert s.runs == 1 and s.in_flight == 3 and s.start_runs(0.0, 3) == []
    for task in run:
        assert s.succeeded(task)
    assert s.runs == 0
    assert s.offsets() == [(P0, 3)]
    assert sorted(offsets_of(t for r in s.start_runs(0.0, 3) for t in r)) == [(0, 3), (1, 0)]


def test_ready_jobs_are_spread_over_the_free_slots() -> None:
    s = scheduler("key", concurrency=4)
    feed(s, P0, [bytes([n]) for n in range(8)])
    runs = s.start_runs(0.0, 256)
    assert [len(run) for run in runs] == [2, 2, 2, 2]


def test_a_failure_in_a_run_sends_its_units_later_jobs_back_behind_the_retry() -> None:
    s = scheduler("key", concurrency=1)
    first, second, other = feed(s, P0, [b"a", b"a", b"b"])
    (run,) = s.start_runs(0.0, 3)
    assert list(run) == [first, second, other]
    assert s.failed(first, retry_at=5.0)
    assert s.unstarted(second) and second.state == "pending"
    assert s.succeeded(other)
    assert s.runs == 0 and start(s, 1.0) == []
    assert start(s, 5.0) == [first]
    assert s.succeeded(first)
    assert start(s, 5.0) == [second]


def test_an_unstarted_job_of_a_revoked_partition_is_handed_back() -> None:
    s = scheduler("none", concurrency=1)
    (task,) = feed(s, P0, [None])
    assert len(s.start_runs(0.0, 4)) == 1
    s.revoke([P0])
    assert task.cancelled
    assert not s.unstarted(task)
    assert s.runs == 0 and s.held == 0


# ---- the lane (one slot, a block per fetched batch) -------------------------------------

Batch = tuple[TP, list[tuple[int, bytes | None]]]


def messages(tp: TP, keys: Iterable[bytes | None], first: int = 0) -> Batch:
    """A fetched batch of tp as the model's payloads: (offset, key)."""
    return tp, [(offset, key) for offset, key in enumerate(keys, start=first)]


def block_of(s: Scheduler, *batches: Batch) -> Block:
    assert s.lane_open
    block = s.start_block(batches, itemgetter(0), itemgetter(1))
    assert block is not None
    return block


def test_a_block_moves_each_watermark_past_its_successes_in_one_step() -> None:
    s = scheduler("key", concurrency=1)
    block = block_of(s, messages(P0, [b"a"] * 5), messages(P1, [b"b"] * 3))
    assert not s.lane_open and s.held == s.at_risk == s.in_flight == 8 and s.runs == 1
    block.done = 3  # the slot ran P0@0..2
    succeeded: list[int] = []
    assert s.block_progress(block, succeeded) == 3 and succeeded == [0, 1, 2]
    assert s.offsets() == [(P0, 3)] and s.held == 5
    block.done, block.over = 8, True
    assert s.end_block(block) == (5, None)
    assert sorted(s.offsets()) == [(P0, 5), (P1, 3)]
    assert s.lane_open and s.held == s.at_risk == s.in_flight == s.runs == 0


def test_a_call_that_failed_in_a_block_is_retried_and_holds_only_its_key() -> None:
    s = scheduler("key", concurrency=1)
    block = block_of(s, messages(P0, [b"a", b"b", b"a", b"c"]))
    block.done, block.failure, block.over = 1, "failed", True  # P0@0 ran, P0@1 (key b) failed
    finished, failed = s.end_block(block)
    assert finished == 1 and failed is not None
    (task,) = failed.tasks
    assert (task.offset, task.key, failed.results[0]) == (1, b"b", "failed")
    assert s.failed(task, retry_at=5.0)  # as the loop reports the run's outcome
    assert s.offsets() == [(P0, 1)] and not s.lane_open  # the retry holds the watermark
    (run,) = s.start_runs(5.0, 4)
    # the retry first, once (it was started from the block, not from the ready queue), then the others
    assert offsets_of(run) == [(0, 1), (0, 2), (0, 3)]
    assert s.succeeded_many(run) == 3 and s.offsets() == [(P0, 4)] and s.lane_open


def test_a_revoke_during_a_block_waits_only_for_the_call_on_the_revoked_partition() -> None:
    s = scheduler("key", concurrency=1)
    block = block_of(s, messages(P0, [b"a", b"b", b"c"]), messages(P1, [b"x", b"y"]))
    assert s.revoke([P1]) == []  # the slot runs P0@0: nothing of P1 has started
    assert offsets_of(s.revoke([P0])) == [(0, 0)]
    block.done = 1  # P0@0 succeeded; the slot finds P0 closed and passes the rest of it
    block.stops[0], block.done = 1, 3
    assert s.block_progress(block) == 1
    assert s.in_flight_on([P0]) == [] and sorted(s.offsets()) == [(P0, 1)]
    block.stops[1], block.done, block.over = 3, 5, True  # it finds P1 closed too, and leaves
    assert s.drop([P0, P1]) == []
    assert s.end_block(block) == (0, None)
    assert s.held == s.at_risk == s.in_flight == s.runs == 0


def test_a_lost_partition_hands_back_the_block_jobs_not_reported() -> None:
    s = scheduler("key", concurrency=1)
    block = block_of(s, messages(P0, [b"a", b"b", b"c"]))
    block.done = 1  # P0@0 succeeded (not reported yet), P0@1 runs
    assert offsets_of(s.drop([P0])) == [(0, 0), (0, 1)]
    block.done, block.over = 2, True  # P0@1 ended; the slot passes the rest
    assert s.end_block(block) == (0, None)  # none counts: the next owner runs them again
    assert s.offsets() == [] and s.held == s.in_flight == s.runs == 0


def test_messages_held_back_while_a_block_is_out_count_against_the_budget() -> None:
    """A slow block must not let the loop fill its budget with messages it then never polls
    past: what waits for the block's end makes the member full, and a full member pauses
    (and goes on polling)."""
    s = scheduler("key", concurrency=1, max_in_flight=4)
    block = block_of(s, messages(P0, [b"a", b"b"]))
    s.held_back(2)  # fetched while it is out
    assert s.room == 0 and s.at_risk == 4
    assert s.flow() == ([P0, P1], []) and s.fetch_paused
    block.done, block.over = 2, True
    assert s.end_block(block) == (2, None)
    assert s.flow() == ([], [P0, P1])  # 2 at risk: a quarter of the budget free again
    s.held_back(-2)  # taken up after the block's end
    assert s.room == 4 and s.lane_open


def test_nothing_goes_into_the_scheduler_while_a_block_is_out() -> None:
    s = scheduler("key", concurrency=1)
    block_of(s, messages(P0, [b"a"]))
    with pytest.raises(ValueError, match="block"):
        s.fetched_many(P1, [(0, b"x")], itemgetter(0), itemgetter(1))
    assert scheduler("key", concurrency=2).lane_open is False


class ConsumerModel(RuleBasedStateMachine):
    """A fake broker and a fake loop around the scheduler, in random interleavings.

    The broker keeps each partition's log and the group's committed offsets; the member
    fetches from its position (not from paused partitions), runs what `start_runs` says, reports
    outcomes, stores and commits `offsets()`, and goes through revokes (waiting for the jobs
    in flight, which succeed, fail or stay stuck), lost partitions (nothing committed),
    and re-assignments (fetching from the committed offset, like the next owner), also while
    a call of the partition still runs. Few rules, each doing a whole step of the loop, so
    that random runs reach busy states (jobs in flight during a revoke or a loss) often.

    With one slot and `lane` drawn, the member takes a fetched batch as a block whenever the
    lane is open (as the consumer does with a plain handler: consumer_service.scheduler.Block):
    the slot goes through it over several steps (a call may run across revokes and losses),
    what is fetched meanwhile waits for the block's end, and the block's rest and its failed
    call go back through the scheduler.
    """

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler("key", 1, 1)
        self.now = 0.0

    @initialize(ordering=st.sampled_from(list(Ordering)), concurrency=st.integers(1, 4),
                extra=st.integers(0, 6), partitions=st.integers(1, 3), backlog=backlogs,
                run_length=st.integers(1, 4), lane=st.booleans())
    def setup(self, *, ordering: Ordering, concurrency: int, extra: int, partitions: int,
              backlog: list[list[bytes | None]], run_length: int, lane: bool) -> None:
        self.ordering = ordering
        self.lane = lane
        self.block: Block | None = None  # the block out (the lane)
        self.block_call: int | None = None  # the index of its message whose call runs
        self.block_ended: set[tuple[TP, int]] = set()  # its calls that ended ok, not reported yet
        self.later: list[tuple[TP, list[tuple[int, bytes | None]]]] = []  # fetched while it is out
        self.concurrency = concurrency
        self.run_length = run_length
        self.max_in_flight = concurrency + extra
        self.s = Scheduler(ordering, concurrency, self.max_in_flight)
        self.tps: list[TP] = [("jobs", p) for p in range(partitions)]
        self.log: dict[TP, list[bytes | None]] = {tp: list(backlog[tp[1]]) for tp in self.tps}
        self.committed = dict.fromkeys(self.tps, 0)
        self.stored = dict.fromkeys(self.tps, 0)
        self.position = dict.fromkeys(self.tps, 0)
        self.owned: set[TP] = set()
        self.paused: set[TP] = set()
        self.runs: list[list[Task]] = []  # each slot's tasks not reported yet, in run order
        self.begun: set[Task] = set()  # heads of runs whose handler call runs (across steps)
        self.settling: list[Task] = []  # dead letters being published
        self.orphans: set[Task] = set()  # handed back by a drop, their outcomes still to come
        self.finished: dict[TP, set[int]] = {tp: set() for tp in self.tps}  # ever, as told to the scheduler
        self.processed: set[tuple[TP, int]] = set()
        self.dead: set[tuple[TP, int]] = set()
        self.epoch_fetched: dict[TP, dict[int, bytes | None]] = {}
        self.epoch_finished: dict[TP, set[int]] = {}
        for tp in self.tps:
            self._assign(tp)

    # -- the loop's steps

    def _assign(self, tp: TP) -> None:
        self.s.assign([tp])
        self.owned.add(tp)
        self.position[tp] = self.stored[tp] = self.committed[tp]
        self.epoch_fetched[tp] = {}
        self.epoch_finished[tp] = set()
        self.block_ended = {(t, offset) for t, offset in self.block_ended if t != tp}
        self._flow()

    def _unit(self, tp: TP, key: bytes | None) -> object:
        if self.ordering is Ordering.PARTITION:
            return tp
        if self.ordering is Ordering.KEY and key is not None:
            return (tp, key)
        return None

    def _batch(self, tp: TP, count: int, drawn: int = 0) -> list[tuple[int, bytes | None]]:
        """The next `count` messages of tp (within the room, less `drawn` already in this
        consume()), its position moved past them (a new bytes object per key, as each Kafka
        message brings its own)."""
        if tp not in self.owned or tp in self.paused:
            return []
        log = self.log[tp]
        first = self.position[tp]
        end = min(len(log), first + max(0, min(count, self.s.room - drawn)))
        self.position[tp] = max(first, end)
        return [(offset, None if log[offset] is None else bytes(bytearray(log[offset])))
                for offset in range(first, end)]

    def _fetch(self, tp: TP, count: int) -> None:
        self._take([(tp, self._batch(tp, count))])

    def _take(self, batches: list[tuple[TP, list[tuple[int, bytes | None]]]]) -> None:
        """What the loop does with what consume() returned: wait for the block's end while
        one is out; a block if the lane is open; else into the scheduler, batch by batch."""
        batches = [(tp, batch) for tp, batch in batches if batch]
        if self.block is None and self.later:  # fetched while the last block was out: first
            self.s.held_back(-self._later_count())
            batches, self.later = self.later + batches, []
        if self.block is not None:
            self.later += batches
            self.s.held_back(sum(len(batch) for _, batch in batches))
        elif self.lane and self.s.lane_open:
            block = self.s.start_block(batches, itemgetter(0), itemgetter(1))
            if block is not None:
                for part, start, end in block.segments:
                    for offset, _ in block.payloads[start:end]:
                        self.epoch_fetched[part.tp][offset] = self.log[part.tp][offset]
                self.block = block
        else:
            for tp, batch in batches:
                for task in self.s.fetched_many(tp, batch, itemgetter(0), itemgetter(1)):
                    self.epoch_fetched[tp][task.offset] = self.log[tp][task.offset]
        self._flow()

    # -- the lane's block (as consumer_service.runner.TaskRunner.run_block goes through it)

    def _block_message(self, index: int) -> tuple[int, TP, int, bytes | None]:
        assert self.block is not None
        for number, (part, start, end) in enumerate(self.block.segments):
            if start <= index < end:
                offset, key = self.block.payloads[index]
                return number, part.tp, offset, key
        raise AssertionError(f"no message at {index}")

    def _block_part(self, index: int) -> Any:
        assert self.block is not None
        return self.block.part_at(index)

    def _slot_passes_closed(self) -> None:
        """The slot passes what it finds closed (at once), and leaves at the end."""
        block = self.block
        assert block is not None
        while self.block_call is None and not block.over:
            if block.done == len(block):
                block.over = True
                return
            number, (part, _, end) = next((n, seg) for n, seg in enumerate(block.segments)
                                          if seg[1] <= block.done < seg[2])
            if not part.closed:
                return
            block.stops[number] = block.done
            block.done = end

    def _block_begin(self) -> None:
        """The slot starts the call of the block's next message: its unit's order holds."""
        block = self.block
        assert block is not None and self.block_call is None and not block.over
        index = block.done
        _, tp, offset, key = self._block_message(index)
        assert tp in self.owned
        unit = self._unit(tp, key)
        if unit is not None:
            for earlier, other in self.epoch_fetched[tp].items():
                if earlier < offset and self._unit(tp, other) == unit:
                    assert earlier in self.epoch_finished[tp] or (tp, earlier) in self.block_ended, \
                        f"{tp}@{offset} started before offset {earlier} of its unit finished"
            for task in self.begun:
                assert self._unit(task.tp, task.key) != unit
        self.block_call = index

    def _block_call_ends(self, ok: bool) -> None:
        block = self.block
        assert block is not None and self.block_call is not None
        index, self.block_call = self.block_call, None
        if not ok:
            block.failure = "failed"
            block.over = True
            return
        _, tp, offset, _ = self._block_message(index)
        self.block_ended.add((tp, offset))
        block.results[index] = "ok"
        block.done = index + 1
        self._slot_passes_closed()

    def _block_finished(self, indexes: list[int], finished: int) -> None:
        assert finished == len(indexes)
        for index in indexes:
            _, tp, offset, _ = self._block_message(index)
            assert tp in self.owned
            self.finished[tp].add(offset)
            self.epoch_finished[tp].add(offset)
            self.processed.add((tp, offset))

    def _block_report(self) -> None:
        assert self.block is not None
        succeeded: list[int] = []
        self._block_finished(succeeded, self.s.block_progress(self.block, succeeded))

    def _block_end(self, delay: float) -> None:
        """The loop collects the block's completion: its rest goes into the scheduler and its
        failed call is reported as a run's."""
        block = self.block
        assert block is not None and block.over and self.block_call is None
        succeeded: list[int] = []
        finished, failed = self.s.end_block(block, succeeded)
        self._block_finished(succeeded, finished)
        self.block = None
        if failed is not None:
            (task,) = failed.tasks
            assert task.tp in self.owned and (task.tp, task.offset) == self._tp_offset(block, block.done)
            self.runs.append(list(failed))
            self._complete(self.runs[-1], "fail", delay)
        self.block_ended.clear()

    @staticmethod
    def _tp_offset(block: Block, index: int) -> tuple[TP, int]:
        return block.part_at(index).tp, block.payloads[index][0]

    @property
    def running(self) -> list[Task]:
        """Tasks handed out in runs and not reported back, also on partitions given up."""
        return [task for run in self.runs for task in run]

    def _start(self) -> None:
        for run in self.s.start_runs(self.now, self.run_length):
            assert 1 <= len(run) <= self.run_length
            for task in run:
                assert task not in self.running
                assert task.tp in self.owned
            self.runs.append(self._publish_dead_letters(list(run)))
        self.runs = [run for run in self.runs if run]

    def _publish_dead_letters(self, run: list[Task]) -> list[Task]:
        """As the loop does before it submits a run: a due retry of a dead-letter publish is
        published (not a handler call), and the run's later tasks of its unit go back."""
        for task in [t for t in run if t.note == "dead letter"]:
            if task not in run:
                continue  # went back already, behind an earlier dead letter of its unit
            run.remove(task)
            assert self.s.settling(task)
            self.settling.append(task)
            self._after_failure(task, run)
        return run

    def _begin(self, run: list[Task]) -> Task | None:
        """What a slot does next with its run: skip what must not start (reported
        `unstarted`), then start the head's handler call (checked here: its unit's order, and
        no other call of its unit running, also one of an earlier assignment of its partition).
        The call runs until the head is reported. None if the run ended."""
        while run and run[0] not in self.begun and run[0].cancelled:
            self._unstart(run)
        if not run:
            self._end(run)
            return None
        task = run[0]
        if task in self.begun:
            return task
        unit = self._unit(task.tp, task.key)
        for waiting in self.s.retrying():
            assert unit is None or self._unit(waiting.tp, waiting.key) != unit, \
                f"{task} started while {waiting} of its unit waits for its retry"
        if unit is not None:  # every earlier job of its unit (this assignment) is finished
            for offset, key in self.epoch_fetched[task.tp].items():
                if offset < task.offset and self._unit(task.tp, key) == unit:
                    assert offset in self.epoch_finished[task.tp], \
                        f"{task} started before offset {offset} of its unit finished"
            for other in self.begun:
                assert self._unit(other.tp, other.key) != unit, \
                    f"{task} started while {other} of its unit still runs"
        self.begun.add(task)
        return task

    def _execute(self, run: list[Task]) -> Task | None:
        """Start the run's next task (or take the one whose call runs) and end its call:
        returns it, removed from the run, for its outcome to be reported; None if the run
        ended."""
        task = self._begin(run)
        if task is None:
            return None
        self.begun.discard(task)
        run.pop(0)
        if not run:
            self._end(run)
        return task

    def _unstart(self, run: list[Task]) -> None:
        task = run.pop(0)
        if not self.s.unstarted(task):
            assert task in self.orphans or task.state == "dropped"

    def _after_failure(self, failed: Task, run: list[Task]) -> None:
        """The runner skips the run's later tasks of the failed task's unit."""
        for task in [t for t in run if failed.same_unit(t)]:
            run.remove(task)
            if not self.s.unstarted(task):
                assert task in self.orphans or task.state == "dropped"
        if not run:
            self._end(run)

    def _end(self, run: list[Task]) -> None:
        self.runs = [r for r in self.runs if r is not run]

    def _finished(self, task: Task, outcome: set[tuple[TP, int]]) -> None:
        self.finished[task.tp].add(task.offset)
        self.epoch_finished[task.tp].add(task.offset)
        outcome.add((task.tp, task.offset))

    def _complete(self, run: list[Task], outcome: str, delay: float) -> None:
        """Run the next task of `run` and report its outcome: ok, fail (retried, or
        dead-lettered at the last attempt)."""
        task = self._execute(run)
        if task is None:
            return
        if outcome != "ok":
            self._after_failure(task, run)
        if outcome == "ok":
            if self.s.succeeded(task):
                self._finished(task, self.processed)
        elif task.attempt >= MAX_ATTEMPTS:
            if self.s.settling(task):
                task.note = "dead letter"
                self.settling.append(task)
        elif not self.s.failed(task, self.now + delay):
            assert task in self.orphans or task.tp not in self.owned or task.state == "dropped"

    def _settle(self, task: Task, published: bool, delay: float) -> None:
        if published:
            if self.s.settled(task):
                self._finished(task, self.dead)
        else:
            self.s.failed(task, self.now + delay)

    def _store(self) -> None:
        for tp, offset in self.s.offsets():
            assert tp in self.owned
            assert set(range(offset)) <= self.finished[tp], \
                f"{tp} watermark {offset} passes an unfinished offset"
            assert offset >= self.stored[tp], "a watermark never goes back within an assignment"
            self.stored[tp] = offset

    def _flow(self) -> None:
        pause, resume = self.s.flow()
        assert set(pause) <= self.owned - self.paused
        assert set(resume) <= self.paused
        self.paused |= set(pause)
        self.paused -= set(resume)
        assert sorted(self.paused) == self.s.paused
        if self.s.at_risk >= self.max_in_flight:
            assert self.paused == self.owned, "a full member fetches nothing"
        for tp in self.owned:
            unfinished = set(self.epoch_fetched[tp]) - self.epoch_finished[tp]
            above = sum(1 for offset in self.epoch_finished[tp] if unfinished and offset > min(unfinished))
            if above >= max(1, self.max_in_flight // 2):
                assert tp in self.paused, "half the budget finished above a stuck job: paused"
        if self.ordering is Ordering.PARTITION:
            for task in self.s.retrying():
                assert task.tp in self.paused, "a partition waiting for a retry is paused"

    def _revoke(self, tp: TP, outcomes: list[str]) -> None:
        """Wait for the jobs in flight (each succeeds, fails or stays stuck), commit, drop."""
        waits = self.s.revoke([tp])
        tasks = set(self.running + self.settling)
        assert {t for t in tasks if t.tp == tp} - self.orphans == set(waits) & tasks
        plan = iter(outcomes)
        self._revoke_in_block(tp, {(t.tp, t.offset) for t in waits if t not in tasks}, plan, tasks)
        for run in [run for run in self.runs if any(t.tp == tp for t in run)]:
            # the runs touching tp run on: tp's tasks not started are skipped (`cancelled`)
            while run and any(t.tp == tp for t in run):
                outcome = next(plan, "stuck")
                if outcome == "stuck":
                    break
                task = self._execute(run)
                if task is None:
                    break
                if outcome == "ok" and self.s.succeeded(task):
                    self._finished(task, self.processed)
                elif outcome == "fail":
                    self._after_failure(task, run)
                    if task.tp == tp:
                        assert not self.s.failed(task, self.now), "no retry while revoking"
                    else:
                        self.s.failed(task, self.now)
        for task in [t for t in self.settling if t.tp == tp]:
            outcome = next(plan, "stuck")
            if outcome == "stuck":
                continue
            self.settling.remove(task)
            if outcome == "ok" and self.s.settled(task):
                self._finished(task, self.dead)
            elif outcome == "fail":
                assert not self.s.failed(task, self.now)
        self._store()
        self.committed[tp] = self.stored[tp]
        handed_back = self.s.drop([tp])
        assert {task.tp for task in handed_back} <= {tp}
        self.orphans |= set(handed_back)
        self._forget(tp)

    def _forget(self, tp: TP) -> None:
        self.owned.discard(tp)
        self.paused.discard(tp)
        held_back = self._later_count()
        self.later = [(t, batch) for t, batch in self.later if t != tp]  # as the worker's `_forget`
        self.s.held_back(self._later_count() - held_back)

    def _later_count(self) -> int:
        return sum(len(batch) for _, batch in self.later)

    def _revoke_in_block(self, tp: TP, waits: set[tuple[TP, int]], plan: Iterator[str],
                         tasks: set[Task]) -> None:
        """`waits`: what the revoke waits for of the block (its messages on tp whose outcome is
        not reported). The slot goes on: the call on tp ends (or is stuck), the rest of tp is
        passed; the loop reports what ended, and collects the block if the slot left it."""
        block = self.block
        if block is None:
            assert not waits
            return
        on_tp = {self._tp_offset(block, i) for i in range(block.reported, len(block))}
        assert waits <= {(t, o) for t, o in on_tp if t == tp}
        # its call on tp, unless that is of an earlier assignment of tp (as the Run path's orphans)
        calling = self.block_call is not None and \
            self._block_part(self.block_call).tp == tp and not self._block_part(self.block_call).gone
        if calling:
            assert self._tp_offset(block, self.block_call) in waits  # type: ignore[arg-type]
            outcome = next(plan, "stuck")
            if outcome != "stuck":
                self._block_call_ends(outcome == "ok")
        self._slot_passes_closed()
        self._block_report()
        if block.over and self.block_call is None:
            self._block_end(0.0)
        elif not calling:
            assert not [t for t in self.s.in_flight_on([tp]) if t not in tasks], \
                "the revoke waits for nothing of the block once the slot left tp"

    def _lose(self, tp: TP) -> None:
        self.orphans |= set(self.s.drop([tp]))
        self._forget(tp)
        self.stored[tp] = self.committed[tp]  # nothing committed: the next owner starts there

    # -- rules

    @rule(p=st.integers(0, 2), key=st.sampled_from(KEYS), count=st.integers(1, 4))
    def produce(self, p: int, key: bytes | None, count: int) -> None:
        self.log[self.tps[p % len(self.tps)]].extend([key] * count)

    @rule(p=st.integers(0, 2), count=st.integers(1, 6), start=st.booleans())
    def fetch(self, p: int, count: int, start: bool) -> None:
        self._fetch(self.tps[p % len(self.tps)], count)
        if start:
            self._start()

    @rule(count=st.integers(1, 6), start=st.booleans())
    def fetch_all(self, count: int, start: bool) -> None:
        """One consume() that returns messages of every partition, interleaved: each
        partition's batch split in two runs (p0, p1, p0, p1)."""
        halves: list[tuple[TP, list[tuple[int, bytes | None]]]] = []
        for tp in self.tps:
            halves.append((tp, self._batch(tp, count, sum(len(batch) for _, batch in halves))))
        self._take([(tp, batch[:len(batch) // 2]) for tp, batch in halves] +
                   [(tp, batch[len(batch) // 2:]) for tp, batch in halves])
        if start:
            self._start()

    @rule()
    def start(self) -> None:
        self._start()

    @precondition(lambda self: self.block is not None and not self.block.over)
    @rule(outcomes=st.lists(st.sampled_from(["ok", "ok", "fail", "leave"]), min_size=1, max_size=6))
    def block_steps(self, outcomes: list[str]) -> None:
        """The slot's next steps in the block, one per outcome."""
        for outcome in outcomes:
            self.block_step(outcome)

    def block_step(self, outcome: str) -> None:
        """The slot's next step in the block: start the next call (or leave: a stop, a message
        that is no plain job), or end the call that runs (ok, or failed: the slot leaves)."""
        if self.block is None:
            return
        self._slot_passes_closed()
        if self.block.over:
            return
        if self.block_call is not None:
            self._block_call_ends(outcome != "fail")
        elif outcome == "leave":
            self.block.over = True
        else:
            self._block_begin()

    @precondition(lambda self: self.block is not None)
    @rule(delay=st.floats(0.0, 5.0), start=st.booleans())
    def block_report(self, delay: float, start: bool) -> None:
        """The loop reports the block's progress, or, once the slot left it, collects it; what
        was fetched meanwhile is taken on the next turn."""
        assert self.block is not None
        if self.block.over and self.block_call is None:
            self._block_end(delay)
            self._take([])  # what was fetched meanwhile, on the next turn
        else:
            self._block_report()
        self._flow()
        if start:
            self._start()

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 100), outcome=st.sampled_from(["ok", "ok", "fail"]),
          delay=st.floats(0.0, 5.0), start=st.booleans())
    def complete(self, i: int, outcome: str, delay: float, start: bool) -> None:
        self._complete(self.runs[i % len(self.runs)], outcome, delay)
        self._flow()
        if start:
            self._start()

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 100), count=st.integers(2, 6))
    def complete_in_a_row(self, i: int, count: int) -> None:
        """Several tasks of a run end one after another and succeed; the loop reports them
        in one `succeeded_many` (as it does with a run's successes)."""
        run = self.runs[i % len(self.runs)]
        ended: list[Task] = []
        while len(ended) < count and (task := self._execute(run)) is not None:
            ended.append(task)
            if task.tp in self.owned and task not in self.orphans:
                self.epoch_finished[task.tp].add(task.offset)  # its call ended; reported below
        finished = self.s.succeeded_many(ended)
        assert finished == sum(1 for task in ended if task.state == "finished")
        for task in ended:
            if task.state == "finished":
                self._finished(task, self.processed)
            else:
                assert task in self.orphans, f"{task} not finished, yet not handed back"
        self._flow()

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 100), start=st.booleans())
    def begin(self, i: int, start: bool) -> None:
        """A slot starts its next handler call, which runs on over the following steps
        (through revokes, losses and re-assignments) until `complete` reports it."""
        self._begin(self.runs[i % len(self.runs)])
        self._flow()
        if start:
            self._start()

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 100))
    def cut(self, i: int) -> None:
        """A run stops early (a stop): what it had not started goes back; a call that runs
        is reported when it ends."""
        run = self.runs[i % len(self.runs)]
        running = [run.pop(0)] if run[0] in self.begun else []
        while run:
            self._unstart(run)
        run[:] = running
        if not run:
            self._end(run)
        self._flow()

    @precondition(lambda self: self.settling)
    @rule(i=st.integers(0, 100), published=st.booleans(), delay=st.floats(0.0, 5.0))
    def settle(self, i: int, published: bool, delay: float) -> None:
        self._settle(self.settling.pop(i % len(self.settling)), published, delay)
        self._flow()

    @rule(dt=st.floats(0.0, 3.0))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(commit=st.booleans())
    def store(self, commit: bool) -> None:
        self._store()
        if commit:  # the background commit of what was stored
            for tp in self.owned:
                self.committed[tp] = self.stored[tp]

    @rule(p=st.integers(0, 2), kind=st.sampled_from(["revoke", "lose"]),
          busy=st.booleans(), back=st.booleans(),
          outcomes=st.lists(st.sampled_from(["ok", "fail", "stuck"])))
    def rebalance(self, p: int, kind: str, busy: bool, back: bool, outcomes: list[str]) -> None:
        """A revoke or a lost partition (assigned back at once, or later); `busy`: of a
        partition with jobs in flight, if there is one."""
        candidates = sorted({task.tp for task in self.s.in_flight_on()}) if busy else []
        tp = (candidates or self.tps)[p % len(candidates or self.tps)]
        if tp not in self.owned:
            self._assign(tp)
        else:
            self._revoke(tp, outcomes) if kind == "revoke" else self._lose(tp)
            if back:
                self._assign(tp)

    @precondition(lambda self: self.begun or self.block_call is not None)
    @rule(i=st.integers(0, 100))
    def lose_while_running(self, i: int) -> None:
        """The partition of a call that runs is lost and comes back to this member at once
        (cooperative-sticky often does that); it is fetched again from the committed offset
        and every slot starts its next call, while the old call still runs."""
        calls = sorted((task.tp, task.offset) for task in self.begun)
        if self.block is not None and self.block_call is not None:
            calls.append(self._tp_offset(self.block, self.block_call))
        tp = calls[i % len(calls)][0]
        self._lose(tp)
        self._assign(tp)
        self._fetch(tp, 6)
        self._start()
        for run in list(self.runs):
            self._begin(run)
        self._flow()

    # -- invariants

    @invariant()
    def handler_calls_never_exceed_the_concurrency(self) -> None:
        block = self.block
        out = 0 if block is None else len(block) - block.reported
        assert self.s.in_flight == len(self.running) + out
        assert self.s.runs == len(self.runs) + (block is not None) <= self.concurrency


    @invariant()
    def the_member_holds_no_more_than_its_budget(self) -> None:
        assert 0 <= self.s.held <= self.s.at_risk <= self.max_in_flight

    @invariant()
    def at_risk_is_what_a_crash_now_would_run_again(self) -> None:
        """The jobs fetched in this assignment at or above the lowest unfinished one: a crash now
        makes the next owner run them (again). MAX_IN_FLIGHT bounds this, not only the
        unfinished ones (a stuck job at the watermark used to let any number finish above)."""
        at_risk = 0
        for tp in self.owned:
            unfinished = set(self.epoch_fetched[tp]) - self.epoch_finished[tp]
            if unfinished:
                lowest = min(unfinished)
                at_risk += sum(1 for offset in self.epoch_fetched[tp] if offset >= lowest)
        assert self.s.at_risk == at_risk + self._later_count()  # what waits for the block, too

    @invariant()
    def committed_offsets_never_pass_an_unfinished_job(self) -> None:
        for tp in self.tps:
            assert set(range(self.committed[tp])) <= self.finished[tp]

    def teardown(self) -> None:
        """Let everything run to the end: every job is processed or dead-lettered, and the
        committed offset of each partition reaches its end."""
        if not hasattr(self, "tps"):
            return
        for tp in self.tps:
            if tp not in self.owned:
                self._assign(tp)
        for _ in range(10_000):
            progressed = self.block is not None
            while self.block is not None:
                while not self.block.over:
                    self.block_step("ok")
                self.block_report(0.0, False)
            for tp in self.tps:
                self._fetch(tp, 1_000)
            while self.block is not None:
                while not self.block.over:
                    self.block_step("ok")
                self.block_report(0.0, False)
            self._start()
            progressed = progressed or bool(self.runs or self.settling)
            while self.runs:
                self._complete(self.runs[-1], "ok", 0.0)
            while self.settling:
                self._settle(self.settling.pop(), True, 0.0)
            self.store(commit=True)
            self._flow()
            if not progressed:
                due = self.s.next_due()
                if due is None and self.s.held == 0 and \
                        all(self.position[tp] == len(self.log[tp]) for tp in self.tps):
                    break
                self.now = max(self.now, due or self.now)
        else:
            raise AssertionError("the scheduler did not drain")
        for tp in self.tps:
            assert self.committed[tp] == len(self.log[tp]), f"{tp} not committed to its end"
            done = {offset for (t, offset) in self.processed | self.dead if t == tp}
            assert done >= set(range(len(self.log[tp]))), "every job processed or dead-lettered"
        assert self.s.in_flight == 0


TestConsumerModel = ConsumerModel.TestCase
TestConsumerModel.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
