"""PROCESSING_GUARANTEE=exactly_once: a member's results, dead letters and input offsets go
to Kafka together, in one transaction per commit interval, or not at all.

Why it exists: at-least-once publishes a job's result, then commits its offset; a member that
dies in between has its jobs re-run by the next owner, which publishes their results again.
Here a finished job's records (its result, or its dead letter and failure result) are held in
memory and written, with the partition's committed offset, in one Kafka transaction
(`send_offsets_to_transaction` with the consumer's group metadata, KIP-447). A reader with
`isolation.level=read_committed` sees them if and only if the offset moved past the job, so
one result per job, however often its handler ran. A member that was fenced (thrown out of
the group while frozen or cut off: its generation is stale) cannot commit: the coordinator
refuses its offsets, the transaction is aborted, and its records never become visible.

The one rule (a pure decision, `HeldRecords.due`): a job's records may go into a transaction
only once the offset that transaction commits is past the job, i.e. the job is below its
partition's watermark (the lowest unfinished offset). A job finished above a job still
running is held until the watermark passes it: committed earlier, a crash would re-run it
(its offset not committed) and publish its result twice.

The transaction is open only while `commit` runs (begin, produce what is due, send the
offsets, commit): nothing is pending between commits, so a revoke, a lost partition or a
shutdown only has to commit, or to drop what is held. When Kafka aborts a transaction (an
abortable error: the generation is stale, a rebalance is under way, a record was refused),
its records are gone and the offsets did not move: the partitions it covered must be read
again from their committed offsets (`Committed.aborted` lists them; the worker rewinds them
before anything else is committed). A fatal error (the producer was fenced by another one
with its transactional.id) is handled the same way with a new producer.

What a job's records stand for in counters and logs (a dead letter's jobs_dead_lettered_total
and job.dead_lettered, a parked copy's job.parked) is done once their transaction committed
(`hold`'s `after`), never for an aborted one, whose jobs run again and are counted then.

The transactional.id is unique per member (group, host, process, member number): with KIP-447
the group generation, not the transactional.id, fences zombies, so it need not follow
partitions; a transaction a killed member left open is aborted by the broker after
TRANSACTION_TIMEOUT_MS (until then readers and the next owner of its partitions wait for it).
"""

from __future__ import annotations

import bisect
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer_service.offsets import TP
from consumer_service.settings import ConsumerSettings
from jobpipe.errors import KafkaRefused, KafkaUnreachable
from jobpipe.kafka_clients import kafka_reason, producer_config
from jobpipe.logs import event

INTERVAL_S = 0.5  # how often a member commits (a result is visible to read_committed readers after it)
TRANSACTION_TIMEOUT_MS = 10_000  # an abandoned transaction (a killed member) holds readers this long
CALL_TIMEOUT_S = 10.0  # the longest one transactional call waits for the broker


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record a finished job publishes (a result, a dead letter)."""

    topic: str
    key: bytes | str | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] | None = None


Held = TypeVar("Held")
AfterCommit = Callable[[], None]  # what a job's commit makes true: its counters and log lines


class HeldRecords(Generic[Held]):
    """Finished jobs' records (or what to do once they are committed) not yet written, per
    partition, by the job's offset. Pure."""

    def __init__(self) -> None:
        self._offsets: dict[TP, list[int]] = {}  # sorted offsets with records, per partition
        self._records: dict[TP, dict[int, list[Held]]] = {}

    def hold(self, tp: TP, offset: int, records: list[Held]) -> None:
        offsets = self._offsets.setdefault(tp, [])
        by_offset = self._records.setdefault(tp, {})
        if offset in by_offset:
            by_offset[offset].extend(records)
            return
        bisect.insort(offsets, offset)
        by_offset[offset] = list(records)

    def due(self, tp: TP, watermark: int) -> list[Held]:
        """Take the records of tp's jobs below `watermark` (the offset the transaction commits),
        in offset order; those of jobs at or above it stay held."""
        offsets = self._offsets.get(tp)
        if not offsets:
            return []
        cut = bisect.bisect_left(offsets, watermark)
        if not cut:
            return []
        by_offset = self._records[tp]
        taken = [record for offset in offsets[:cut] for record in by_offset.pop(offset)]
        del offsets[:cut]
        return taken

    def drop(self, tps: Iterable[TP]) -> int:
        """Forget tps' records (the partition went: its next owner re-runs those jobs)."""
        dropped = 0
        for tp in tps:
            self._offsets.pop(tp, None)
            dropped += sum(len(records) for records in self._records.pop(tp, {}).values())
        return dropped

    def held(self, tp: TP) -> list[int]:
        return list(self._offsets.get(tp, ()))

    def __len__(self) -> int:
        return sum(len(offsets) for offsets in self._offsets.values())


@dataclass(frozen=True)
class Plan:
    """What one transaction writes: the records due, and the offset to commit per partition."""

    records: list[OutRecord]
    offsets: dict[TP, int]

    def __bool__(self) -> bool:
        return bool(self.records or self.offsets)


def plan(held: HeldRecords[OutRecord], watermarks: dict[TP, int], committed: dict[TP, int]) -> Plan:
    """The next transaction, given each partition's watermark now and what was committed last:
    every partition whose watermark moved commits it, with the records below it. Takes the
    records out of `held` (they are written, or lost with an abort, which rewinds the partition)."""
    records: list[OutRecord] = []
    offsets: dict[TP, int] = {}
    for tp, watermark in sorted(watermarks.items()):
        if committed.get(tp) == watermark:
            continue
        offsets[tp] = watermark
        records += held.due(tp, watermark)
    return Plan(records, offsets)


@dataclass
class Committed:
    """How a `commit` went: `aborted` partitions must be read again from their committed
    offsets (their records were lost with the transaction); `error` says why."""

    ok: bool
    aborted: set[TP] = field(default_factory=set)
    error: str = ""


def transactional_id(group: str, number: int) -> str:
    """Unique per process and member number (`group`: the consumer group, or the delay mover's
    sibling group, so a member's two producers never fence each other)."""
    host = socket.gethostname()
    return f"jobpipe.{group}.{host}.{os.getpid()}.{number}"


class Transactions:
    """One member's transactional producer and what it holds (the loop thread's only)."""

    def __init__(self, settings: ConsumerSettings, client_id: str, number: int, member: str,
                 group: str | None = None) -> None:
        self._config = producer_config(settings, client_id, linger_ms=5) | {
            "transactional.id": transactional_id(group or settings.consumer_group, number),
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        }
        self._member = member
        self._wait_s = settings.kafka_wait_timeout_s
        self.held: HeldRecords[OutRecord] = HeldRecords()
        # Per job, what its commit makes true (jobs_dead_lettered_total, job.dead_lettered,
        # job.parked...): done once its transaction committed, never for an aborted one.
        self._after: HeldRecords[AfterCommit] = HeldRecords()
        self._committed: dict[TP, int] = {}  # the offset last committed per partition
        self._last = time.monotonic()
        self.transactions = 0
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        """A transactional producer, ready. init_transactions waits for the transaction
        coordinator: on a new cluster its topic (__transaction_state) is created on first use,
        which took more than 10 s here; retried while Kafka says so, up to KAFKA_WAIT_TIMEOUT_S.
        Exit 3 when the broker refuses (a missing TransactionalId ACL) or never gets ready."""
        producer = Producer(self._config)
        deadline = time.monotonic() + self._wait_s
        while True:
            try:
                producer.init_transactions(max(1.0, min(CALL_TIMEOUT_S, deadline - time.monotonic())))
                return producer
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                reason = kafka_reason(exception)
                if error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                    raise KafkaRefused(f"Kafka refused the exactly-once producer's transactional id "
                                       f"({reason}); grant WRITE and DESCRIBE on TransactionalId "
                                       "prefix jobpipe.") from None
                if not error.retriable() or time.monotonic() >= deadline:
                    raise KafkaUnreachable(f"could not start the exactly-once producer "
                                           f"(PROCESSING_GUARANTEE=exactly_once): {reason}") from None

    def hold(self, tp: TP, offset: int, records: list[OutRecord], after: AfterCommit | None = None) -> None:
        """Hold a job's records for the transaction that commits past it; `after` runs once
        that transaction committed (not if it is aborted: the job is run again)."""
        self.held.hold(tp, offset, records)
        if after is not None:
            self._after.hold(tp, offset, [after])

    def due(self, now: float) -> bool:
        return now - self._last >= INTERVAL_S

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions gone (revoked after the commit, or lost): their held records dropped."""
        tps = list(tps)
        self.held.drop(tps)
        self._after.drop(tps)
        for tp in tps:
            self._committed.pop(tp, None)

    def commit(self, consumer: Consumer, watermarks: dict[TP, int]) -> Committed:
        """One transaction: the records due under `watermarks` and the watermarks as the
        group's offsets. Ok (or nothing to do), or aborted: see `Committed`."""
        self._last = time.monotonic()
        work = plan(self.held, watermarks, self._committed)
        if not work:
            return Committed(True)
        after = [done for tp, offset in work.offsets.items() for done in self._after.due(tp, offset)]
        producer = self._producer
        try:
            producer.begin_transaction()
            for record in work.records:
                self._produce(record)
            producer.send_offsets_to_transaction(
                [TopicPartition(tp[0], tp[1], offset) for tp, offset in work.offsets.items()],
                consumer.consumer_group_metadata(), CALL_TIMEOUT_S)
            self._commit_transaction()
        except KafkaException as exception:
            return self._failed(exception.args[0], set(work.offsets))
        self._committed.update(work.offsets)
        self.transactions += 1
        for done in after:
            done()
        return Committed(True)

    def _produce(self, record: OutRecord) -> None:
        while True:
            try:
                self._producer.produce(record.topic, record.value, record.key, headers=record.headers)
                return
            except BufferError:  # the local queue is full: let it drain
                self._producer.poll(0.05)

    def _commit_transaction(self) -> None:
        """commit_transaction, again while Kafka says it may be retried (a timeout)."""
        deadline = time.monotonic() + CALL_TIMEOUT_S * 3
        while True:
            try:
                self._producer.commit_transaction(CALL_TIMEOUT_S)
                return
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                if not error.retriable() or time.monotonic() >= deadline:
                    raise

    def _failed(self, error: KafkaError, tps: set[TP]) -> Committed:
        reason = kafka_reason(KafkaException(error))
        event("transaction.aborted",
              f"{self._member}: the transaction was not committed ({reason}); its partitions are read "
              "again from their committed offsets", level="WARNING", consumer=self._member,
              error=reason, partitions=sorted(p for _, p in tps), fenced=error.fatal())
        if error.fatal():
            self._replace_producer()
        else:
            try:
                self._producer.abort_transaction(CALL_TIMEOUT_S)
            except KafkaException as exception:  # cannot even abort: start over with a new producer
                event("transaction.abort_failed", f"{self._member}: {kafka_reason(exception)}",
                      level="WARNING", consumer=self._member)
                self._replace_producer()
        for tp in tps:
            self._committed.pop(tp, None)
        return Committed(False, tps, reason)

    def _replace_producer(self) -> None:
        old = self._producer
        self._producer = self._new_producer()  # init_transactions fences the old one
        del old

    def close(self) -> None:
        """Nothing is pending between commits: only the held records (not committed) go."""
        self._producer.flush(0)
