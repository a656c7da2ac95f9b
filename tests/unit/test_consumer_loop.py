"""The consumer's Kafka loop (consumer_service.worker) driven turn by turn against a scripted
stand-in for librdkafka: the paths that need a rebalance, a dead-letter publish or a pause to
land at one exact moment, which a real broker cannot be made to hit on demand. Each defect
found in the old worker (issue 11) has its regression test here; the same behaviours on a real
broker are in tests/integration/test_consumer*.py.

The stand-in keeps each partition's log, the position, the paused set, the stored and the
committed offsets, and refuses (as librdkafka does, with _STATE) to store an offset for a
partition it does not have. The dead-letter producer answers in `poll`, and can be told to
fail or to hold its answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import REGISTRY

from consumer_service import member_producer, worker
from jobpipe.job import Job
from tests.unit.consumer_stand_ins import TOPIC, FakeProducer, JsonLog, member_parts


class FakeConsumer:
    """What the worker needs of confluent_kafka.Consumer, over in-memory partition logs."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.logs: dict[int, list[Message]] = {}
        self.position: dict[int, int] = {}
        self.assigned: set[int] = set()
        self.paused: set[int] = set()
        self.stored: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.refused_stores: list[tuple[int, int]] = []
        self.pause_log: list[tuple[str, int]] = []

    def subscribe(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        out: list[Message] = []
        for partition in sorted(self.assigned - self.paused):
            log = self.logs.get(partition, [])
            while self.position[partition] < len(log) and len(out) < num_messages:
                out.append(log[self.position[partition]])
                self.position[partition] += 1
        return out

    def poll(self, timeout: float = -1) -> Message | None:
        taken = self.consume(1)
        return taken[0] if taken else None

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            if tp.partition not in self.assigned:
                self.refused_stores.append((tp.partition, tp.offset))
                raise KafkaException(KafkaError(KafkaError._STATE))
            self.stored[tp.partition] = tp.offset

    def commit(self, asynchronous: bool = True) -> None:
        for partition in self.assigned:
            if partition in self.stored:
                self.committed[partition] = self.stored[partition]

    def pause(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.paused.add(tp.partition)
            self.pause_log.append(("pause", tp.partition))

    def resume(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.paused.discard(tp.partition)
            self.pause_log.append(("resume", tp.partition))

    def close(self) -> None:
        return None


class SharedFakeProducer(FakeProducer):
    """FakeProducer with a lock: the member serves the dead-letter producer's answers on a
    thread of its own while its loop publishes (librdkafka's producer is thread-safe)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._lock = threading.RLock()

    def produce(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            super().produce(*args, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        if self.hold or not self.pending:
            time.sleep(min(timeout, 0.01))
            return 0
        with self._lock:
            return super().poll(0)


class Harness:
    """One ConsumerWorker over the stand-ins; the test calls the steps librdkafka would."""

    def __init__(self, member: worker.ConsumerWorker, log: JsonLog) -> None:
        self.member = member
        self.kafka: FakeConsumer = member._consumer  # type: ignore[assignment]
        self.dlq: FakeProducer = member._producer._producer  # type: ignore[attr-defined]
        self._log = log

    def add(self, partition: int, *values: bytes | Job) -> None:
        log = self.kafka.logs.setdefault(partition, [])
        for value in values:
            raw = value.to_bytes() if isinstance(value, Job) else value
            key = value.key.encode() if isinstance(value, Job) else None
            log.append(Message(topic=TOPIC, partition=partition, offset=len(log), key=key, value=raw))

    def assign(self, *partitions: int) -> None:
        for partition in partitions:
            self.kafka.assigned.add(partition)
            self.kafka.position[partition] = self.kafka.committed.get(partition, 0)
        self.member._on_assign(None, [TopicPartition(TOPIC, p) for p in partitions])  # type: ignore[arg-type]

    def revoke(self, *partitions: int) -> None:
        self.member._on_revoke(None, [TopicPartition(TOPIC, p) for p in partitions])  # type: ignore[arg-type]
        self.kafka.assigned -= set(partitions)
        self.kafka.paused -= set(partitions)

    def revoke_in_next_consume(self, partition: int, first: Callable[[], None]) -> None:
        """The next consume() serves a revoke of `partition` (what librdkafka does inside it:
        the revoke callback), after `first()`, and hands over nothing; the test turns until
        it has happened."""
        real_consume = self.kafka.consume

        def consume(num_messages: int = 1, timeout: float = -1) -> list[Message]:
            self.kafka.consume = real_consume  # type: ignore[method-assign]
            first()
            self.revoke(partition)
            return []

        self.kafka.consume = consume  # type: ignore[method-assign]
        self.turn_until(lambda: partition not in self.kafka.assigned)

    def turn_until(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the loop did not get there in time"
            self.member._turn()

    def events(self, name: str) -> list[dict[str, Any]]:
        return self._log.events(name)

    def processed(self) -> list[dict[str, Any]]:
        return self.events("job.processed")

    def settled(self, partition: int) -> bool:
        """Everything in the partition's log is committed."""
        self.member._store()
        self.kafka.commit()
        return self.kafka.committed.get(partition) == len(self.kafka.logs.get(partition, []))


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Harness]]:
    monkeypatch.setattr(worker, "Consumer", FakeConsumer)
    monkeypatch.setattr(member_producer, "Producer", SharedFakeProducer)
    made: list[worker.ConsumerWorker] = []

    def build(function: Callable[[Job], Any], **settings: Any) -> Harness:
        log = JsonLog()
        config, handler = member_parts(function, **settings)
        member = worker.ConsumerWorker(1, config, handler, threading.Event(), threading.Event())
        made.append(member)
        return Harness(member, log)

    yield build
    for member in made:
        member.stop.set()
        member._executor.close(1.0)
    JsonLog.restore()


def job(seq: int, key: str | None = None, **payload: Any) -> Job:
    made = Job.new(3, seq, payload=payload or {"ok": True})
    return made if key is None else msgspec.structs.replace(made, key=key)


def fails_when_told(job: Job) -> None:
    if isinstance(job.payload, dict) and job.payload.get("fail"):
        raise RuntimeError(f"{job.key} was told to fail")


# ---- the regressions of issue 11 -----------------------------------------------------------


def test_a_dead_letter_that_fails_during_another_partitions_revoke_is_retried_and_holds_its_offset(
        make: Callable[..., Harness]) -> None:
    """Old worker: while a revoke callback settled a batch, a failed dead-letter publish for a
    partition NOT being revoked was neither stored nor retried (yet logged "trying again"),
    and that partition's later jobs committed past it: the job was lost."""
    release = threading.Event()

    def handler(job: Job) -> None:
        if job.key == "slow":
            release.wait(10)
        fails_when_told(job)

    h = make(handler, max_attempts=1, ordering="partition", consumer_concurrency=2)
    h.add(0, job(0, key="slow"))
    doomed = job(1, fail=True)
    h.add(1, doomed, job(2))
    h.dlq.hold = True
    h.dlq.failures = 1
    h.assign(0, 1)
    h.turn_until(lambda: len(h.dlq.pending) == 1)
    h.dlq.hold = False  # the revoke waits for partition 0's job, and gets the (failed) answer meanwhile
    threading.Timer(0.3, release.set).start()

    h.revoke(0)

    failed = h.events("job.dead_letter_failed")
    assert len(failed) == 1 and "trying again" in failed[0]["message"]
    assert h.kafka.committed.get(1, 0) == 0, "nothing of partition 1 committed past the dead letter"
    h.turn_until(lambda: h.settled(1))
    assert [Job.from_bytes(m.value()).id for m in h.dlq.published] == [doomed.id]
    assert [e["id"] for e in h.events("job.dead_lettered")] == [doomed.id]


def test_a_partition_revoked_while_its_dead_letter_is_unanswered_is_not_stored_afterwards(
        make: Callable[..., Harness]) -> None:
    """Old worker: a revoke served while it waited for a dead-letter acknowledgement removed the
    partition, then it stored an offset for it: librdkafka refused (_STATE) and the service
    exited 1."""
    h = make(fails_when_told, max_attempts=1, shutdown_timeout_s=0.3)
    h.add(0, job(0, fail=True), job(1))
    h.dlq.hold = True
    h.assign(0)
    h.turn_until(lambda: len(h.dlq.pending) == 1)

    h.revoke(0)  # the answer does not come within the revoke's budget
    handed_back = [e["reason"] for e in h.events("job.handed_back")]
    assert handed_back == ["partition revoked while the job was running"]
    h.dlq.hold = False
    h.turn_until(lambda: not h.dlq.pending)
    h.member._turn()

    assert h.kafka.refused_stores == []
    assert h.events("commit.failed") == []
    assert h.kafka.committed.get(0, 0) == 0, "the next owner dead-letters it again"


def test_a_partition_paused_for_a_retry_stays_paused_while_a_slow_job_runs(
        make: Callable[..., Harness]) -> None:
    """Old worker: after KEEPALIVE_S of a slow job it paused everything, and resumed all of it
    afterwards, including a partition paused for a retry: its later jobs ran before the retry."""
    release = threading.Event()

    def handler(job: Job) -> None:
        if job.key == "slow":
            release.wait(10)
        fails_when_told(job)

    h = make(handler, ordering="partition", max_attempts=3,
             retry_backoff_initial_ms=1500, retry_backoff_max_ms=1500, consumer_concurrency=2)
    h.add(0, job(0, key="a", fail=True), job(1, key="b"))
    h.add(1, job(2, key="slow"))
    h.assign(0, 1)
    h.turn_until(lambda: bool(h.events("job.retry")) and 0 in h.kafka.paused)
    until = time.monotonic() + 0.8  # longer than the old KEEPALIVE_S
    while time.monotonic() < until:
        h.member._turn()
        assert 0 in h.kafka.paused, "the partition waiting for its retry stays paused"
    release.set()
    h.turn_until(lambda: len(h.events("job.retry")) == 2)  # fails again: still in order
    assert [e["key"] for e in h.processed() if e["partition"] == 0] == []


def test_a_dead_letter_published_on_a_second_try_is_logged_with_the_jobs_id(
        make: Callable[..., Harness]) -> None:
    """Old worker: a dead letter retried through `_step` logged job.dead_lettered without `id`."""
    h = make(fails_when_told, max_attempts=2)
    doomed = job(0, fail=True)
    h.add(0, doomed)
    h.dlq.failures = 1
    h.assign(0)
    h.turn_until(lambda: h.settled(0))
    assert [(e["id"], e["key"], e["attempts"]) for e in h.events("job.dead_lettered")] == \
        [(doomed.id, doomed.key, 2)]
    assert len(h.events("job.dead_letter_failed")) == 1


# ---- what the engine promises -----------------------------------------------------------------


def test_concurrent_jobs_keep_each_keys_order_and_all_are_committed(make: Callable[..., Harness]) -> None:
    started: list[tuple[str, int]] = []
    running = [0, 0]  # now, most at once
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            started.append((job.key, job.seq))
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1

    h = make(handler, consumer_concurrency=8)
    for partition in range(2):
        h.add(partition, *[job(partition * 1000 + n, key=f"k{n % 5}") for n in range(60)])
    h.assign(0, 1)
    h.turn_until(lambda: h.settled(0) and h.settled(1))
    assert len(h.processed()) == 120
    assert 1 < running[1] <= 8
    for key in {k for k, _ in started}:
        for partition in range(2):
            seqs = [s for k, s in started if k == key and s // 1000 == partition]
            assert seqs == sorted(seqs), f"{key} on partition {partition} ran out of order"


def test_the_stored_offset_waits_for_the_slowest_unfinished_job(make: Callable[..., Harness]) -> None:
    release = threading.Event()

    def handler(job: Job) -> None:
        if job.key == "slow":
            release.wait(10)

    h = make(handler, consumer_concurrency=4)
    h.add(0, job(0, key="slow"), *[job(n, key=f"k{n}") for n in range(1, 10)])
    h.assign(0)
    h.turn_until(lambda: len(h.processed()) == 9)
    h.member._store()
    assert h.kafka.stored.get(0, 0) == 0, "offset 0 is unfinished: nothing above it is committed"
    release.set()
    h.turn_until(lambda: h.settled(0))


def test_an_async_handler_runs_many_jobs_at_once_on_one_loop(make: Callable[..., Harness]) -> None:
    running = [0, 0]
    loops: set[int] = set()

    async def handler(job: Job) -> None:
        loops.add(id(asyncio.get_running_loop()))
        running[0] += 1
        running[1] = max(running[1], running[0])
        await asyncio.sleep(0.01)
        running[0] -= 1

    h = make(handler, consumer_concurrency=32, ordering="none")
    h.add(0, *[job(n) for n in range(200)])
    h.assign(0)
    h.turn_until(lambda: h.settled(0))
    assert len(h.processed()) == 200
    assert running[1] > 8 and len(loops) == 1


def test_a_full_member_pauses_fetching_and_holds_no_more_than_max_in_flight(
        make: Callable[..., Harness]) -> None:
    release = threading.Event()
    h = make(lambda job: release.wait(10), consumer_concurrency=2, max_in_flight=10)
    h.add(0, *[job(n, key=f"k{n}") for n in range(50)])
    h.assign(0)
    h.turn_until(lambda: 0 in h.kafka.paused)
    for _ in range(5):
        h.member._turn()
    assert h.member._scheduler.held == 10 and h.kafka.position[0] == 10
    release.set()
    h.turn_until(lambda: h.settled(0))
    assert len(h.processed()) == 50


def test_a_stop_finishes_the_job_in_hand_starts_nothing_more_and_stores_what_finished(
        make: Callable[..., Harness]) -> None:
    entered = threading.Event()
    release = threading.Event()

    def handler(job: Job) -> None:
        if job.seq == 3:
            entered.set()
            release.wait(10)

    h = make(handler, ordering="partition", shutdown_timeout_s=5)
    h.add(0, *[job(n) for n in range(100)])
    h.assign(0)
    h.turn_until(entered.is_set)
    h.member.stop.set()
    threading.Timer(0.2, release.set).start()
    h.member._finish_in_flight()
    assert [e["offset"] for e in h.processed()] == [0, 1, 2, 3]
    assert h.kafka.stored[0] == 4


def test_a_job_still_running_when_the_budget_ends_is_handed_back(make: Callable[..., Harness]) -> None:
    entered = threading.Event()
    release = threading.Event()

    def handler(job: Job) -> None:
        entered.set()
        release.wait(10)

    h = make(handler, shutdown_timeout_s=0.5)
    h.add(0, job(0))
    h.assign(0)
    h.turn_until(entered.is_set)
    h.member.stop.set()
    h.member._finish_in_flight()
    release.set()
    assert [e["reason"] for e in h.events("job.handed_back")] == ["still running at shutdown"]
    assert h.kafka.stored.get(0, 0) == 0


def test_a_failed_job_holds_back_the_rest_of_its_key_even_within_one_run(
        make: Callable[..., Harness]) -> None:
    """Quick jobs go to a slot in runs; a job that fails in a run must stop its key's later
    jobs of that run (each message brings its own key object: keys compare by value)."""
    calls: list[tuple[str, int]] = []
    failed: set[int] = set()

    def handler(job: Job) -> None:
        calls.append((job.key, job.seq))
        if job.seq == 0 and job.seq not in failed:
            failed.add(job.seq)
            raise RuntimeError("first attempt fails")

    h = make(handler, ordering="key")
    h.member._job_s = 1e-6  # quick jobs: long runs from the start
    h.add(0, job(0, key="a"), job(1, key="a"), job(2, key="b"), job(3, key="a"))
    h.assign(0)
    h.turn_until(lambda: h.settled(0))
    assert [seq for key, seq in calls if key == "a"] == [0, 0, 1, 3]
    assert [(e["key"], e["offset"]) for e in h.processed()][-3:] == [("a", 0), ("a", 1), ("a", 3)]


async def sleeps_10_ms(_job: Job) -> None:
    await asyncio.sleep(0.01)


def test_a_revoke_served_while_outcomes_wait_to_be_reported_commits_them(
        make: Callable[..., Harness]) -> None:
    """Found in review: with every slot busy the loop collected outcomes, then polled; a revoke
    served by that poll waited for jobs whose outcomes sat in the loop's hands, ran out of
    budget and handed finished jobs back uncommitted (done twice by the next owner). (An
    `async def` handler: jobs go out in runs; the next test is the lane's.)"""
    h = make(sleeps_10_ms, ordering="partition", shutdown_timeout_s=5)
    h.add(0, *[job(n) for n in range(20)])
    h.assign(0)
    real_consume = h.kafka.consume
    armed = threading.Event()

    def consume(num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if armed.is_set():
            armed.clear()
            h.revoke(0)  # what librdkafka does inside consume(): the revoke callback
            return []
        return real_consume(num_messages, timeout)

    h.kafka.consume = consume  # type: ignore[method-assign]
    h.turn_until(lambda: h.member._scheduler.runs == 1)
    armed.set()  # the revoke arrives while the only slot is busy
    h.turn_until(lambda: not armed.is_set() and 0 not in h.kafka.assigned)
    h.member._turn()
    assert h.events("job.handed_back") == []
    done = [e["offset"] for e in h.processed()]
    assert done == list(range(len(done))) and h.kafka.committed.get(0) == len(done)


def test_a_revoke_while_a_block_runs_commits_what_it_finished_and_hands_back_nothing(
        make: Callable[..., Harness]) -> None:
    """The lane (one slot, a plain handler): a fetched batch runs as one block. A revoke while
    its 6th job runs waits for that job only, commits the 6 and starts none of the rest."""
    gate = threading.Event()

    def handler(job: Job) -> None:
        if job.payload["n"] == 5:
            assert gate.wait(10)

    h = make(handler, shutdown_timeout_s=5)
    h.add(0, *[job(n, n=n) for n in range(20)])
    h.assign(0)
    h.turn_until(lambda: len(h.processed()) == 5)  # reported while the block is out
    assert h.member._block is not None
    h.revoke_in_next_consume(0, first=gate.set)
    assert h.events("job.handed_back") == []
    assert [e["offset"] for e in h.processed()] == list(range(6)) and h.kafka.committed.get(0) == 6


def test_a_due_retry_does_not_make_the_loop_spin_while_every_slot_is_busy(
        make: Callable[..., Harness]) -> None:
    """Found in review: a retry due while no slot was free made every turn wait 0 s."""
    release = threading.Event()

    def handler(job: Job) -> None:
        if job.key == "slow":
            release.wait(10)
        fails_when_told(job)

    h = make(handler, ordering="key", max_attempts=5)
    h.add(0, job(0, key="a", fail=True), job(1, key="slow"))
    h.assign(0)
    h.turn_until(lambda: bool(h.events("job.retry")) and h.member._scheduler.runs == 1)
    h.turn_until(lambda: (h.member._scheduler.next_due() or 0) <= time.monotonic())
    try:
        assert h.member._wait_s() == worker.POLL_S, "an outcome is what the loop waits for"
    finally:
        release.set()
    h.turn_until(lambda: h.settled(0))


def test_an_async_handler_whose_await_is_cancelled_fails_its_attempt_not_the_consumer(
        make: Callable[..., Harness]) -> None:
    tries: list[int] = []

    async def handler(job: Job) -> None:
        tries.append(job.seq)
        if len(tries) == 1:
            raise asyncio.CancelledError  # e.g. it awaited a future something else cancelled

    h = make(handler)
    h.add(0, job(0))
    h.assign(0)
    h.turn_until(lambda: h.settled(0))
    assert [e["attempt"] for e in h.processed()] == [2]
    assert "CancelledError" in h.events("job.retry")[0]["error"]


# ---- issue 22: outcomes job by job, a busy key after a loss, counts --------------------------


def quick_then_slow(release: threading.Event, entered: threading.Event) -> Callable[[Job], None]:
    """A handler: the job keyed "slow" waits for `release` (60 s at most), the rest return."""
    def handler(job: Job) -> None:
        if job.key == "slow":
            entered.set()
            release.wait(60)
    return handler


def test_a_finished_job_is_logged_and_stored_while_a_slower_job_of_its_run_still_runs(
        make: Callable[..., Harness]) -> None:
    """Issue 22 defect 1 / issue 28 item 2: a run's outcomes came back only when the whole run
    ended, so five finished jobs waited for the slow sixth: neither logged nor stored."""
    release, entered = threading.Event(), threading.Event()
    h = make(quick_then_slow(release, entered), ordering="none")
    h.member._job_s = 1e-6  # quick jobs so far: the six go to the one slot in one run
    h.add(0, *[job(n, key=f"k{n}") for n in range(5)], job(5, key="slow"))
    h.assign(0)
    try:
        h.member._turn()
        assert h.member._scheduler.runs == 1 and h.member._scheduler.in_flight == 6, "one run of six"
        h.turn_until(lambda: len(h.processed()) == 5 and h.kafka.stored.get(0) == 5, timeout=10)
        assert not release.is_set() and entered.is_set(), "while the slow job still runs"
    finally:
        release.set()
    h.turn_until(lambda: h.settled(0))
    assert [e["offset"] for e in h.processed()] == list(range(6))


def test_a_revoke_during_a_slow_job_commits_the_finished_jobs_of_its_run_without_waiting(
        make: Callable[..., Harness]) -> None:
    """Issue 22 defect 1: a revoke while a slow job ran waited out its whole budget for the
    quick jobs of the slow job's run (their outcomes had not come back), then handed them back
    uncommitted: the next owner ran them again."""
    release, entered = threading.Event(), threading.Event()
    h = make(quick_then_slow(release, entered), ordering="none", shutdown_timeout_s=20)
    h.member._job_s = 1e-6
    h.add(0, *[job(n, key=f"k{n}") for n in range(5)])
    h.add(1, job(5, key="slow"))  # fetched after partition 0's jobs: last in the run
    h.assign(0, 1)
    try:
        h.member._turn()
        assert h.member._scheduler.runs == 1 and h.member._scheduler.in_flight == 6, "one run of six"
        h.turn_until(entered.is_set)
        began = time.monotonic()
        h.revoke(0)
        took = time.monotonic() - began
        assert not release.is_set(), "the slow job was still running when the revoke returned"
    finally:
        release.set()
    assert took < 10, f"the revoke took {took:.1f} s of its 20 s budget (it waits for partition 1)"
    assert h.events("job.handed_back") == []
    assert h.kafka.committed.get(0) == 5, "the five finished jobs are committed"
    assert sorted(e["offset"] for e in h.processed() if e["partition"] == 0) == list(range(5))
    h.turn_until(lambda: h.settled(1))


def test_a_stop_during_a_slow_job_stores_the_finished_jobs_of_its_run_and_hands_back_only_it(
        make: Callable[..., Harness]) -> None:
    """Issue 22 defect 1, on SIGTERM: the quick jobs of the slow job's run were handed back
    with it at the end of the budget, uncommitted."""
    release, entered = threading.Event(), threading.Event()
    h = make(quick_then_slow(release, entered), ordering="none", shutdown_timeout_s=1)
    h.member._job_s = 1e-6
    h.add(0, *[job(n, key=f"k{n}") for n in range(5)], job(5, key="slow"), job(6, key="k6"))
    h.assign(0)
    try:
        h.member._turn()
        assert h.member._scheduler.in_flight == 7, "one run of seven"
        h.turn_until(entered.is_set)
        h.member.stop.set()
        h.member._finish_in_flight()
    finally:
        release.set()
    assert sorted(e["offset"] for e in h.processed()) == list(range(5))
    assert h.kafka.stored.get(0) == 5
    assert [(e["offset"], e["reason"]) for e in h.events("job.handed_back")] == \
        [(5, "still running at shutdown")], "only the job that had started"


def test_a_key_lost_and_assigned_back_does_not_start_again_while_its_earlier_call_runs(
        make: Callable[..., Harness]) -> None:
    """Issue 22 defect 3: after a partition was lost while a key's job ran and came back to the
    same member, `drop` had forgotten the key's lock: the re-fetched job ran alongside the
    earlier call of the same job."""
    release = threading.Event()
    lock = threading.Lock()
    running = {"now": 0, "most": 0, "calls": 0}

    def handler(job: Job) -> None:
        with lock:
            running["now"] += 1
            running["calls"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            release.wait(10)
        finally:
            with lock:
                running["now"] -= 1

    h = make(handler, ordering="key", consumer_concurrency=2)
    h.add(0, job(0, key="a"))
    h.assign(0)
    try:
        h.turn_until(lambda: running["calls"] == 1)
        h.member._on_lost(None, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
        h.assign(0)  # back to this member: fetched again from the committed offset, 0
        h.turn_until(lambda: h.kafka.position[0] == 1 and h.member._scheduler.held == 1)
        for _ in range(20):
            h.member._turn()
        assert running["calls"] == 1, "the job did not start again while its first call ran"
    finally:
        release.set()
    h.turn_until(lambda: h.settled(0))
    assert running["most"] == 1 and running["calls"] == 2
    assert [e["offset"] for e in h.processed()] == [0]


def test_a_job_that_succeeds_after_its_partition_was_lost_is_counted_once_as_handed_back(
        make: Callable[..., Harness]) -> None:
    """Issue 22 defect 2: it was counted handed_back twice (at the loss, then as "processed
    after its partition was lost"), and jobs_processed_total counted the success that the
    partition's next owner redoes."""
    release, entered = threading.Event(), threading.Event()
    h = make(quick_then_slow(release, entered))
    h.add(0, job(0, key="slow"))
    h.assign(0)
    before = REGISTRY.get_sample_value("jobs_processed_total") or 0.0
    h.turn_until(entered.is_set)
    h.member._on_lost(None, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    release.set()
    h.turn_until(lambda: h.member._scheduler.in_flight == 0)
    assert len(h.events("job.handed_back")) == 1
    assert (h.member.counts.handed_back, h.member.counts.processed) == (1, 0)
    assert (REGISTRY.get_sample_value("jobs_processed_total") or 0.0) == before


def test_the_loop_waits_on_events_not_a_short_timer(make: Callable[..., Harness]) -> None:
    """Issue 22 defect 7: with a handler running and a slot free, or while a dead letter waited
    for its acknowledgement, every turn waited 2 ms (25x the idle CPU)."""
    release, entered = threading.Event(), threading.Event()

    def handler(job: Job) -> None:
        if job.key == "slow":
            entered.set()
            release.wait(60)
        fails_when_told(job)

    h = make(handler, consumer_concurrency=2, max_attempts=1)
    waits: list[float] = []
    real_poll, real_collect = h.kafka.poll, h.member._executor.collect

    def poll(timeout: float = -1) -> Message | None:
        waits.append(timeout)
        return real_poll(timeout)

    def collect(timeout: float | None = 0.0) -> list[Any]:
        if timeout:
            waits.append(timeout)
        return real_collect(min(timeout or 0.0, 0.01))  # the test need not wait it out

    h.kafka.poll = poll  # type: ignore[method-assign]
    h.member._executor.collect = collect  # type: ignore[method-assign]
    h.add(0, job(0, key="slow"))
    h.assign(0)
    try:
        h.turn_until(entered.is_set)
        waits.clear()
        for _ in range(5):
            h.member._turn()
        assert waits and min(waits) == worker.POLL_S, "a slot free, a handler running"

        h.dlq.hold = True
        h.add(0, job(1, key="doomed", fail=True))
        h.turn_until(lambda: len(h.dlq.pending) == 1)
        waits.clear()
        for _ in range(5):
            h.member._turn()
        assert waits and min(waits) == worker.POLL_S, "a dead letter waiting for its answer"
    finally:
        release.set()
    h.dlq.hold = False
    h.turn_until(lambda: h.settled(0))
    assert len(h.events("job.dead_lettered")) == 1


# ---- delays (issue 23) -----------------------------------------------------------------------


def later(seq: int, seconds: float, key: str) -> Job:
    due = datetime.now(UTC) + timedelta(seconds=seconds)
    return msgspec.structs.replace(job(seq, key=key), not_before=due)


def test_a_job_due_in_an_hour_is_parked_and_its_offset_committed_only_once_the_copy_is_acked(
        make: Callable[..., Harness]) -> None:
    h = make(fails_when_told)
    parked = later(0, 3 * 3600, "a")
    h.add(0, parked, job(1, key="a"), job(2, key="b"))
    h.dlq.hold = True
    h.assign(0)
    h.turn_until(lambda: len(h.dlq.pending) == 1 and len(h.processed()) == 1)
    assert [e["key"] for e in h.processed()] == ["b"], "its key waits for the copy's ack (milliseconds)"
    assert not h.settled(0) and h.kafka.committed.get(0, 0) == 0, "nothing committed before the copy's ack"
    h.dlq.hold = False
    h.turn_until(lambda: h.settled(0))
    assert {e["key"] for e in h.processed()} == {"a", "b"}, "then the parked job holds nothing back"
    (copy,) = h.dlq.published
    assert copy.topic() == f"{TOPIC}.delay.1h"
    assert Job.from_bytes(copy.value()).id == parked.id
    headers = dict(copy.headers())
    assert headers["delay.tier"] == b"1h"
    assert float(headers["delay.due_ms"]) / 1000 >= parked.not_before.timestamp()  # type: ignore[union-attr]
    assert parked.id not in {e["id"] for e in h.processed()}


def test_a_job_due_in_a_moment_is_held_in_memory_and_holds_back_only_its_key(
        make: Callable[..., Harness]) -> None:
    h = make(fails_when_told)
    soon = later(0, 2.0, "a")  # long enough that a loaded machine still finds it not due
    h.add(0, soon, job(1, key="a"), job(2, key="b"))
    h.assign(0)
    h.turn_until(lambda: len(h.processed()) == 3, timeout=10)
    keys = [e["key"] for e in h.processed()]
    assert keys.index("b") < keys.index("a"), "b ran while a's first job waited"
    assert next(e for e in h.processed() if e["key"] == "a")["id"] == soon.id, "a's order kept"
    assert h.dlq.published == []
    assert h.settled(0)


def test_a_long_back_off_parks_the_retry_with_its_attempts_and_error(make: Callable[..., Harness]) -> None:
    h = make(fails_when_told, retry_backoff_initial_ms=120_000, retry_backoff_max_ms=120_000)
    failing = job(0, key="a", fail=True)
    h.add(0, failing, job(1, key="a"))
    h.assign(0)
    h.turn_until(lambda: len(h.dlq.published) == 1 and len(h.processed()) == 1)
    (copy,) = h.dlq.published
    headers = dict(copy.headers())
    assert copy.topic() == f"{TOPIC}.delay.1m"
    assert (headers["retry.attempts"], headers["retry.error"]) == (b"1", b"RuntimeError: a was told to fail")
    h.turn_until(lambda: h.settled(0))
    (retry,) = h.events("job.retry")
    assert retry["id"] == failing.id and retry["delay_ms"] >= 60_000


def test_a_parked_retry_back_from_its_tier_counts_its_earlier_attempts(make: Callable[..., Harness]) -> None:
    h = make(fails_when_told, max_attempts=3)
    back = job(0, key="a", fail=True)
    log = h.kafka.logs.setdefault(0, [])
    log.append(Message(topic=TOPIC, partition=0, offset=0, key=b"a", value=back.to_bytes(),
                       headers=[("retry.attempts", b"2"), ("delay.due_ms", b"1000")]))
    h.assign(0)
    h.turn_until(lambda: len(h.dlq.published) == 1)
    (letter,) = h.dlq.published
    assert letter.topic() != f"{TOPIC}.delay.5s"
    assert dict(letter.headers())["dlq.attempts"] == b"3", "attempt 3 of 3: dead-lettered"
