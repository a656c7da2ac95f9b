"""The consumer's lane (consumer_service.scheduler.Block: one slot, a plain handler, a fetched
batch run as one block) driven turn by turn against the stand-in for librdkafka of
test_consumer_loop: the moments a real broker cannot be made to hit on demand (a block's
completion handed back late, a partition's end inside a block's batch, a loss while messages
wait for the block's end)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition
from prometheus_client import REGISTRY

from consumer_service import runner, worker
from consumer_service.scheduler import Block
from jobpipe.errors import KafkaRefused
from jobpipe.job import Job
from tests.unit import test_consumer_loop
from tests.unit.consumer_stand_ins import TOPIC
from tests.unit.test_consumer_loop import Harness, job

make = test_consumer_loop.make  # its fixture: a member over the stand-ins


def slow_to_hand_back(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The slot leaves each block (every job done, `over` set) and then waits for the returned
    event before the executor queues its completion: the window a GIL switch or a loaded
    machine opens between the block's last `done` and its completion."""
    real = runner.TaskRunner.run_block
    handed = threading.Event()

    def run_block(self: runner.TaskRunner, block: Block) -> None:
        real(self, block)
        handed.wait(10)

    monkeypatch.setattr(runner.TaskRunner, "run_block", run_block)
    return handed


def test_a_block_whose_jobs_were_all_reported_before_its_completion_still_ends(
        make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in the lane's review (worker.py, ConsumerWorker._turn / _wait_for): `_report_progress`
    reported every job of a block while its completion is not queued yet, which took the
    scheduler's in_flight to 0. From then on `_turn` took its `else` branch, which collects
    outcomes only `if scheduler.in_flight`: the block's completion is never collected, `_block`
    stays set, and every message fetched afterwards waits in `_later`, not run, until
    MAX_IN_FLIGHT of them fill the member (with a trickle of jobs: for hours). Now the loop
    collects while a block is out, until its completion is collected."""
    handed = slow_to_hand_back(monkeypatch)
    h = make(lambda _job: None)
    h.add(0, *[job(n) for n in range(3)])
    h.assign(0)
    h.turn_until(lambda: len(h.processed()) == 3)  # all three reported while the block is "out"
    assert h.member._scheduler.in_flight == 0 and h.member._block is not None
    handed.set()  # the completion is queued now
    h.add(0, job(3))  # one more job arrives
    h.turn_until(lambda: len(h.processed()) == 4, timeout=5)
    assert h.settled(0)



def test_a_full_member_whose_block_was_all_reported_before_its_completion_is_not_stuck_for_good(
        make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in the lane's review, the same defect made permanent (worker.py `_turn`): the block's
    jobs all reported before its completion is queued (scheduler in_flight 0), the member then
    fetches MAX_IN_FLIGHT messages into `_later` and, full for FULL_PAUSE_S, pauses every
    partition. `may_fetch` is True again (`fetch_paused`), in_flight is 0, so every turn takes
    the `else` branch: a poll that hands over nothing (all paused) and no collect. The block
    never ends, `_later` is never taken, at_risk (= held_back) never falls to the resume level:
    the member heartbeats and processed nothing, for good. Now: as above."""
    monkeypatch.setattr(worker, "FULL_PAUSE_S", 0.0)  # pause as soon as full (0.5 s otherwise)
    handed = slow_to_hand_back(monkeypatch)
    h = make(lambda _job: None, max_in_flight=4)
    h.add(0, *[job(n) for n in range(2)])
    h.assign(0)
    h.turn_until(lambda: len(h.processed()) == 2)
    assert h.member._scheduler.in_flight == 0 and h.member._block is not None
    h.add(0, *[job(n) for n in range(2, 12)])
    h.turn_until(lambda: 0 in h.kafka.paused)  # full of messages waiting in `_later`: paused
    handed.set()
    h.turn_until(lambda: len(h.processed()) == 12, timeout=5)
    assert h.settled(0)


def eof(partition: int, offset: int) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset,
                   error=KafkaError(KafkaError._PARTITION_EOF))


@pytest.mark.parametrize("concurrency", [1, 2], ids=["lane", "runs"])
def test_a_partitions_end_fetched_with_its_last_jobs_moves_the_watermark_past_a_marker(
        make: Callable[..., Harness], concurrency: int) -> None:
    """Found in the lane's review, and not the lane's doing (both paths; worker.py `_take` + scheduler.py
    `Scheduler.reached_end` / offsets.py `PartitionOffsets.reached_end`): jobs written in a
    Kafka transaction (offsets 0..2, the commit marker at 3, the end at 4). librdkafka signals
    the end from the fetch after the one that brought the jobs, but a member behind its
    prefetch (a backlog, a slow block) takes both in one consume(). `_take` hands the jobs
    over first, then reports the end, which is ignored because they are unfinished (runs) or
    out in a block (`part.block_out`, the lane); librdkafka reports an end once, so the
    committed offset stays at 3 for good: lag 1 in an idle pipeline, the defect
    tests/integration/test_consumer_lag.py guards against (it passes only because there the
    end comes in a later consume()). Now the scheduler keeps such an end per partition and
    moves the watermark there once everything fetched below it is finished."""
    h = make(lambda _job: None, consumer_concurrency=concurrency)
    h.add(0, *[job(n) for n in range(3)])
    h.kafka.logs[0].append(eof(0, 4))  # handed over in the same consume() as the jobs
    h.assign(0)
    h.turn_until(lambda: len(h.processed()) == 3 and h.member._scheduler.held == 0
                 and h.member._block is None)
    for _ in range(3):
        h.member._turn()
    h.member._store()
    h.kafka.commit()
    assert h.kafka.committed.get(0) == 4, "the committed offset past the commit marker"


def test_a_refusal_fetched_while_a_block_runs_is_raised_at_once_not_after_the_block(
        make: Callable[..., Harness]) -> None:
    """Found in the lane's review, lower stakes (worker.py `_take`): while a block was out,
    everything consume() returned goes to `_later`, error events too; `_on_message_error` runs
    only when the block has ended. An ACL removed while a long job runs
    (TOPIC_AUTHORIZATION_FAILED) is raised (exit 3, one line) only after the whole block, and
    not at all if its partition is revoked or lost first (`_forget` drops it from `_later` with
    the messages); a non-fatal error is logged late, and is counted in held_back/at_risk as if
    it were a job. Runs path: raised on the turn it is fetched. Now `_take` handles error events
    before it holds the messages back (only messages wait for the block)."""
    gate, entered = threading.Event(), threading.Event()

    def handler(job: Job) -> None:
        if job.payload["n"] == 1:
            entered.set()
            gate.wait(10)

    h = make(handler)
    h.add(0, *[job(n, n=n) for n in range(3)])
    h.assign(0)
    try:
        h.turn_until(entered.is_set)
        h.kafka.logs[0].append(Message(topic=TOPIC, partition=0, offset=3, error=KafkaError(
            KafkaError.TOPIC_AUTHORIZATION_FAILED)))
        with pytest.raises(KafkaRefused):
            for _ in range(5):
                h.member._turn()
    finally:
        gate.set()



def test_a_revoke_after_the_lane_closed_redoes_only_what_finished_above_a_job_not_started(
        make: Callable[..., Harness]) -> None:
    """A limit docs/concurrency.md states (found by the lane's review with a randomized
    revoke/loss driver; the per-job path, not the lane's code): with ORDERING=key, once the
    lane has closed (here a message that is no job), jobs taking more than RUN_BUDGET_S run one
    per run, so a key's next job (a2) is made ready only when the one before it (a1) ends, and
    goes behind b3 and c4, which then finish above it. A revoke while c4 runs waits for c4,
    drops a2 (not started) and commits 2: the next owner runs a2, b3 and c4, and nothing else
    twice, and nothing is lost. (A revoke that first runs a2 within its budget would make
    this test's committed offset 5.)"""
    gate, entered = threading.Event(), threading.Event()
    runs: list[int] = []

    def handler(job: Job) -> None:
        runs.append(job.payload["n"])
        if job.payload["n"] == 4:
            entered.set()
            assert gate.wait(10)

    h = make(handler, shutdown_timeout_s=5)  # CONSUMER_CONCURRENCY=1, ORDERING=key (defaults)
    h.member._job_s = 0.05  # jobs of 50 ms so far: one job per run
    h.add(0, b"not a job", job(1, key="a", n=1), job(2, key="a", n=2), job(3, key="b", n=3),
          job(4, key="c", n=4))
    h.assign(0)
    h.turn_until(entered.is_set)
    assert runs == [1, 3, 4], "a2 waits behind b3 and c4"
    h.revoke_in_next_consume(0, first=gate.set)
    assert sorted(e["offset"] for e in h.processed()) == [1, 3, 4]
    assert h.kafka.committed.get(0) == 2  # the next owner runs a2, and b3 and c4 again
    assert h.events("job.handed_back") == []


# ---- what held (the same review: each a path the lane must get right, found right) -----------


def idle(h: Harness) -> None:
    """Every count of the scheduler back to 0, nothing waits for a block."""
    s = h.member._scheduler
    assert (s._held_back, s.held, s.at_risk, s.in_flight, s.runs) == (0, 0, 0, 0, 0), \
        (s._held_back, s.held, s.at_risk, s.in_flight, s.runs)
    assert h.member._later == [] and h.member._block is None


def processed_total() -> float:
    """jobs_processed_total now."""
    return REGISTRY.get_sample_value("jobs_processed_total") or 0.0


def test_a_message_that_is_no_job_mid_block_is_dead_lettered_and_the_rest_run_once(
        make: Callable[..., Harness]) -> None:
    before = processed_total()
    h = make(lambda _j: None, max_attempts=1)
    h.add(0, *[job(n, n=n) for n in range(3)])
    h.add(0, b"not a job")
    h.add(0, *[job(n, n=n) for n in range(4, 7)])
    h.assign(0)
    h.turn_until(lambda: h.settled(0) and h.member._block is None)
    for _ in range(3):
        h.member._turn()
    assert sorted(e["offset"] for e in h.processed()) == [0, 1, 2, 4, 5, 6]
    assert len(h.events("job.dead_lettered")) == 1
    assert h.member.counts.processed == 6 and processed_total() - before == 6
    idle(h)


def test_a_failure_mid_block_keeps_each_keys_order_with_more_waiting_in_later(
        make: Callable[..., Harness]) -> None:
    gate = threading.Event()
    calls: list[tuple[str, int]] = []
    failed = set()

    def handler(j: Job) -> None:
        n = j.payload["n"]
        calls.append((j.key, n))
        if n == 3:
            gate.wait(10)
        if n == 4 and n not in failed:
            failed.add(n)
            raise RuntimeError("once")

    h = make(handler, ordering="key", max_attempts=3)
    keys = ["a", "b"]
    h.add(0, *[job(n, key=keys[n % 2], n=n) for n in range(10)])
    h.assign(0)
    h.turn_until(lambda: len(calls) >= 4)
    h.add(0, *[job(n, key=keys[n % 2], n=n) for n in range(10, 20)])
    for _ in range(3):
        h.member._turn()
    assert h.member._later, "fetched while the block is out"
    gate.set()
    h.turn_until(lambda: h.settled(0) and h.member._block is None)
    for _ in range(3):
        h.member._turn()
    for k in keys:
        ns = [n for key, n in calls if key == k]
        assert ns == sorted(ns), (k, ns)
    done = [e["offset"] for e in h.processed()]
    assert sorted(done) == list(range(20))
    idle(h)


def test_a_revoke_while_messages_wait_in_later_drops_them_and_runs_nothing_twice(
        make: Callable[..., Harness]) -> None:
    gate = threading.Event()
    runs: list[tuple[int, int]] = []

    def handler(j: Job) -> None:
        runs.append((j.payload["p"], j.payload["n"]))
        if j.payload["p"] == 0 and j.payload["n"] == 2:
            gate.wait(10)

    h = make(handler, shutdown_timeout_s=5)
    h.add(0, *[job(n, p=0, n=n) for n in range(5)])
    h.assign(0, 1)
    h.turn_until(lambda: (0, 2) in runs)
    h.add(0, *[job(n, p=0, n=n) for n in range(5, 10)])
    h.add(1, *[job(n, p=1, n=n) for n in range(5)])
    for _ in range(3):
        h.member._turn()
    assert len(h.member._later) == 10
    h.revoke_in_next_consume(0, first=gate.set)
    assert h.member._scheduler._held_back == len(h.member._later)
    assert all(m.partition() == 1 for m in h.member._later)
    assert h.events("job.handed_back") == []
    assert h.kafka.committed.get(0) == 3
    h.turn_until(lambda: h.settled(1))
    h.assign(0)
    h.turn_until(lambda: h.settled(0) and h.member._block is None)
    assert sorted(runs) == sorted(set(runs)), "nothing twice"
    assert len(runs) == 15
    idle(h)


def test_a_partition_lost_and_assigned_back_while_the_block_runs_hands_back_one_job_once(
        make: Callable[..., Harness]) -> None:
    gate = threading.Event()
    lock = threading.Lock()
    state = {"now": 0, "most": 0}
    runs: list[int] = []

    def handler(j: Job) -> None:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        runs.append(j.payload["n"])
        try:
            if j.payload["n"] == 2 and runs.count(2) == 1:
                gate.wait(10)
        finally:
            with lock:
                state["now"] -= 1

    before = processed_total()
    h = make(handler)
    h.add(0, *[job(n, n=n) for n in range(6)])
    h.assign(0)
    h.turn_until(lambda: 2 in runs and len(h.processed()) == 2)
    h.member._store()
    h.kafka.commit()
    h.member._on_lost(None, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    h.kafka.position[0] = h.kafka.committed.get(0, 0)
    h.member._on_assign(None, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    for _ in range(5):
        h.member._turn()
    assert runs.count(2) == 1, "not again while its first call runs"
    gate.set()
    h.turn_until(lambda: h.settled(0) and h.member._block is None)
    for _ in range(3):
        h.member._turn()
    assert state["most"] == 1
    handed = h.events("job.handed_back")
    assert [e["offset"] for e in handed] == [2]
    assert h.member.counts.handed_back == 1
    assert sorted(e["offset"] for e in h.processed()) == list(range(6))
    assert processed_total() - before == h.member.counts.processed == 6
    idle(h)


def block_stuck_at(make: Callable[..., Harness], jobs: int, fails: bool = False) -> tuple[
        Harness, threading.Event]:
    """A block of partition 0's `jobs` jobs, its slot held in job 3 until the returned gate is
    set (then that call fails, if `fails`)."""
    gate, entered = threading.Event(), threading.Event()

    def handler(j: Job) -> None:
        if j.payload["n"] == 3:
            entered.set()
            gate.wait(10)
            if fails:
                raise RuntimeError("boom")

    h = make(handler, shutdown_timeout_s=5)
    h.add(0, *[job(n, n=n) for n in range(jobs)])
    h.assign(0)
    h.turn_until(entered.is_set)
    return h, gate


def test_a_failure_on_a_partition_being_revoked_is_handed_back_once_and_the_rest_committed(
        make: Callable[..., Harness]) -> None:
    h, gate = block_stuck_at(make, 6, fails=True)
    h.revoke_in_next_consume(0, first=gate.set)
    assert [e["offset"] for e in h.events("job.handed_back")] == [3]
    assert h.member.counts.handed_back == 1
    assert h.kafka.committed.get(0) == 3
    for _ in range(3):
        h.member._turn()
    idle(h)


def test_a_stop_while_a_block_runs_finishes_the_job_in_hand_and_stores_it(
        make: Callable[..., Harness]) -> None:
    h, gate = block_stuck_at(make, 8)
    h.member.stop.set()
    threading.Timer(0.3, gate.set).start()
    h.member._finish_in_flight()
    assert sorted(e["offset"] for e in h.processed()) == [0, 1, 2, 3]
    assert h.kafka.stored.get(0) == 4
    assert h.events("job.handed_back") == []


def block_of_two_partitions_stuck_at(make: Callable[..., Harness], p: int) -> tuple[
        Harness, threading.Event, list[tuple[int, int]]]:
    """A block of partition 0's then partition 1's 3 jobs, its slot held in partition `p`'s
    second job until the returned gate is set; the jobs run so far, as (partition, n)."""
    gate, entered = threading.Event(), threading.Event()
    runs: list[tuple[int, int]] = []

    def handler(j: Job) -> None:
        runs.append((j.payload["p"], j.payload["n"]))
        if j.payload["p"] == p and j.payload["n"] == 1:
            entered.set()
            gate.wait(10)

    h = make(handler, shutdown_timeout_s=5)
    h.add(0, *[job(n, p=0, n=n) for n in range(3)])
    h.add(1, *[job(n, p=1, n=n) for n in range(3)])
    h.assign(0, 1)
    h.turn_until(entered.is_set)
    return h, gate, runs


def revoke_timed(h: Harness, partition: int, gate: threading.Event) -> float:
    """Seconds a revoke of `partition` took; the gate is opened after it."""
    t0 = time.monotonic()
    h.revoke(partition)
    took = time.monotonic() - t0
    gate.set()
    return took


def test_a_revoke_of_a_partition_done_in_the_block_does_not_wait_for_a_slow_job_of_another(
        make: Callable[..., Harness]) -> None:
    h, gate, _ = block_of_two_partitions_stuck_at(make, 1)
    assert revoke_timed(h, 0, gate) < 1
    assert h.kafka.committed.get(0) == 3
    h.turn_until(lambda: h.settled(1) and h.member._block is None)
    for _ in range(3):
        h.member._turn()
    idle(h)


def test_a_revoke_of_a_partition_later_in_the_block_skips_it_without_waiting(
        make: Callable[..., Harness]) -> None:
    h, gate, runs = block_of_two_partitions_stuck_at(make, 0)
    assert revoke_timed(h, 1, gate) < 1
    assert h.kafka.committed.get(1) is None
    h.turn_until(lambda: h.settled(0) and h.member._block is None)
    for _ in range(3):
        h.member._turn()
    assert all(p == 0 for p, _ in runs)
    idle(h)
