"""The share-group member's loop (consumer_service.share_worker) against a scripted stand-in for
librdkafka's ShareConsumer and the dead-letter producer: one poll's records worked through to
their acknowledgements, on the paths a real broker will not hit on demand (a dead letter that
cannot be queued, a poll bigger than its lock, a job that outlives its lock). The same member on
a real broker is in tests/integration/test_share_mode.py.

The stand-in refuses to acknowledge a record twice (librdkafka: IllegalStateException, "no
longer in flight") and keeps every call in order, so a test can see when acknowledgements are
sent (commit_async) relative to the jobs that made them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import pytest
from confluent_kafka import (
    AcknowledgeType,
    IllegalStateException,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import REGISTRY

from consumer_service import member_producer, share_worker
from consumer_service.share_decisions import GroupLimits
from jobpipe.job import Job
from tests.unit.consumer_stand_ins import TOPIC, FakeProducer, JsonLog, member_parts


class FakeShareConsumer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.calls: list[tuple[str, int | None]] = []  # ("ACCEPT"/"RELEASE", offset), ("commit", None)
        self.acked: set[int] = set()
        self.unsent: set[int] = set()  # acknowledged, not yet committed
        self.refuse_commits: KafkaException | None = None  # the broker's answer to every commit
        self.pending: list[Message] = []  # what the next poll returns
        self.when_idle: Callable[[], None] | None = None  # at each empty poll

    def subscribe(self, topics: list[str]) -> None:
        pass

    def poll(self, timeout: float) -> list[Message]:
        """What the test gave this lane to poll (once); else, like librdkafka, nothing after
        `timeout`. The member stops when it holds nothing: the test's poll is settled. Like
        librdkafka's, a poll carries the acknowledgements made since the last one."""
        self.calls.append(("poll", None))
        self._answer()
        if self.pending:
            given, self.pending = self.pending, []
            return given
        if self.when_idle is not None:
            self.when_idle()
        time.sleep(timeout)
        return []

    def set_acknowledgement_commit_callback(self, callback: Any) -> None:
        self.callback = callback

    def acknowledge(self, message: Message, kind: AcknowledgeType) -> None:
        offset = message.offset()
        assert offset is not None
        if offset in self.acked:
            raise IllegalStateException("the message is no longer in flight")
        self.acked.add(offset)
        self.unsent.add(offset)
        self.calls.append((kind.name, offset))

    def _answer(self) -> None:  # librdkafka answers a commit through the callback, later
        if self.unsent:
            self.callback({TopicPartition(TOPIC, 0): set(self.unsent)}, self.refuse_commits)
            self.unsent.clear()

    def commit_async(self) -> None:
        self.calls.append(("commit", None))
        self._answer()

    def commit_sync(self, timeout: float = 60) -> dict[Any, Any]:
        self.calls.append(("commit", None))
        self._answer()
        return {}

    def close(self) -> None:
        self._answer()

    def kinds(self) -> Counter[str]:
        return Counter(kind for kind, offset in self.calls if offset is not None)


class Member:
    def __init__(self, worker: share_worker.ShareWorker, log: JsonLog) -> None:
        self.worker = worker
        self.kafka: FakeShareConsumer = worker._lanes[0].consumer  # type: ignore[assignment]
        self.dlq: FakeProducer = worker._producer._producer  # type: ignore[attr-defined]
        self._log = log

    def settle(self, *messages: Message) -> None:
        """Give the member one poll of `messages` and run its loop until that poll is settled
        (or the test's stop, and the shutdown deadline, end it)."""
        worker = self.worker

        def stop_when_settled() -> None:
            if not worker._unsettled():
                worker.stop.set()
        self.kafka.pending = list(messages)
        for lane in worker._lanes:
            lane.consumer.when_idle = stop_when_settled  # type: ignore[attr-defined]
        worker._work()

    def events(self, name: str) -> list[dict[str, Any]]:
        return self._log.events(name)


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Member]]:
    monkeypatch.setattr(share_worker, "ShareConsumer", FakeShareConsumer)
    monkeypatch.setattr(member_producer, "Producer", FakeProducer)
    made: list[share_worker.ShareWorker] = []

    def build(function: Callable[[Job], Any], limits: GroupLimits | None = None, **settings: Any) -> Member:
        monkeypatch.setattr(share_worker, "group_limits", lambda _settings: limits or GroupLimits())
        log = JsonLog()
        config, handler = member_parts(function, **({"consumer_mode": "share"} | settings))
        worker = share_worker.ShareWorker(1, config, handler, threading.Event(), threading.Event())
        made.append(worker)
        return Member(worker, log)

    yield build
    for worker in made:
        worker.stop.set()
        worker._executor.close(1.0)
    JsonLog.restore()


def record(offset: int, value: bytes | Job, deliveries: int = 1, headers: Any = None) -> Message:
    raw, key = (value.to_bytes(), value.key) if isinstance(value, Job) else (value, None)
    return Message(topic=TOPIC, partition=0, offset=offset, key=key.encode() if key else None, value=raw,
                   headers=headers, delivery_count=deliveries)


def stop_at_the_first_dead_letter(member: Member) -> None:
    """SIGTERM comes while the first dead letter goes out."""
    produce = member.dlq.produce

    def stop_then_produce(*args: Any, **kwargs: Any) -> None:
        member.worker.stop.set()
        produce(*args, **kwargs)
    member.dlq.produce = stop_then_produce  # type: ignore[method-assign]


def job(seq: int, **payload: Any) -> Job:
    return Job.new(3, seq, payload=payload)


def test_a_dead_letter_that_cannot_be_queued_is_tried_again_and_never_dropped_on_the_last_delivery(
        make: Callable[..., Member]) -> None:
    """The DLQ's local queue is full. A record on an earlier delivery is tried again while its
    lock lasts, then released (it comes back, and is dead-lettered again); one on the broker's
    last delivery is tried until the DLQ takes it (released, the broker would drop it). The
    rest of the poll is worked through meanwhile. Before: both released at once, the last one
    lost (`job.dead_letter_failed`, lost: true)."""
    member = make(lambda _job: None, limits=GroupLimits(lock_s=1.5), retry_backoff_initial_ms=20,
                  retry_backoff_max_ms=100)
    tries: Counter[bytes] = Counter()
    produce = member.dlq.produce

    def queue_full_for_a_while(topic: str, key: bytes | None = None, value: bytes | None = None,
                               headers: Any = None, on_delivery: Callable[..., None] | None = None) -> None:
        assert value is not None
        tries[value] += 1
        if value == b"not a job" or tries[value] <= 3:
            raise BufferError("Local: Queue full")
        produce(topic, key, value, headers, on_delivery)
    member.dlq.produce = queue_full_for_a_while  # type: ignore[method-assign]
    last = job(2)
    member.settle(record(0, b"not a job"), record(1, job(1)), record(2, last, deliveries=5))
    assert member.kafka.calls.count(("RELEASE", 0)) == 1 and tries[b"not a job"] > 2
    assert ("ACCEPT", 1) in member.kafka.calls and ("ACCEPT", 2) in member.kafka.calls
    assert [m.value() for m in member.dlq.published] == [last.to_bytes()], "last delivery: in the DLQ"
    assert [e["lost"] for e in member.events("job.dead_letter_failed")] == [False]
    assert len(member.events("job.processed")) == 1, "only the job that was not dead-lettered ran"


def test_a_job_is_dead_lettered_one_delivery_before_the_brokers_last(make: Callable[..., Member]) -> None:
    """So a dead letter that fails there still has a delivery to be tried again on."""
    ran: list[int] = []
    member = make(lambda one: ran.append(one.seq), limits=GroupLimits(delivery_limit=5))
    member.settle(record(0, job(0), deliveries=3), record(1, job(1), deliveries=4))
    assert ran == [0]
    assert [e["offset"] for e in member.events("job.dead_lettered")] == [1]
    assert member.kafka.kinds() == Counter({"ACCEPT": 2})


def test_a_stop_releases_a_waiting_dead_letter_unless_it_is_on_its_last_delivery(
        make: Callable[..., Member]) -> None:
    """SIGTERM while the DLQ does not answer: an earlier delivery is released at once (it is
    dead-lettered on the next), the last delivery's dead letter is waited for within the
    shutdown budget, and published."""
    member = make(lambda _job: None, shutdown_timeout_s=5)
    member.dlq.failures = 2  # the first two answers: timed out
    stop_at_the_first_dead_letter(member)
    member.settle(record(0, job(0), deliveries=4), record(1, job(1), deliveries=5))
    member.worker._close()
    assert member.kafka.calls.count(("RELEASE", 0)) == 1 and ("ACCEPT", 1) in member.kafka.calls
    assert [e["offset"] for e in member.events("job.dead_lettered")] == [1]
    assert [(e["offset"], e["lost"]) for e in member.events("job.dead_letter_failed")] == [(0, False)]


def test_waiting_for_a_retry_does_not_spin(make: Callable[..., Member]) -> None:
    calls = []

    def fails_once(_job: Job) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("once")
    member = make(fails_once, retry_backoff_initial_ms=400, retry_backoff_max_ms=400)
    member.settle(record(0, job(0)))
    assert member.kafka.kinds() == Counter({"ACCEPT": 1}) and len(calls) == 2
    assert member.dlq.polls < 100, f"{member.dlq.polls} turns while waiting 0.2-0.4 s for one retry"


@pytest.mark.parametrize("concurrency", [1, 2])
def test_acknowledgements_are_sent_as_they_are_made_not_when_the_poll_ends(
        make: Callable[..., Member], concurrency: int) -> None:
    """A fast job's ACCEPT reaches the broker while a slow job of the same poll still runs,
    also when both are in one run of a handler slot (CONSUMER_CONCURRENCY=1)."""
    slow_started = threading.Event()
    release = threading.Event()

    def handler(one: Job) -> None:
        if one.seq == 1:
            slow_started.set()
            assert release.wait(10)
    member = make(handler, consumer_concurrency=concurrency)

    def fast_one_sent() -> bool:
        calls = list(member.kafka.calls)
        return ("ACCEPT", 0) in calls and ("commit", None) in calls[calls.index(("ACCEPT", 0)) + 1:]

    def free_the_slow_job_once_the_fast_one_is_sent() -> None:
        deadline = time.monotonic() + 10
        while not fast_one_sent() and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
    watcher = threading.Thread(target=free_the_slow_job_once_the_fast_one_is_sent, daemon=True)
    watcher.start()
    member.settle(record(0, job(0)), record(1, job(1)))
    watcher.join(10)
    calls = member.kafka.calls
    assert calls.index(("ACCEPT", 0)) < calls.index(("commit", None)) < calls.index(("ACCEPT", 1))


def test_jobs_that_cannot_start_inside_their_lock_are_released_unstarted(
        make: Callable[..., Member]) -> None:
    """A poll of 30 jobs of 0.1 s with a 1.5 s lock (1 s to start them): the ones not started by
    then go back at once; each record is acknowledged once, the ones that ran accepted."""
    member = make(lambda _job: time.sleep(0.1), limits=GroupLimits(lock_s=1.5))
    member.settle(*(record(n, job(n)) for n in range(30)))
    kinds = member.kafka.kinds()
    assert sum(kinds.values()) == 30 and kinds["RELEASE"] > 0
    assert kinds["ACCEPT"] == len(member.events("job.processed")) > 0
    assert member.events("share.poll_too_big")[0]["released"] == kinds["RELEASE"]


def test_a_job_that_ends_after_its_lock_is_reported(make: Callable[..., Member]) -> None:
    member = make(lambda _job: time.sleep(1.1), limits=GroupLimits(lock_s=1.0))
    member.settle(record(0, job(0)))
    assert member.events("job.processed"), "the job ran (a poll's first job starts at once)"
    overrun = member.events("share.lock_overrun")
    assert len(overrun) == 1 and "share.record.lock.duration.ms" in overrun[0]["message"]


def test_one_very_long_job_does_not_stop_the_member_from_starting_jobs(make: Callable[..., Member]) -> None:
    """The moving average of attempt durations can grow past the lock after one long job; the
    member still starts the next poll's jobs (and so brings the average down)."""
    member = make(lambda _job: None, limits=GroupLimits(lock_s=1.5))
    member.worker._job_s = 100.0  # as after a job far longer than the lock
    member.settle(*(record(n, job(n)) for n in range(3)))
    assert member.kafka.kinds()["ACCEPT"] >= 1


def test_a_stop_releases_what_has_not_started_and_lets_the_running_job_finish(
        make: Callable[..., Member]) -> None:
    def stops_the_member(_job: Job) -> None:  # the stop arrives while this job runs
        member.worker.stop.set()
        time.sleep(0.05)
    member = make(stops_the_member, shutdown_timeout_s=10)
    member.settle(*(record(n, job(n)) for n in range(5)))
    assert member.kafka.kinds() == Counter({"ACCEPT": 1, "RELEASE": 4})


def test_a_dead_letter_unanswered_at_the_shutdown_deadline_is_reported_lost_on_its_last_delivery(
        make: Callable[..., Member]) -> None:
    member = make(lambda _job: None, shutdown_timeout_s=1)
    member.dlq.hold = True
    stop_at_the_first_dead_letter(member)
    member.settle(record(0, job(0), deliveries=5))
    member.worker._close()
    failed = member.events("job.dead_letter_failed")
    assert len(failed) == 1 and failed[0]["lost"] is True and failed[0]["level"] == "ERROR"
    assert member.kafka.kinds() == Counter({"RELEASE": 1})


def test_the_share_member_does_not_load_the_group_member() -> None:
    """share_worker needs the counts only, not the consumer-group member's module (worker.py)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, consumer_service.share_worker; "
         "print('consumer_service.worker' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "False"


@pytest.mark.parametrize("refused", [False, True])
def test_a_job_counts_as_processed_only_once_the_broker_takes_its_accept(
        make: Callable[..., Member], refused: bool) -> None:
    """An ACCEPT the broker refuses (the lock had ended) leaves the job with the broker, which
    delivers it again: it counts as handed back, not processed (also in jobs_processed_total:
    issue 22 defect 2)."""
    member = make(lambda _job: None)
    if refused:
        member.kafka.refuse_commits = KafkaException(KafkaError(KafkaError.INVALID_RECORD_STATE))
    before = REGISTRY.get_sample_value("jobs_processed_total") or 0.0
    member.settle(record(0, job(0)))
    member.worker._close()
    counts = member.worker.counts
    assert (counts.processed, counts.handed_back) == ((0, 1) if refused else (1, 0))
    assert (REGISTRY.get_sample_value("jobs_processed_total") or 0.0) - before == (0 if refused else 1)
    assert [e["settled"] for e in member.events("ack.refused")] == ([1] if refused else [])


def test_jobs_that_came_back_start_before_fresh_ones(make: Callable[..., Member]) -> None:
    """Every release uses up a delivery, and a job is dead-lettered without running on its
    dead-letter delivery: a job released unstarted once (its poll too big, a stop) starts
    first on its next delivery, instead of being released again behind fresh jobs. Here a poll
    of 30 jobs of 0.1 s with a 1.5 s lock, the last 5 delivered before: those 5 run."""
    member = make(lambda _job: time.sleep(0.1), limits=GroupLimits(lock_s=1.5))
    member.settle(*(record(n, job(n), deliveries=1 if n < 25 else 3) for n in range(30)))
    accepted = {offset for kind, offset in member.kafka.calls if kind == "ACCEPT"}
    assert set(range(25, 30)) <= accepted and member.kafka.kinds()["RELEASE"] > 0


@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_async_handler_runs_every_job_of_the_poll(make: Callable[..., Member], concurrency: int) -> None:
    seen: list[int] = []

    async def handler(one: Job) -> None:
        seen.append(one.seq)
    member = make(handler, consumer_concurrency=concurrency)
    member.settle(*(record(n, job(n)) for n in range(20)))
    assert sorted(seen) == list(range(20))
    assert member.kafka.kinds() == Counter({"ACCEPT": 20})
    member.worker._close()
    assert member.worker.counts.processed == 20


def test_while_a_slow_job_holds_one_lane_another_lane_polls_and_runs_quick_jobs(
        make: Callable[..., Member]) -> None:
    """librdkafka refuses a lane's next poll while its slow job is unacknowledged; the
    member's other lane polls, and its jobs run on the free slot meanwhile."""
    quick_done = threading.Event()
    quick: list[int] = []

    def handler(one: Job) -> None:
        if one.seq == 0:
            assert quick_done.wait(10), "the quick jobs did not run while the slow one did"
        else:
            quick.append(one.seq)
            if len(quick) == 5:
                quick_done.set()
    member = make(handler, consumer_concurrency=2)
    first, second = (cast(FakeShareConsumer, lane.consumer) for lane in member.worker._lanes)
    second.pending = [record(n, job(n)) for n in range(1, 6)]
    member.settle(record(0, job(0)))
    assert sorted(quick) == [1, 2, 3, 4, 5]
    assert first.kinds() == Counter({"ACCEPT": 1}) and second.kinds() == Counter({"ACCEPT": 5})


def due_in(seconds: float, seq: int) -> Job:
    return msgspec.structs.replace(job(seq), not_before=datetime.now(UTC) + timedelta(seconds=seconds))


TRACE = [("trace", b"t-1")]  # a header of the submitted job, kept on its parked copy


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_a_job_whose_time_has_not_come_is_parked_and_accepted_once_its_tier_holds_it(
        make: Callable[..., Member]) -> None:
    """A share member never holds a job for its time (its lock would end): a job due in 90 s
    goes to the 1 min tier, one due in 2 s to the 5 s tier (released at its due time), each
    with its key, value and headers plus the `delay.*` ones; its record is ACCEPTed only after
    the broker acknowledged the copy. A due one runs, its lateness counted. Before: the waiting
    ones were dead-lettered (DelayedJobRefused)."""
    ran: list[int] = []
    member = make(lambda one: ran.append(one.seq))
    later, soon = due_in(90, 0), due_in(2, 1)
    due = msgspec.structs.replace(job(2), not_before=datetime.now(UTC) - timedelta(seconds=1))
    parked_before = {tier: metric("jobs_parked_total", {"tier": tier}) for tier in ("5s", "1m")}
    late_before = metric("delayed_job_late_seconds_count")
    seen_at_answer: list[set[tuple[str, int | None]]] = []
    answer = member.dlq.poll

    def answer_after_looking(timeout: float = 0) -> int:  # what was acknowledged when copies were answered
        if member.dlq.pending:
            seen_at_answer.append(set(member.kafka.calls))
        return answer(timeout)
    member.dlq.poll = answer_after_looking  # type: ignore[method-assign]
    member.settle(record(0, later, headers=TRACE), record(1, soon, headers=TRACE), record(2, due))
    assert ran == [2], "only the due job ran"
    copies = {message.value(): message for message in member.dlq.published}
    assert set(copies) == {later.to_bytes(), soon.to_bytes()}, "no dead letter"
    for one, tier in ((later, "1m"), (soon, "5s")):
        copy = copies[one.to_bytes()]
        headers = dict(copy.headers())
        assert one.key and (copy.topic(), copy.key()) == (f"jobs.delay.{tier}", one.key.encode())
        assert headers["trace"] == b"t-1" and headers["delay.tier"] == tier.encode()
        assert int(headers["delay.due_ms"]) / 1000 >= one_due(one)
        release_s = int(headers["delay.release_ms"]) / 1000
        assert release_s <= int(headers["delay.due_ms"]) / 1000, "never released after its due time"
    soon_headers = dict(copies[soon.to_bytes()].headers())
    assert soon_headers["delay.release_ms"] == soon_headers["delay.due_ms"], "released when due, not in 5 s"
    assert seen_at_answer, "the copies were answered"
    assert not any(("ACCEPT", 0) in seen or ("ACCEPT", 1) in seen for seen in seen_at_answer), \
        "a record accepted before its copy was acknowledged"
    assert member.kafka.kinds() == Counter({"ACCEPT": 3})
    assert metric("jobs_parked_total", {"tier": "1m"}) == parked_before["1m"] + 1
    assert metric("jobs_parked_total", {"tier": "5s"}) == parked_before["5s"] + 1
    assert metric("delayed_job_late_seconds_count") == late_before + 1
    member.worker._close()
    assert (member.worker.counts.processed, member.worker.counts.dead_lettered) == (1, 0)


def one_due(one: Job) -> float:
    assert one.not_before is not None
    return one.not_before.timestamp()


@pytest.mark.parametrize("how", ["answer", "queue"])
def test_a_parked_copy_that_fails_is_published_again_then_released_never_dropped(
        make: Callable[..., Member], how: str) -> None:
    """The tier does not take the copy (answers an error, or the local queue is full): the copy
    goes again while the lock lasts; when the lock runs out the record is RELEASEd (the broker
    delivers it again, and it is parked then), never accepted without a copy, never
    dead-lettered."""
    member = make(lambda _job: None, limits=GroupLimits(lock_s=1.5), retry_backoff_initial_ms=20,
                  retry_backoff_max_ms=100)
    if how == "answer":
        member.dlq.failures = 10**6
    else:
        member.dlq.refuse = True
    member.settle(record(0, due_in(60, 0)))
    assert member.kafka.kinds() == Counter({"RELEASE": 1})
    assert not member.dlq.published
    assert len(member.events("job.parked_copy_retry")) >= 2
    (failed,) = member.events("job.parked_copy_failed")
    assert failed["lost"] is False and "parked again" in failed["message"]


def test_a_parked_copy_that_fails_once_goes_again_and_its_record_is_accepted(
        make: Callable[..., Member]) -> None:
    member = make(lambda _job: None, retry_backoff_initial_ms=20, retry_backoff_max_ms=100)
    member.dlq.failures = 2
    waiting = due_in(60, 0)
    member.settle(record(0, waiting))
    assert [m.value() for m in member.dlq.published] == [waiting.to_bytes()]
    assert member.kafka.kinds() == Counter({"ACCEPT": 1})
    assert len(member.events("job.parked_copy_retry")) == 2


def test_a_stop_while_a_copy_is_unanswered_waits_for_it_then_releases_the_record(
        make: Callable[..., Member]) -> None:
    """SIGTERM while the tier does not answer: the record is released when the member leaves
    (its copy may or may not be in the tier: at-least-once), never accepted without a copy."""
    member = make(lambda _job: None, shutdown_timeout_s=1)
    member.dlq.hold = True
    stop_at_the_first_dead_letter(member)
    member.settle(record(0, due_in(60, 0)))
    member.worker._close()
    assert member.kafka.kinds() == Counter({"RELEASE": 1})
    assert [e["lost"] for e in member.events("job.parked_copy_failed")] == [False]


def test_a_run_whose_jobs_were_all_taken_before_its_end_was_reported_frees_its_slot(
        make: Callable[..., Member]) -> None:
    """A run's attempts reach the loop as they end, its end (the slot free again) after its
    last one. When the loop took the last attempt before the end was reported (here: the end
    comes 0.7 s after the job, past the loop's 0.5 s wait), the slot must still come back, and
    the next poll's job run. Before: the loop only looked for ends while an attempt was
    running, so the slot stayed taken and the member polled nothing more until it stopped."""
    ran: list[int] = []
    member = make(lambda one: ran.append(one.seq))

    class EndsLate(deque[Any]):
        def append(self, attempt: Any) -> None:  # the handler thread, as each attempt ends
            super().append(attempt)
            time.sleep(0.7)
    member.worker._runner.finished = EndsLate()
    polls = [[record(1, job(1))]]
    poll = member.kafka.poll

    def then_another(timeout: float) -> list[Message]:
        given = poll(timeout)
        if given and polls:
            member.kafka.pending = polls.pop()
        return given
    member.kafka.poll = then_another  # type: ignore[method-assign]
    working = threading.Thread(target=member.settle, args=(record(0, job(0)),), daemon=True)
    working.start()
    working.join(10)
    stuck = working.is_alive()
    member.worker.stop.set()
    working.join(10)
    assert not stuck, "the member was still at work 10 s after its two jobs were given"
    assert ran == [0, 1] and member.kafka.kinds() == Counter({"ACCEPT": 2})


def test_a_settled_polls_acknowledgements_are_sent_at_once(make: Callable[..., Member]) -> None:
    """A poll's jobs all done, here as a stop comes: the poll's ACCEPTs go on their own at once
    (not left for a next poll, nor only sent when the member leaves)."""
    def stops_the_member(one: Job) -> None:
        if one.seq == 2:
            member.worker.stop.set()
    member = make(stops_the_member)
    member.settle(*(record(n, job(n)) for n in range(3)))
    calls = member.kafka.calls
    last_accept = max(i for i, call in enumerate(calls) if call[0] == "ACCEPT")
    assert ("commit", None) in calls[last_accept:], calls
    assert member.worker.counts.processed == 3, "answered before the member leaves"
