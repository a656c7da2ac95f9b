"""One member of a share group (CONSUMER_MODE=share, KIP-932): a job queue on Kafka.

Why it exists: in a consumer group each partition has one member, so replicas past the
partition count sit idle. In a share group every member reads every partition; the broker
hands each record to one member under a time-limited lock (`share.record.lock.duration.ms`,
30 s by default) and counts its deliveries. The member acknowledges each record: ACCEPT (done),
RELEASE (give it back for redelivery, possibly elsewhere) or REJECT (never used here: a job
that cannot be done goes to the DLQ first, then is accepted).

How (what to do with each record is decided by share_decisions; this module carries it out,
with the parts in share_records):
- the member polls through up to MAX_LANES share consumers (librdkafka refuses a new poll
  while a record of the last one is unacknowledged, so a lane with a slow job waits and
  another polls while a handler slot is free);
- records run on the executor in short runs (CONSUMER_CONCURRENCY slots, no order between
  them; records delivered before go first), if they can start early enough to end inside
  their lock; the others are released unstarted (the broker hands out whole record batches,
  so a poll can hold more than a lock's worth);
- success: ACCEPT; a job counts as processed once the broker confirms the acknowledgement;
- a failed attempt: retried by this member with the retry policy's backoff while the lock
  allows; else RELEASE, and the broker redelivers it (its delivery count rises);
- MAX_ATTEMPTS attempts on one delivery, the delivery before the broker's last (a handler
  that kills the process brings its job back each time), or a message that is not a job:
  published to DLQ_TOPIC with the usual headers and ACCEPTed once the DLQ holds it; a failed
  dead letter is published again while the lock lasts, then released (the broker's last
  delivery is the spare); on the last delivery it is never released (the broker would drop
  it): published again until the DLQ takes it;
- acknowledgements are sent while a poll is worked through (commit_async, every 0.1 s at
  most), so a fast job's ACCEPT does not wait for a slow one;
- a job whose time has not come (`not_before`, or a parked retry's due time): never held
  (its lock would end first), even for a second: a copy is parked in a delay tier at once
  (share_decisions.parking; the copy as a group member makes it, consumer_service.parking) and
  the record ACCEPTed once the tier holds it; a copy that fails goes again, or the record is
  released, as a dead letter. The member runs a tier mover (consumer_service.tier_mover), as a
  group member does, that brings due copies back to JOBS_TOPIC;
- a stop: nothing more starts, what is running finishes within the shutdown budget, the rest
  is RELEASEd (a dead letter on its last delivery is waited for); dead letters and parked
  copies are flushed, the acknowledgements committed, the lanes leave.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import (
    AcknowledgeType,
    KafkaError,
    KafkaException,
    Message,
    ShareConsumer,
)
from confluent_kafka.admin import AdminClient

from consumer_service.counts import Counts
from consumer_service.dead_letters import dead_letter_record
from consumer_service.member_producer import MemberProducer
from consumer_service.parking import Parking, count_parked, parked_copy
from consumer_service.runner import attempts_before
from consumer_service.settings import ConsumerSettings
from consumer_service.share_decisions import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_LOCK_S,
    GroupLimits,
    Verdict,
    after_attempt,
    after_publish,
    before_start,
    on_delivery,
    parking,
)
from consumer_service.share_records import RUN_BUDGET_S, Acknowledgements, Lane, Record, RecordRunner
from consumer_service.tier_mover import TierMover
from jobpipe import metrics
from jobpipe.delays import due_of, tiers_of
from jobpipe.executor import Executor
from jobpipe.handling import (
    Attempt,
    JobHandler,
    Next,
    label_of,
    log_dead_lettered,
    log_processed,
    log_retry,
)
from jobpipe.job import InvalidJob, Job
from jobpipe.kafka_clients import admin_config, share_consumer_config
from jobpipe.logs import enabled, event
from jobpipe.share_groups import is_refusal, refusal, share_configs

POLL_S = 0.5
ACK_POLL_S = 0.05  # how often the wait for outcomes also serves the dead-letter producer
LANE_POLL_S = 0.05  # the wait of a lane's poll, and of a wait for outcomes, while both may bring work
MAX_RUN = 256  # most records in one run
MAX_LANES = 4  # share consumers per member at most (a slow job holds one lane's poll)
CLOSE_MARGIN_S = 0.5  # of SHUTDOWN_TIMEOUT_S, kept for leaving the group and exiting
DURATION_WEIGHT = 0.2  # of the newest attempt in the moving average of attempt durations


def group_limits(settings: ConsumerSettings) -> GroupLimits:
    """The share group's record lock and delivery limit (its group configs, else the broker's
    defaults), read once at start."""
    admin = AdminClient(admin_config(settings, "share-limits"))
    try:
        configs = share_configs(admin, settings.consumer_group, 15)
    except KafkaException as error:
        event("share.limits_unknown", f"could not read share group {settings.consumer_group}'s "
              f"configs ({error}); assuming the broker's defaults", level="WARNING")
        return GroupLimits()
    finally:
        del admin
        gc.collect()
    lock_ms = configs.get("share.record.lock.duration.ms") or DEFAULT_LOCK_S * 1000
    return GroupLimits(float(lock_ms) / 1000,
                       int(configs.get("share.delivery.count.limit") or DEFAULT_DELIVERY_LIMIT))


@dataclass
class ShareWorker:
    number: int
    settings: ConsumerSettings
    handler: JobHandler
    stop: threading.Event
    joined: threading.Event
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        host = socket.gethostname()
        self.name = f"consumer {self.number}@{host}"
        client_id = f"consumer-{self.number}-{host}"
        self._limits = group_limits(self.settings)
        self._acks = Acknowledgements(self.counts, self.name)
        self._lanes = [self._new_lane(f"{client_id}-{n}" if n else client_id)
                       for n in range(min(MAX_LANES, self.settings.consumer_concurrency))]
        # A dead letter's (or parked copy's) fate must be known while its record is still locked
        # to this member.
        self._producer = MemberProducer(self.settings, f"{client_id}-dlq",
                                        timeout_s=max(1.0, self._limits.lock_s / 3))
        self._runner = RecordRunner(self.handler, self.stop)
        function = self._runner.run_async if self.handler.is_async else self._runner.run
        self._executor = Executor.for_function(function, self.settings.consumer_concurrency,
                                               f"handler-{self.number}")
        self._answers: list[tuple[Record, KafkaError | None]] = []
        self._on_slots: dict[int, list[Record]] = {}  # the runs on the handler slots, by id
        self._outgoing: set[Record] = set()  # dead letters and parked copies in flight or waiting to go again
        self._publishing = 0  # of those, the ones the producer holds
        self._tiers = tiers_of(self.settings.jobs_topic)
        for tier in self._tiers:  # every tier's series from the start (0), not from its first job
            metrics.JOBS_PARKED.labels(tier.name)
        self._mover: TierMover | None = None  # made by `run` (its clients connect at once)
        self._job_s = 0.0  # moving average of an attempt's duration
        self._seq = itertools.count()
        self._retries: list[tuple[float, int, Record]] = []  # (due, seq, record): handler retries
        self._republish: list[tuple[float, int, Record]] = []  # (due, seq, record): failed publishes
        self._stopped_at: float | None = None
        event("share.limits", f"{self.name}: share group {self.settings.consumer_group} locks a record "
              f"for {self._limits.lock_s:g} s and gives up after {self._limits.delivery_limit} "
              f"deliveries; a job is dead-lettered on delivery {self._limits.dead_letter_delivery}",
              consumer=self.name, lock_s=self._limits.lock_s, delivery_limit=self._limits.delivery_limit,
              dead_letter_delivery=self._limits.dead_letter_delivery, lanes=len(self._lanes))
        self.heartbeat = time.monotonic()

    def _new_lane(self, client_id: str) -> Lane:
        consumer = ShareConsumer(share_consumer_config(
            self.settings, client_id, self.settings.consumer_group, self.settings.consumer_concurrency))
        consumer.set_acknowledgement_commit_callback(self._acks.answered)
        return Lane(consumer)

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        for lane in self._lanes:
            lane.consumer.subscribe([self.settings.jobs_topic])
        event("share.joined", f"{self.name} subscribed to {self.settings.jobs_topic} in share group "
              f"{self.settings.consumer_group}", consumer=self.name, group=self.settings.consumer_group)
        # The parked copies come back through a mover, as in a consumer group (its own classic
        # group, `<CONSUMER_GROUP>.delays`, over the delay tiers: consumer_service.tier_mover).
        mover = self._mover = TierMover(self.settings, self.number, self.stop)
        moving = threading.Thread(target=mover.run, name=f"delay-mover-{self.number}", daemon=True)
        moving.start()
        self.joined.set()
        try:
            self._work()
        except KafkaException as error:
            if is_refusal(error.args[0]):
                raise refusal(self.settings.consumer_group) from None
            raise
        finally:
            self._close()
            if self.stop.is_set() and self._stopped_at is not None:  # a stop, not a failure: the mover
                # finishes within the shutdown budget too (after a failure main.py sets the stop)
                moving.join(max(0.0, self._stopped_at + self.settings.shutdown_timeout_s - time.monotonic()))

    def _stopping_since(self, now: float) -> float:
        """When this member saw the stop (the first call after it): SHUTDOWN_TIMEOUT_S counts
        from there, less the poll's wait by which it may have seen it late."""
        if self._stopped_at is None:
            self._stopped_at = now - POLL_S
        return self._stopped_at

    def _work(self) -> None:
        """Until the stop: start what can start, poll a lane whose poll is settled when a slot
        is free, wait for outcomes; then finish or release what is in hand (bounded)."""
        stop_by: float | None = None
        concurrency = self.settings.consumer_concurrency
        while True:
            self.heartbeat = now = time.monotonic()
            if self._mover is not None and self._mover.failed is not None:
                raise self._mover.failed
            if self.stop.is_set():
                stop_by = stop_by or self.settings.work_deadline(self._stopping_since(now))
                self._release_for_stop()
                if not self._unsettled() or now >= stop_by:
                    self._abandon_running()
                    return
            while self._retries and self._retries[0][0] <= now:
                record = heapq.heappop(self._retries)[2]
                record.lane.ready.appendleft(record)
            while self._republish and self._republish[0][0] <= now:
                self._publish(heapq.heappop(self._republish)[2])
            self._release_late(now)
            self._start(concurrency)
            wait = ACK_POLL_S if self._answers or self._publishing else POLL_S
            for due in (self._retries, self._republish):
                if due:
                    wait = max(0.0, min(wait, due[0][0] - now))
            if stop_by is not None:
                wait = max(0.0, min(wait, stop_by - now))
            runs = len(self._on_slots)
            lane = self._free_lane() if stop_by is None and runs < concurrency else None
            # a free slot and a lane to poll: the poll is the wait, short while outcomes may come
            polled = lane is not None and self._poll(lane, LANE_POLL_S if runs or self._publishing else wait)
            if runs:  # outcomes may come: attempts that end, and runs (their slots free again)
                self._take_outcomes(0.0 if polled else LANE_POLL_S if lane else wait)
            elif lane is None and not self._publishing:  # only retries wait: until the next is due
                if self.stop.is_set():
                    time.sleep(wait)
                else:
                    self.stop.wait(wait)
            only_publishing = self._publishing and not runs and not lane
            self._producer.poll(min(wait, ACK_POLL_S) if only_publishing else 0)
            for record, error in self._take_answers():
                self._after_publish(record, error)
            self._acks.send(self._lanes, time.monotonic())

    def _unsettled(self) -> int:
        return sum(lane.unsettled for lane in self._lanes)

    def _free_lane(self) -> Lane | None:
        """The lane to poll next: its poll settled, the one polled longest ago (so that each
        lane polls now and then, and none is dropped from the group for not polling)."""
        lanes = self._lanes
        if len(lanes) == 1:
            return None if lanes[0].unsettled else lanes[0]
        free = [lane for lane in lanes if not lane.unsettled]
        return min(free, key=lambda lane: lane.polled_at) if free else None

    def _poll(self, lane: Lane, timeout: float) -> bool:
        """Poll a lane whose poll is settled; True if it brought records."""
        lane.polled_at = time.monotonic()
        lane.sent_at = lane.polled_at  # the poll carries its acknowledgements
        lane.to_send = 0
        messages = lane.consumer.poll(timeout)
        self._acks.report_refusals()
        if not messages:
            return False
        self._admit(lane, messages)
        return True

    def _admit(self, lane: Lane, messages: Iterable[Message]) -> None:
        """A lane's poll: records that are not jobs, or on their dead-letter delivery, go to
        the DLQ at once; jobs whose time has not come are parked in a delay tier at once; the
        others wait for a slot, those that came back (delivered before) first, so that a job
        released unstarted is not released again for the same reason."""
        again: list[Record] = []
        dead_letter_delivery = self._limits.dead_letter_delivery
        ready = lane.ready
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                event("kafka.error", f"{self.name}: {error.str()}", level="WARNING", code=error.name())
                continue
            record = Record(message, lane)
            lane.unsettled += 1
            invalid = ""
            try:
                job = record.job = Job.from_message(message.value(), message.headers())
                if job.not_before is not None or job.headers:  # the rare path: a job that waits
                    record.due = due_of(job.not_before, job.headers)
            except InvalidJob as error:
                invalid = str(error)
            deliveries = message.delivery_count() or 1
            verdict, why = on_delivery(not invalid, deliveries, dead_letter_delivery)
            if verdict is Verdict.DEAD_LETTER:
                self._dead_letter(record, invalid or why)
            elif record.due is not None and (park := parking(record.due, time.time(), self._tiers)):
                self._park(record, Parking(park, record.due))
            elif deliveries > 1:
                again.append(record)
            else:
                ready.append(record)
        if again:
            ready.extendleft(reversed(again))

    def _release_late(self, now: float) -> None:
        """Records that can no longer start inside their lock (the broker hands out whole
        record batches, so a poll can hold more than a lock's worth): released at once."""
        for lane in self._lanes:
            if lane.ready and before_start(now, self._limits.start_by(lane.polled_at, self._job_s),
                                           False) is Verdict.RELEASE:
                self._release_unstarted(lane)

    def _run_length(self, ready: int, free: int) -> int:
        """As many records per run as take about RUN_BUDGET_S of handler time (one when jobs
        take longer), spread over the free slots."""
        length = max(1, min(MAX_RUN, int(RUN_BUDGET_S / max(self._job_s, 1e-7))))
        return min(length, -(-ready // free))

    def _start(self, concurrency: int) -> None:
        """Fill the free slots with runs, the oldest poll's records first (their locks end
        first)."""
        on_slots = self._on_slots
        while len(on_slots) < concurrency:
            lanes = [lane for lane in self._lanes if lane.ready]
            if not lanes:
                return
            lane = min(lanes, key=lambda one: one.polled_at) if len(lanes) > 1 else lanes[0]
            start_by = self._limits.start_by(lane.polled_at, self._job_s)
            ready = lane.ready
            while ready and len(on_slots) < concurrency:
                length = self._run_length(len(ready), concurrency - len(on_slots))
                run = [ready.popleft() for _ in range(length)]
                for record in run:
                    record.attempts += 1
                    record.running = True
                    if record.due is not None:  # a delayed job, due: how late it starts
                        metrics.DELAY_LATE.observe(max(0.0, time.time() - record.due))
                        record.due = None
                on_slots[id(run)] = run
                self._executor.submit(run, (run, start_by))

    def _take_outcomes(self, wait: float) -> None:
        """The attempts that ended (also of runs still going), then the runs that ended: what
        they did not start goes back to the head of its lane's queue, in order."""
        runs = self._executor.collect(wait)  # first: a run's attempts are in `finished` before it ends
        finished = self._runner.finished
        if finished:
            self._after_attempts(finished)
        for done in runs:
            run: list[Record] = done.token
            del self._on_slots[id(run)]
            if done.error is not None:
                raise done.error
            unstarted = run[done.value:]
            for record in unstarted:
                record.running = False
                record.attempts -= 1
            if unstarted:
                run[0].lane.ready.extendleft(reversed(unstarted))

    def _after_attempts(self, finished: deque[Record]) -> None:
        """The attempts that ended, in order. A success is ACCEPTed without asking
        share_decisions.after_attempt (its first rule, which looks at nothing else): a run's
        successes are marked in one call; any other outcome goes through `_after_attempt`,
        after the successes before it."""
        now = time.monotonic()
        log = enabled("INFO")
        job_s = self._job_s
        done: list[Record] = []
        lane: Lane | None = None  # the lane of the record before, and whether its lock had ended
        overrun = False
        while finished:
            record = finished.popleft()
            attempt, record.ended = record.ended, None
            assert attempt is not None
            record.running = False
            if attempt.error is not None:
                self._acks.mark_all(done, AcknowledgeType.ACCEPT, "processed")
                done.clear()
                self._job_s = job_s
                self._after_attempt(record, attempt, now)
                job_s = self._job_s
                continue
            job_s += DURATION_WEIGHT * (attempt.duration_ms / 1000 - job_s)
            if record.lane is not lane:  # a run's records are of one poll, asked for at one time
                lane = record.lane
                overrun = self._limits.expired(lane.polled_at, now)
            if overrun:
                self._lock_overrun(record, attempt)
            done.append(record)
            if log:
                log_processed(attempt, self.name, partition=record.message.partition(),
                              offset=record.message.offset())
        self._job_s = job_s
        self._acks.mark_all(done, AcknowledgeType.ACCEPT, "processed")

    def _release_for_stop(self) -> None:
        """A stop: nothing more starts; what waits for a slot or a retry is released, and so is
        a dead letter (or parked copy) waiting to go again, unless its record is on the broker's
        last delivery (it is published again until the shutdown deadline)."""
        for lane in self._lanes:
            for record in lane.ready:
                self._release(record, "stopping")
            lane.ready.clear()
        for _, _, record in self._retries:
            self._release(record, "stopping")
        self._retries.clear()
        keep = [entry for entry in self._republish if self._limits.is_last(entry[2].deliveries)]
        for _, _, record in self._republish:
            if not self._limits.is_last(record.deliveries):
                record.republish = False
                self._outgoing.discard(record)
                self._release(record, f"stopping before its {self._what(record)[0]} was published")
        heapq.heapify(keep)
        self._republish = keep

    def _lock_overrun(self, record: Record, attempt: Attempt) -> None:
        event("share.lock_overrun", f"{self.name}: {attempt.job.label} ended after its lock "
              f"({self._limits.lock_s:g} s): the broker may have given it to another member "
              "(raise the group's share.record.lock.duration.ms above the handler's time)",
              level="WARNING", id=attempt.job.id, key=attempt.job.key, consumer=self.name,
              lock_s=self._limits.lock_s, duration_ms=round(attempt.duration_ms, 1),
              partition=record.message.partition(), offset=record.message.offset())

    def _after_attempt(self, record: Record, attempt: Attempt, now: float) -> None:
        origin = {"partition": record.message.partition(), "offset": record.message.offset()}
        self._job_s += DURATION_WEIGHT * (attempt.duration_ms / 1000 - self._job_s)
        polled_at = record.polled_at
        if self._limits.expired(polled_at, now):
            self._lock_overrun(record, attempt)
        failed = attempt.error is not None
        delay = self.handler.policy.delay_s(attempt.number) if failed else 0.0
        verdict = after_attempt(not failed, self.handler.next_step(attempt) is Next.DEAD_LETTER,
                                now + delay, self._limits.start_by(polled_at, self._job_s),
                                self.stop.is_set())
        if verdict is Verdict.ACCEPT:
            self._acks.mark(record, AcknowledgeType.ACCEPT, "processed")
            log_processed(attempt, self.name, **origin)
        elif verdict is Verdict.DEAD_LETTER:
            self._dead_letter(record, attempt.error_text)
        elif verdict is Verdict.RELEASE:
            self._release(record, f"attempt {attempt.number} failed and its lock ends before the retry")
        else:
            self.counts.retried += 1
            log_retry(attempt, delay, self.name, **origin)
            heapq.heappush(self._retries, (now + delay, next(self._seq), record))

    # ---- dead letters, parked copies and acknowledgements ---------------------------------------

    def _dead_letter(self, record: Record, reason: str) -> None:
        record.reason = reason
        self._outgoing.add(record)
        self._publish(record)

    def _park(self, record: Record, parked: Parking) -> None:
        """A job whose time has not come: its copy goes to a delay tier, and the record is
        accepted once the tier holds it (never held here: its lock would end first)."""
        record.parking = parked
        self._outgoing.add(record)
        self._publish(record)

    def _publish(self, record: Record) -> None:
        record.republish = False
        record.publishing = True
        self._publishing += 1
        try:
            if record.parking is not None:
                assert record.job is not None
                copy = parked_copy(record.message, record.parking, attempts_before(record.job.headers))
            else:
                copy = dead_letter_record(self.settings.dlq_topic, record.message, record.reason,
                                          record.attempts, self.name)
            self._producer.send((copy,), lambda error, _message: self._answers.append((record, error)))
        except (BufferError, KafkaException) as error:
            self._after_publish(record, KafkaError(KafkaError._QUEUE_FULL, str(error)))

    def _take_answers(self) -> list[tuple[Record, KafkaError | None]]:
        answers, self._answers = self._answers, []
        return answers

    def _what(self, record: Record) -> tuple[str, str]:
        """What a record's outgoing copy is, and where it goes."""
        if record.parking is not None:
            return "parked copy", record.parking.park.tier.topic
        return "dead letter", self.settings.dlq_topic

    def _after_publish(self, record: Record, error: KafkaError | None) -> None:
        record.publishing = False
        self._publishing -= 1
        job = record.job
        key = job.key if job else (record.message.key() or b"").decode(errors="replace") or None
        origin = {"partition": record.message.partition(), "offset": record.message.offset()}
        now = time.monotonic()
        delay = self.handler.policy.delay_s(min(record.failed_publishes + 1, 20))
        verdict = after_publish(error is None, now + delay, self._limits.lock_ends(record.polled_at),
                                self._limits.is_last(record.deliveries), self.stop.is_set())
        if verdict is Verdict.ACCEPT:
            self._outgoing.discard(record)
            if record.parking is not None:
                self._acks.mark(record, AcknowledgeType.ACCEPT, None)
                count_parked(record.parking, key, job.id if job else None, partition=origin["partition"] or 0,
                             offset=origin["offset"] or 0, member=self.name)
                return
            self._acks.mark(record, AcknowledgeType.ACCEPT, "dead_lettered")
            log_dead_lettered(key, job.id if job else None, reason=record.reason, attempts=record.attempts,
                              consumer=self.name, destination=self.settings.dlq_topic, **origin)
            return
        assert error is not None
        record.failed_publishes += 1
        if verdict is Verdict.PUBLISH:
            what, topic = self._what(record)
            event(f"job.{what.replace(' ', '_')}_retry", f"{self.name} could not publish the {what} of "
                  f"{label_of(key, job.id if job else None)} to {topic} ({error.str()}); trying again in "
                  f"{delay * 1000:.0f} ms", level="WARNING",
                  id=job.id if job else None, key=key, error=error.str(), deliveries=record.deliveries,
                  failures=record.failed_publishes, delay_ms=round(delay * 1000, 1), consumer=self.name,
                  **origin)
            record.republish = True
            heapq.heappush(self._republish, (now + delay, next(self._seq), record))
            return
        self._outgoing.discard(record)
        self._publish_failed(record, error.str(), lost=False)

    def _publish_failed(self, record: Record, error: str, lost: bool) -> None:
        """Give up on a dead letter or parked copy: the record goes back to the broker
        (released), for its next delivery, or dropped by the broker if it was its last (`lost`)."""
        job = record.job
        key = job.key if job else (record.message.key() or b"").decode(errors="replace") or None
        what, topic = self._what(record)
        again = "parked" if record.parking is not None else "dead-lettered"
        fate = ("left on its last delivery: the broker drops it" if lost
                else f"released for another delivery, where it is {again} again")
        event(f"job.{what.replace(' ', '_')}_failed",
              f"{self.name} could not publish the {what} of {label_of(key, job.id if job else None)} to "
              f"{topic} ({error}); {fate}",
              level="ERROR" if lost else "WARNING", id=job.id if job else None, key=key, error=error,
              deliveries=record.deliveries, lost=lost, consumer=self.name,
              partition=record.message.partition(), offset=record.message.offset())
        self._release(record, f"its {what} was not acknowledged")

    def _release_unstarted(self, lane: Lane) -> None:
        """Jobs of a poll that can no longer start inside their lock: hand them back at once."""
        polled = lane.unsettled
        ready = lane.ready
        event("share.poll_too_big", f"{self.name} released {len(ready)} of the {polled} jobs of one poll "
              "still in hand, not started within its share of their lock (the broker hands out whole "
              "record batches: produce smaller ones, see docs/share-groups.md)", level="WARNING",
              consumer=self.name, released=len(ready), polled=polled, lock_s=self._limits.lock_s)
        for record in ready:
            self._release(record, "not started within its lock", log=False)
        ready.clear()

    def _release(self, record: Record, why: str, log: bool = True) -> None:
        if record.settled or record.running or record.publishing or record.republish:
            return
        self._acks.mark(record, AcknowledgeType.RELEASE, "handed_back")
        if not log:
            return
        job = record.job
        event("job.released", f"{self.name} released {job.label if job else '<not a job>'} from partition "
              f"{record.message.partition()} offset {record.message.offset()}: {why}",
              level="WARNING", id=job.id if job else None, key=job.key if job else None,
              partition=record.message.partition(), offset=record.message.offset(), reason=why,
              deliveries=record.deliveries, consumer=self.name)

    def _abandon_running(self) -> None:
        """The shutdown deadline came with handlers still running: their records go back to the
        broker when the member leaves, and the jobs run again elsewhere."""
        for record in (record for run in self._on_slots.values() for record in run):
            if record.running and record.job is not None:
                event("job.released", f"{self.name} left {record.job.label} running at the shutdown "
                      "deadline: the broker delivers it again", level="WARNING", id=record.job.id,
                      key=record.job.key, partition=record.message.partition(),
                      offset=record.message.offset(), reason="still running at the shutdown deadline",
                      deliveries=record.deliveries, consumer=self.name)

    def _close(self) -> None:
        """Flush the dead letters and parked copies, acknowledge what they settle, commit, leave:
        within what is left of SHUTDOWN_TIMEOUT_S (librdkafka's close itself is not bounded)."""
        now = time.monotonic()
        deadline = self._stopping_since(now) + self.settings.shutdown_timeout_s - CLOSE_MARGIN_S
        self._executor.close(0.0)
        republish, self._republish = self._republish, []
        for _, _, record in republish:  # a last try for those on their last delivery
            self._publish(record)
        self._producer.close(max(0.1, (deadline - time.monotonic()) / 2))
        for record, error in self._take_answers():
            if error is None:
                self._after_publish(record, None)
            else:
                self._outgoing.discard(record)
                record.publishing = False
                self._publish_failed(record, error.str(), lost=self._limits.is_last(record.deliveries))
        for record in list(self._outgoing):  # never answered: the member leaves without it
            record.publishing = record.republish = False
            self._publish_failed(record, "not acknowledged by the shutdown deadline",
                                 lost=self._limits.is_last(record.deliveries))
        self._outgoing.clear()
        for lane in self._lanes:
            self._acks.commit(lane, max(0.1, (deadline - time.monotonic()) / len(self._lanes)))
        self._acks.report_refusals()
        for lane in self._lanes:
            lane.consumer.close()  # leaves the group: the broker takes back what was not acknowledged
