"""What a share-group member (share_worker.py) holds: its lanes (share consumers), the records
they polled, the runs of records on its handler slots, and its acknowledgements until the
broker confirms them.

Why it exists: the member's loop decides what happens to each record; these are the parts it
carries those decisions out with, each the one owner of its state, so the loop stays readable:
- Lane: librdkafka refuses a new poll while a record of the last one is unacknowledged, so
  with one consumer a slow job held the whole member (its free handler slots idle until the
  slow job ended). A member has a few (MAX_LANES, never more than CONSUMER_CONCURRENCY): while
  one waits for a slow job, another polls. Each is a member of the share group to the broker.
- RecordRunner: a run of records on one handler slot, one after another (one thread hand-off
  per run, not per job), each attempt handed back as it ends.
- Acknowledgements: marks records ACCEPT/RELEASE, sends them, and counts a job processed (or
  dead-lettered, or handed back) only once the broker confirmed its acknowledgement (a parked
  one counts nowhere there: it is counted when its copy is acknowledged).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from confluent_kafka import (
    AcknowledgeType,
    IllegalStateException,
    KafkaException,
    Message,
    ShareConsumer,
    TopicPartition,
)

from consumer_service.counts import Counts
from consumer_service.parking import Parking
from jobpipe import metrics
from jobpipe.handling import Attempt, JobHandler
from jobpipe.job import Job
from jobpipe.logs import event

# What a confirmed acknowledgement counts as (None: nothing; a parked job counts in jobs_parked_total).
Outcome = Literal["processed", "dead_lettered", "handed_back"] | None

ACK_SEND_S = 0.1  # acknowledgements made during a poll are sent at least this often
RUN_BUDGET_S = 0.002  # about how much handler time one run of records holds (see ShareWorker._run_length)
RUN_OVERRUN = 4  # a run stops starting records after RUN_BUDGET_S x this (its jobs were slower than expected)


@dataclass(eq=False, slots=True)
class Lane:
    """One ShareConsumer of the member and the poll it has in hand."""

    consumer: ShareConsumer
    polled_at: float = 0.0  # when its poll in hand was asked for (its records' locks start)
    ready: deque[Record] = field(default_factory=deque)  # not started yet, in start order
    unsettled: int = 0  # records of its poll not yet acknowledged
    to_send: int = 0  # acknowledgements made since its last commit
    sent_at: float = 0.0


class Record(msgspec.Struct, eq=False, gc=False):
    """A record in hand: what was tried, and what it is waiting for. A Struct outside the
    garbage collector (made in 0.04 us, a dataclass in 0.23; each object a poll holds that the
    collector tracks adds to its passes): nothing it refers to refers back to it, except its
    lane's queue while it waits there, so it is freed when the member lets go of it."""

    message: Message
    lane: Lane
    job: Job | None = None
    ended: Attempt | None = None  # its attempt that ended, until the member's loop takes it
    attempts: int = 0  # handler calls made on this delivery
    running: bool = False
    publishing: bool = False  # its dead letter or parked copy is with the member's producer
    republish: bool = False  # that failed and waits to be published again
    failed_publishes: int = 0  # of its dead letter or parked copy, on this delivery
    settled: bool = False
    reason: str = ""  # why it is being dead-lettered
    parking: Parking | None = None  # not due yet: where its copy is parked (then accepted)
    due: float | None = None  # a delayed job that is due: when (epoch s), until its lateness is counted

    @property
    def deliveries(self) -> int:
        return self.message.delivery_count() or 1

    @property
    def polled_at(self) -> float:
        return self.lane.polled_at


class RecordRunner:
    """Runs a run of records on a handler slot (the executor calls `run` or `run_async`)."""

    def __init__(self, handler: JobHandler, stop: threading.Event) -> None:
        self._handler = handler
        self._stop = stop
        self.finished: deque[Record] = deque()  # attempts ended (`Record.ended`): handler threads append

    def run(self, run: tuple[list[Record], float]) -> int:
        """The records one after another. Each attempt goes to `finished` as it ends, so a
        quick job's outcome never waits for a slow one after it. It stops starting at a stop,
        after about RUN_BUDGET_S x RUN_OVERRUN, or once the records' start_by (their lock) has
        passed; returns how many it started (the rest go back to their queue)."""
        records, start_by = run
        attempt = self._handler.attempt
        finished = self.finished.append
        clock = time.monotonic
        stopping = self._stop.is_set
        ends = min(start_by, clock() + RUN_BUDGET_S * RUN_OVERRUN)
        started = 0
        for record in records:
            if started and (stopping() or clock() >= ends):
                break
            assert record.job is not None
            started += 1
            record.ended = attempt(record.job, record.attempts)
            finished(record)
        return started

    async def run_async(self, run: tuple[list[Record], float]) -> int:
        records, start_by = run
        attempt = self._handler.attempt_async
        ends = min(start_by, time.monotonic() + RUN_BUDGET_S * RUN_OVERRUN)
        started = 0
        for record in records:
            if started and (self._stop.is_set() or time.monotonic() >= ends):
                break
            assert record.job is not None
            started += 1
            record.ended = await attempt(record.job, record.attempts)
            self.finished.append(record)
        return started


class Acknowledgements:
    """A member's acknowledgements, from marking a record to the broker's answer."""

    def __init__(self, counts: Counts, consumer: str) -> None:
        self._counts = counts
        self._name = consumer
        self._refused: list[tuple[int, int, str]] = []  # refused (acknowledgements, of them ACCEPTs, why)
        # acknowledgements sent and not yet answered, by topic and partition, then offset: what
        # each one counts as once confirmed (no key object per record)
        self._confirming: dict[tuple[str, int], dict[int, Outcome]] = {}

    def mark(self, record: Record, kind: AcknowledgeType, outcome: Outcome) -> None:
        """Mark the record; it counts as `outcome` once the broker confirms (`answered`)."""
        self.mark_all((record,), kind, outcome)

    def mark_all(self, records: Iterable[Record], kind: AcknowledgeType, outcome: Outcome) -> None:
        """`mark` each of `records` (one call for a run's successes: the per-job path)."""
        confirming = self._confirming
        for record in records:
            if record.settled:
                continue
            record.settled = True
            lane = record.lane
            lane.unsettled -= 1
            message = record.message
            try:
                lane.consumer.acknowledge(message, kind)
            except IllegalStateException as error:  # no longer in flight: the broker has it back
                self._counts.handed_back += 1
                event("ack.refused", f"{self._name}: could not acknowledge partition {message.partition()} "
                      f"offset {message.offset()} ({error})", level="WARNING", consumer=self._name)
                continue
            partition = (message.topic() or "", message.partition() or 0)
            offsets = confirming.get(partition)
            if offsets is None:
                offsets = confirming[partition] = {}
            offsets[message.offset() or 0] = outcome
            lane.to_send += 1

    def answered(self, offsets: dict[TopicPartition, set[int]], error: KafkaException | None) -> None:
        """librdkafka's answer to an acknowledgement commit (its callback, on the member's
        thread, within a poll or a commit): a job counts as processed (or dead-lettered, or
        released) only now that the broker took its acknowledgement. A refused one (its lock
        had ended) is back with the broker, which delivers it again: it counts as handed back."""
        outcomes: Counter[Outcome] = Counter()
        for tp, found in offsets.items():
            confirming = self._confirming.get((tp.topic, tp.partition), {})
            outcomes.update(confirming.pop(offset, "handed_back") for offset in found)
        counts = self._counts
        if error is None:
            counts.processed += outcomes["processed"]
            counts.dead_lettered += outcomes["dead_lettered"]
            counts.handed_back += outcomes["handed_back"]
            metrics.count_processed(outcomes["processed"])
            return
        answered = outcomes.total()
        counts.handed_back += answered
        self._refused.append((answered, answered - outcomes["handed_back"], str(error)))

    def send(self, lanes: list[Lane], now: float) -> None:
        """Send each lane's acknowledgements: at once when its poll is settled (it may not poll
        again soon), else at least every ACK_SEND_S (the next poll would carry them). Not left
        for the next poll even when that comes at once: a poll that carries acknowledgements
        waits for the broker to take them before it fetches (with 5 ms jobs, 8 to a poll, one
        member did 129-154 jobs/s that way instead of 160-170), where a request of their own
        goes beside the poll (it costs the broker more: 4 us a no-op job instead of 2)."""
        for lane in lanes:
            if lane.to_send and (not lane.unsettled or now - lane.sent_at >= ACK_SEND_S):
                lane.to_send = 0
                lane.sent_at = now
                lane.consumer.commit_async()
        self.report_refusals()

    def report_refusals(self) -> None:
        for count, settled, error in self._refused:
            event("ack.refused", f"{self._name}: the broker refused {count} acknowledgement(s), {settled} "
                  f"of them for jobs done, parked or dead-lettered here: {error} (their lock had ended; the "
                  "broker delivers them again)", level="WARNING", consumer=self._name, refused=count,
                  settled=settled, error=error)
        self._refused.clear()

    def commit(self, lane: Lane, timeout: float) -> None:
        """Commit what the lane has marked, waiting up to `timeout` (before it leaves)."""
        try:
            results = lane.consumer.commit_sync(timeout)
            failed = {f"{tp.topic}[{tp.partition}]": str(error) for tp, error in results.items() if error}
            if failed:
                event("commit.failed", f"{self._name}: acknowledgements refused for {failed}",
                      level="WARNING", consumer=self._name, partitions=failed)
        except KafkaException as error:
            event("commit.failed", f"{self._name} could not commit its acknowledgements: {error}",
                  level="WARNING", consumer=self._name)
