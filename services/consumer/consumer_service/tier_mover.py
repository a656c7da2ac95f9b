"""Moving parked jobs on: each delay tier's partitions read, paused until their head is due.

Why it exists: a job parked in a delay tier (consumer_service.parking) must come back when its
tier's time is up, never earlier, with no memory and no polling per waiting job, and without
being lost when a member dies. Every group member runs one mover, on a thread of its own, in a
sibling consumer group (`<CONSUMER_GROUP>.delays`) that reads the tier topics: the tiers'
partitions are spread over the members independently of the jobs topic's, and a rebalance of
one never waits for the other. A mover runs no handler: it only copies due records on.

For each record it takes: not yet released (its `delay.release_ms` header is in the future):
its partition is paused and sought back to it, and resumed at that time (a tier is FIFO in
release time, jobpipe.delays, so nothing behind the head can be due before it; messages of a
paused partition already fetched are dropped and fetched again). Released: decided again with
the time left (jobpipe.delays.release): published to a lower (or the same) tier, or back to the
jobs topic with its key (so to its key's partition, as the client's producer would), where the
jobs consumer holds the rest of its wait in memory and runs it. Why not run it here: the jobs
consumer is where ordering, concurrency, retries, the DLQ and the metrics are; the mover stays a
few hundred lines with no handler, and a due job costs one more publish (milliseconds).

At-least-once: a tier offset is stored (committed in the background, on revoke and on close)
only once the broker acknowledged the record's copy, and in offset order (the watermark of
consumer_service.offsets), so a crash makes the next owner move the unacknowledged ones again
(a job may then run twice, as any job after a crash; never zero times, never early).

PROCESSING_GUARANTEE=exactly_once: the copies a turn moved and the tier offsets past them are
written in one Kafka transaction (a transactional producer of the mover's own, the offsets sent
with `send_offsets_to_transaction` and the mover consumer's group metadata, KIP-447), so a copy
is moved once or not at all: a killed mover's open transaction is aborted by the broker, and a
mover thrown out of its group (frozen past its session) cannot commit, since the coordinator
refuses its stale generation. An aborted transaction's partitions are sought back to the first
offset it moved (the committed one) and moved again; a fenced producer is replaced (one that
cannot be made stops the member). The tiers are read read_committed (as every jobpipe consumer:
jobpipe.client_check): a member's parked copies are written in its transactions too. Which
offsets a move may commit is consumer_service.move_batch (pure).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from re import escape

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer_service.move_batch import MoveBatch
from consumer_service.offsets import TP, OffsetTracker
from consumer_service.settings import ConsumerSettings
from consumer_service.transactions import OutRecord, Transactions
from jobpipe.access import refused_by
from jobpipe.delays import (
    DUE_HEADER,
    RELEASE_HEADER,
    TIER_HEADER,
    Tier,
    epoch_ms,
    head_wait,
    header_time,
    release,
    tiers_of,
)
from jobpipe.errors import KafkaRefused, KafkaUnreachable
from jobpipe.kafka_clients import consumer_config, producer_config
from jobpipe.logs import event

POLL_S = 0.5  # the longest a poll blocks: how soon a stop is seen
FETCH = 500
RETRY_S = 1.0  # a copy the broker refused: its partition is read again from it after this
# A mover holds no job, so it fetches little ahead: at most this many kilobytes queued.
QUEUED_KB = 1024
# Moved offsets are committed this often (not every second, as the jobs consumer's are): a
# mover moves whole tiers at once, and what it moved since its last commit is moved again,
# so run twice, after a crash (4000 jobs hopping through the tiers, 5 members SIGKILLed: 2,244
# ran twice with the 1 s interval, 1,277 at 0.1 s: a tier's copies move in bursts).
COMMIT_EVERY_S = 0.1
Headers = list[tuple[str, str | bytes | None]]


def mover_group(group: str) -> str:
    """The sibling consumer group whose members read the delay tiers."""
    return f"{group}.delays"


def tier_pattern(jobs_topic: str) -> str:
    """A subscription to every tier topic of `jobs_topic` (a pattern: a tier not created yet is
    picked up once it exists, with no error meanwhile)."""
    names = "|".join(escape(tier.name) for tier in tiers_of(jobs_topic))
    return f"^{escape(jobs_topic)}\\.delay\\.({names})$"


def moved_headers(original: Headers, onward: Tier | None, release_at: float | None) -> Headers:
    """A released copy's headers: to a tier, its new release time and tier; to the jobs topic,
    only the due time (and any retry.* headers) stay."""
    kept = [(name, value) for name, value in original if name not in (RELEASE_HEADER, TIER_HEADER)]
    if onward is None or release_at is None:
        return kept
    return [*kept, (RELEASE_HEADER, epoch_ms(release_at)), (TIER_HEADER, onward.name.encode())]


class TierMover:
    """One member's mover: `run` until `stop` is set (on a thread of its own)."""

    def __init__(self, settings: ConsumerSettings, number: int, stop: threading.Event,
                 clock: Callable[[], float] = time.time) -> None:
        host = socket.gethostname()
        self.name = f"delay mover {number}@{host}"
        self.settings = settings
        self._stop = stop
        self._clock = clock
        self._tiers = tiers_of(settings.jobs_topic)
        client_id = f"consumer-{number}-{host}-delays"
        config = consumer_config(settings, client_id, mover_group(settings.consumer_group)) | {
            "queued.max.messages.kbytes": QUEUED_KB, "fetch.max.bytes": QUEUED_KB * 1024,
            "enable.partition.eof": False, "topic.metadata.refresh.interval.ms": 10_000,
            "isolation.level": "read_committed",  # members' parked copies are transactional
        }
        # exactly_once: each turn's moves and the tier offsets past them in one transaction.
        self._eos: Transactions | None = None
        self._batch = MoveBatch()
        if settings.processing_guarantee == "exactly_once":
            config["enable.auto.commit"] = False
            self._eos = Transactions(settings, f"{client_id}-tx", number, self.name,
                                     group=mover_group(settings.consumer_group))
        self._consumer = Consumer(config)
        # at_least_once: copies go out through a plain producer, acknowledged one by one. Under
        # exactly_once the transactional one above carries them: no second client (its
        # connections and threads would do nothing).
        self._producer = None if self._eos is not None else Producer(producer_config(settings, client_id))
        self._offsets = OffsetTracker()
        self._assigned: set[TP] = set()
        self._paused: dict[TP, float] = {}  # partition -> when its head is released (epoch s)
        # Partitions sought back to their head: nothing of them is taken until the head comes
        # (a message fetched before the seek and handed over after it is dropped: read again).
        self._expected: dict[TP, int] = {}
        self._answers: deque[tuple[TP, int, KafkaError | None]] = deque()
        self._out = 0  # copies published, not answered yet
        self._committed_at = 0.0  # monotonic
        self.moved = 0  # copies acknowledged (for tests and logs)
        # Why the mover stopped early: the member stops too (exit 1; 3 if Kafka refused or
        # could not give a new exactly-once producer).
        self.failed: KafkaException | KafkaUnreachable | KafkaRefused | None = None

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        self._consumer.subscribe([tier_pattern(self.settings.jobs_topic)], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not self._stop.is_set():
                self._turn()
            self._finish(time.monotonic() + self.settings.shutdown_timeout_s * 0.8)
        except (KafkaException, KafkaUnreachable, KafkaRefused) as error:  # the member's loop stops
            self.failed = error
        finally:
            if self._eos is not None:
                self._eos.close()
            closing = threading.Thread(target=self._consumer.close, name="close-delay-mover", daemon=True)
            closing.start()
            closing.join(self.settings.shutdown_timeout_s * 0.1)

    def _turn(self) -> None:
        now = self._clock()
        self._resume_due(now)
        wait = POLL_S
        if self._paused:
            wait = min(wait, head_wait(now, min(self._paused.values())))
        first = self._consumer.poll(wait)
        messages = [] if first is None else [first, *self._consumer.consume(FETCH - 1, 0)]
        now = self._clock()
        for message in messages:
            self._take(message, now)
        if self._eos is not None:
            self._commit_moves()
            return
        self._serve_answers(0)

    def _resume_due(self, now: float) -> None:
        due = [tp for tp, at in self._paused.items() if at <= now]
        if due:
            for tp in due:
                del self._paused[tp]
            self._consumer.resume([TopicPartition(*tp) for tp in due])

    def _take(self, message: Message, now: float) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            refused = refused_by(self.settings, error, "this consumer's delay tier mover")
            if refused is not None:  # the member stops: exit 3, the line names the ACL
                raise refused
            if error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                event("kafka.error", f"{self.name}: {error.str()}", level="WARNING", code=error.name())
            return
        tp: TP = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        if tp in self._paused or tp not in self._assigned:
            return  # fetched before its partition was paused: read again from its head later
        expected = self._expected.get(tp)
        if expected is not None:
            if offset != expected:
                return  # fetched before the seek: read again after the head
            del self._expected[tp]
        raw = message.headers() or []
        headers: Headers = list(raw.items()) if isinstance(raw, dict) else list(raw)
        found = dict(headers)
        release_at = header_time(found.get(RELEASE_HEADER))
        if release_at is not None and release_at > now:
            self._wait_for_head(tp, offset, release_at)
            return
        due = header_time(found.get(DUE_HEADER))
        onward = release(now, due, self._tiers) if due is not None else None
        topic = self.settings.jobs_topic if onward is None else onward.tier.topic
        moved = moved_headers(headers, None if onward is None else onward.tier,
                              None if onward is None else onward.release_at)
        if self._producer is None:  # exactly_once: held, written with the tier offset past it at turn end
            if self._eos is not None and self._batch.move(tp, offset):
                self._eos.hold(tp, offset, [OutRecord(topic, message.key(), message.value(), moved)])
            return
        try:
            self._producer.produce(topic, key=message.key(), value=message.value(), headers=moved,
                                   on_delivery=partial(self._on_answer, tp, offset))
        except (BufferError, KafkaException):
            self._wait_for_head(tp, offset, now + RETRY_S)  # read it again shortly
            return
        self._out += 1
        self._offsets.partition(tp).add(offset)

    def _wait_for_head(self, tp: TP, offset: int, until: float) -> None:
        """Pause `tp` with its position back at `offset` (its head) until `until`. A seek that
        fails raises: the mover stops (and its member with it) rather than skip the head."""
        partition = TopicPartition(tp[0], tp[1], offset)
        self._batch.wait(tp, offset)
        self._consumer.pause([partition])
        self._consumer.seek(partition)
        self._paused[tp] = until
        self._expected[tp] = offset

    def _on_answer(self, tp: TP, offset: int, error: KafkaError | None, _message: Message) -> None:
        self._answers.append((tp, offset, error))

    def _report(self) -> None:
        answers = self._answers
        if not answers:
            return
        while answers:
            tp, offset, error = answers.popleft()
            self._out -= 1
            if tp not in self._assigned:
                continue  # given up meanwhile: its next owner moves it (again)
            if error is None:
                self.moved += 1
                self._offsets.partition(tp).finish(offset)
                continue
            event("job.move_failed", f"{self.name} could not move the record at {tp[0]}[{tp[1]}]@{offset}: "
                  f"{error.str()}; reading it again in {RETRY_S:g} s", level="ERROR", topic=tp[0],
                  partition=tp[1], offset=offset, error=error.str())
            low = self._offsets.committable(tp)
            self._offsets.drop(tp)  # what was moved above it is moved again (at-least-once)
            self._wait_for_head(tp, offset if low is None else min(low, offset), self._clock() + RETRY_S)
        self._store()

    def _store(self) -> None:
        moved = [(tp, offset) for tp, offset in self._offsets.advanced() if tp in self._assigned]
        if not moved:
            return
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(tp[0], tp[1], at) for tp, at in moved])
        except KafkaException as error:  # a partition the client no longer has: its next owner moves it
            event("commit.failed", f"{self.name} could not store offsets: {error.args[0].str()}",
                  level="WARNING", error=error.args[0].str())
            return
        now = time.monotonic()
        if now - self._committed_at >= COMMIT_EVERY_S:
            self._committed_at = now
            try:
                self._consumer.commit(asynchronous=True)
            except KafkaException as error:  # the background commit, every second, tries again
                if error.args[0].code() != KafkaError._NO_OFFSET:
                    event("commit.failed", f"{self.name} commit failed: {error.args[0].str()}",
                          level="WARNING", error=error.args[0].str())

    def _commit_moves(self) -> None:
        """exactly_once: one transaction with this turn's copies and, per partition, the offset
        past its last one. Aborted: its partitions are read again from the first offset it
        moved (what the group has committed) before anything else of them is moved."""
        assert self._eos is not None
        batch = self._batch
        if not batch:
            batch.clear()
            return
        moved = batch.offsets()
        rewind = batch.rewind()
        batch.clear()
        count = len(self._eos.held)
        committed = self._eos.commit(self._consumer, moved)
        if committed.ok:
            self.moved += count
            return
        for tp in sorted(committed.aborted & self._assigned):
            self._wait_for_head(tp, rewind[tp], self._clock())
        self._batch.clear()  # the rewind's heads are not waiting: they are moved again next turn

    def _finish(self, until: float) -> None:
        """Wait (until `until`, monotonic) for the copies out, store and commit what they allow."""
        while self._out and time.monotonic() < until:
            self._serve_answers(min(0.1, max(0.0, until - time.monotonic())))
        self._commit()

    def _serve_answers(self, timeout: float) -> None:
        """at_least_once: poll the producer for the copies' answers and report them."""
        if self._producer is not None:
            self._producer.poll(timeout)
            self._report()

    def _commit(self) -> None:
        if self._eos is not None:
            return  # exactly_once: every turn's moves were committed in its transaction
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                event("commit.failed", f"{self.name} commit failed: {error.args[0].str()}",
                      level="WARNING", error=error.args[0].str())

    # ---- rebalances -----------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        event("delays.assigned", f"{self.name} moves {len(self._assigned)} delay-tier partition(s)",
              level="DEBUG", partitions=sorted(f"{t}[{p}]" for t, p in self._assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Wait (bounded) for the copies out, store and commit, forget the partitions."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        until = time.monotonic() + min(5.0, self.settings.shutdown_timeout_s / 2)
        while self._out and time.monotonic() < until:
            self._serve_answers(0.05)
        self._commit()
        self._forget(revoked)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions})

    def _forget(self, partitions: set[TP]) -> None:
        if self._eos is not None:
            self._eos.forget(partitions)
        for tp in partitions:
            self._offsets.drop(tp)
            self._paused.pop(tp, None)
            self._expected.pop(tp, None)
        self._assigned -= partitions
