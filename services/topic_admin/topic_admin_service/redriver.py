"""`topic-admin redrive`: dead letters from DLQ_TOPIC back to JOBS_TOPIC, exactly once.

How a dead letter is never lost nor doubled, whatever stops the run (SIGTERM, SIGKILL, a
broker restart): Kafka transactions. The copies of a batch of dead letters and one record
in the redrive ledger (topic `<DLQ_TOPIC>.redriven`, listing the DLQ offsets the batch
moved) are written in one transaction. Either both become visible or neither does:
- consumers of JOBS_TOPIC read `read_committed` (librdkafka's default, and the consumer
  service's), so the copies of a transaction that never committed are never processed;
- each run first calls init_transactions with the same transactional.id, which aborts the
  transaction a killed run left open (and fences that run if it is still alive), and only
  then reads the ledger; every dead letter the ledger lists is left alone.
A consumer group's committed offset could not do this: committed after the copies were
acknowledged, a kill between the two re-drives the batch again (doubles), and an offset
cannot leave the dead letters a filter skipped in the DLQ for a later run. The ledger can.

The DLQ itself is never changed (Kafka cannot delete single messages); the run reads it up to
its end offsets at the start, so jobs dead-lettered again meanwhile wait for the next run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from jobpipe.errors import KafkaUnreachable, StopRequested
from jobpipe.kafka_clients import Config, consumer_config, kafka_reason, producer_config
from jobpipe.logs import event
from jobpipe.redrive_ledger import ledger_topic, read_ledger_record
from topic_admin_service.errors import RedriveFailed, Refused
from topic_admin_service.output import Bar, NoProgress
from topic_admin_service.redrive import (
    REDRIVE_SOURCE,
    DeadLetter,
    Ledger,
    Selection,
    Tally,
    Verdict,
    ledger_record,
    pace,
    redriven_headers,
    target_partition,
)
from topic_admin_service.settings import TopicAdminSettings
from topic_admin_service.topics import REQUEST_TIMEOUT_S, _kafka_code
from topic_admin_service.when import to_millis

TRANSACTION_TIMEOUT_MS = 10_000  # how long an abandoned transaction holds up JOBS_TOPIC's readers
BATCH_MAX_AGE_S = 1.0  # a batch that fills slowly (a rare filter match) is committed this often
SINCE_MARGIN = timedelta(minutes=5)  # --since: start reading this much before, for clock skew
READ_BATCH = 500
COMMIT_WAIT_S = 5.0  # one commit_transaction call; retried while Kafka answers "try again"
READER_GROUP = "topic-admin-redrive"  # librdkafka wants a group.id; it is never joined nor committed


@dataclass(frozen=True)
class Page:
    """One page of `Redriver.page`: the letters, where the next page starts, whether one may."""

    letters: list[tuple[DeadLetter, bool]]
    after: dict[int, int]  # per DLQ partition, the first offset not read yet
    more: bool  # some partition was not read to its end


def _error_of(error: KafkaException) -> KafkaError | None:
    return error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None


class Redriver:
    def __init__(self, settings: TopicAdminSettings, admin: AdminClient, stop: threading.Event, *,
                 dry_run: bool, batch_size: int, progress: NoProgress | Bar,
                 rate: float | None = None, delay_s: float | None = None,
                 keep_reader: bool = False) -> None:
        """`rate`: most dead letters moved per second (--rate; None: as fast as it goes);
        `delay_s`: each copy is due this long after it is moved (--delay; jobpipe.delays);
        `keep_reader`: keep the reading consumer between calls (the console's pages; `close`)."""
        self._settings = settings
        self._admin = admin
        self._stop = stop
        self._dry_run = dry_run
        self._batch_size = batch_size
        self._progress = progress
        self._dlq = settings.dlq_topic
        self._jobs = settings.jobs_topic
        self._ledger_topic = ledger_topic(self._dlq)
        self._ledger = Ledger()
        self._committed = 0
        self._producer: Producer | None = None
        self._topic_id = ""
        self._jobs_partitions = 0
        self._drained = False  # the last _read reached the end offsets it was given
        self._rate = rate
        self._delay_s = delay_s
        self._keep_reader = keep_reader
        self._kept: Consumer | None = None

    # ---- the run --------------------------------------------------------------------------

    def run(self, selection: Selection) -> Tally:
        topics = self._admin.list_topics(timeout=REQUEST_TIMEOUT_S).topics
        for variable, name in (("DLQ_TOPIC", self._dlq), ("JOBS_TOPIC", self._jobs)):
            if name not in topics or topics[name].error is not None:
                raise Refused(f"{variable}={name!r}: no such topic (`topic-admin ensure` creates it)")
        if len(self._ledger_topic) > 249:
            raise Refused(f"DLQ_TOPIC={self._dlq!r}: too long to name its ledger topic "
                          f"{self._ledger_topic!r}")
        self._topic_id, replicas, partitions = self._describe_dlq()
        self._jobs_partitions = len(topics[self._jobs].partitions)
        tally = Tally(dry_run=self._dry_run)
        try:
            if self._dry_run:
                if self._ledger_topic in topics:
                    self._read_ledger()
            else:
                created = self._ensure_ledger(replicas, exists=self._ledger_topic in topics)
                left_open = self._copies_left_open()
                self._start_producer()  # aborts what a killed run left open, fences that run
                if left_open:
                    event("redrive.aborted_earlier",
                          f"aborted the open transaction of an interrupted earlier re-drive of {self._dlq} "
                          f"({left_open} dead letter(s) copied but not committed); no consumer saw "
                          "those copies, and this run moves those dead letters if its filters select them",
                          level="WARNING", not_committed=left_open)
                if not created:
                    self._read_ledger()  # after init_transactions: it shows every commit
            self._scan(selection, tally, partitions)
        finally:
            self._progress.close()
            if self._producer is not None:
                self._producer.flush(1)  # nothing is outstanding after the last commit
        return tally

    def browse(self, selection: Selection, limit: int) -> list[tuple[DeadLetter, bool]]:
        """Up to `limit` dead letters that `selection`'s filters match, oldest first per DLQ
        partition, each with whether an earlier run re-drove it (read only: nothing moves)."""
        return self.page(selection, limit).letters

    def page(self, selection: Selection, limit: int, after: Mapping[int, int] | None = None) -> Page:
        """`browse` from a cursor: per DLQ partition, the offset to read from (`Page.after` of
        the page before; partitions it leaves out start at their beginning). Reads no further
        than `limit` matches, so a page of a large DLQ costs what the page holds."""
        topics = self._admin.list_topics(timeout=REQUEST_TIMEOUT_S).topics
        if self._dlq not in topics or topics[self._dlq].error is not None:
            raise Refused(f"DLQ_TOPIC={self._dlq!r}: no such topic (`topic-admin ensure` creates it)")
        self._topic_id, _replicas, partitions = self._describe_dlq()
        if self._ledger_topic in topics:
            self._read_ledger()
        found: list[tuple[DeadLetter, bool]] = []
        with self._reader() as consumer:
            starts, ends = self._bounds(consumer, partitions, selection)
            if after and selection.at is None:
                starts = {p: min(ends[p], max(start, after.get(p, start))) for p, start in starts.items()}
            next_from = dict(starts)
            for message in self._read(consumer, self._dlq, starts, ends):
                letter = DeadLetter.from_message(message)
                next_from[letter.partition] = letter.offset + 1
                if selection.matches(letter):
                    found.append((letter, letter in self._ledger))
                    if len(found) >= limit:
                        break
        if len(found) < limit and not self._stop.is_set():
            next_from = dict(ends)  # read to the end: nothing further matches
        return Page(found, next_from, more=any(next_from[p] < ends[p] for p in ends))

    def _scan(self, selection: Selection, tally: Tally, partitions: list[int]) -> None:
        consumer = Consumer(self._consumer_config())
        try:
            starts, ends = self._bounds(consumer, partitions, selection)
            self._progress.start(sum(ends[p] - starts[p] for p in starts))
            batch: list[DeadLetter] = []
            oldest = began = time.monotonic()
            for message in self._read(consumer, self._dlq, starts, ends):
                letter = DeadLetter.from_message(message)
                verdict = selection.verdict(letter, already_redriven=letter in self._ledger)
                tally.add(verdict, letter)
                self._progress.advance()
                if verdict is Verdict.MOVE and not self._dry_run:
                    self._stop.wait(pace(tally.moved - 1, time.monotonic() - began, self._rate))
                    if not batch:
                        oldest = time.monotonic()
                    batch.append(letter)
                if batch and (len(batch) >= self._batch_size
                              or time.monotonic() - oldest >= BATCH_MAX_AGE_S):
                    self._move(batch)
                    batch = []
                if tally.limit_reached(selection) or self._stop.is_set():
                    break
            if batch:
                self._move(batch)
            tally.interrupted = (self._stop.is_set() and not self._drained
                                 and not tally.limit_reached(selection))
        finally:
            consumer.close()

    # ---- reading --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Consumer]:
        """A consumer for the ledger and the DLQ: a new one each time, or with `keep_reader`
        the one kept from the last time (a browser of pages then skips connecting again; it is
        dropped after an error, and closed by `close`)."""
        consumer = self._kept or Consumer(self._consumer_config())
        self._kept = None
        try:
            yield consumer
        except BaseException:
            consumer.close()
            raise
        if self._keep_reader:
            consumer.unassign()
            self._kept = consumer
        else:
            consumer.close()

    def close(self) -> None:
        """Close the consumer `keep_reader` kept (nothing to do otherwise)."""
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def _consumer_config(self) -> Config:
        # The service's consumer settings (connection, extra properties), then what reading the
        # DLQ and the ledger needs: assigned partitions, nothing committed, committed data only.
        return consumer_config(self._settings, "topic-admin-redrive", READER_GROUP) | {
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",  # the ledger: only what committed transactions wrote
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }

    def _bounds(self, consumer: Consumer, partitions: list[int],
                selection: Selection) -> tuple[dict[int, int], dict[int, int]]:
        """Where to start reading each DLQ partition and where to stop (its end offset now)."""
        starts, ends = {}, {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self._dlq, partition),
                                                       timeout=REQUEST_TIMEOUT_S, cached=False)
            starts[partition], ends[partition] = low, high
        if selection.at is not None:  # one dead letter: read just its offset
            wanted, offset = selection.at
            if wanted not in starts or not starts[wanted] <= offset < ends[wanted]:
                raise Refused(f"--at {wanted}:{offset}: {self._dlq} has no dead letter there")
            return {wanted: offset}, {wanted: offset + 1}
        if selection.since is not None:
            # The message timestamp is taken when the dead letter is produced, after its
            # dlq.failed_at: nothing that failed after --since lies before this offset.
            moment = to_millis(selection.since - SINCE_MARGIN)
            found = consumer.offsets_for_times([TopicPartition(self._dlq, p, moment) for p in partitions],
                                               timeout=REQUEST_TIMEOUT_S)
            for tp in found:
                first = ends[tp.partition] if tp.offset < 0 else tp.offset
                starts[tp.partition] = max(starts[tp.partition], first)
        return starts, ends

    def _read(self, consumer: Consumer, topic: str, starts: dict[int, int],
              ends: dict[int, int]) -> Iterator[Message]:
        """The messages of `topic` from `starts` up to `ends` (exclusive), per partition; returns
        early when a stop is requested."""
        pending = {p for p in starts if starts[p] < ends[p]}
        self._drained = not pending
        if not pending:
            return
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(pending)])
        quiet_since = time.monotonic()
        while pending and not self._stop.is_set():
            messages = consumer.consume(READ_BATCH, timeout=0.5)
            if messages:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > self._settings.kafka_wait_timeout_s:
                raise KafkaUnreachable(
                    f"no answer from Kafka for {topic} within {self._settings.kafka_wait_timeout_s:g} s "
                    f"(KAFKA_WAIT_TIMEOUT_S)")
            for message in messages:
                partition = message.partition() or 0
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                    elif error.fatal():
                        raise KafkaException(error)
                    else:
                        event("kafka.error", f"reading {topic}: {error.str()}", level="WARNING",
                              code=error.name())
                    continue
                offset = message.offset() or 0
                if partition not in pending or offset >= ends[partition]:
                    pending.discard(partition)
                    continue
                if offset >= ends[partition] - 1:
                    pending.discard(partition)
                self._drained = not pending
                yield message
        self._drained = not pending

    def _copies_left_open(self) -> int:
        """Copies of this DLQ's dead letters that an earlier run wrote to JOBS_TOPIC in a
        transaction still open now (a run killed mid-transaction): they lie between a
        partition's last stable offset and its end. init_transactions aborts them next."""
        committed, everything = (Consumer(self._consumer_config() | {"isolation.level": level})
                                 for level in ("read_committed", "read_uncommitted"))
        try:
            starts, ends = {}, {}
            for partition in range(self._jobs_partitions):
                tp = TopicPartition(self._jobs, partition)
                stable = committed.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S, cached=False)[1]
                end = everything.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S, cached=False)[1]
                if stable < end:
                    starts[partition], ends[partition] = stable, end
            return sum(1 for message in self._read(everything, self._jobs, starts, ends)
                       if (DeadLetter.from_message(message).header(REDRIVE_SOURCE) or "")
                       .startswith(f"{self._dlq}/"))
        finally:
            committed.close()
            everything.close()

    def _read_ledger(self) -> None:
        self._ledger = Ledger()
        with self._reader() as consumer:
            partitions = consumer.list_topics(self._ledger_topic, timeout=REQUEST_TIMEOUT_S) \
                .topics[self._ledger_topic].partitions
            starts, ends = {}, {}
            for partition in partitions:
                starts[partition], ends[partition] = consumer.get_watermark_offsets(
                    TopicPartition(self._ledger_topic, partition), timeout=REQUEST_TIMEOUT_S, cached=False)
            for message in self._read(consumer, self._ledger_topic, starts, ends):
                value = message.value()
                raw = value.encode() if isinstance(value, str) else value
                self._ledger.add_ranges(read_ledger_record(raw, self._topic_id))
        if self._stop.is_set():
            raise StopRequested("stopped while reading the redrive ledger")
        event("redrive.ledger", f"{len(self._ledger)} dead letter(s) of {self._dlq} were re-driven before",
              topic=self._ledger_topic, already_redriven=len(self._ledger))

    # ---- topics ---------------------------------------------------------------------------

    def _describe_dlq(self) -> tuple[str, int, list[int]]:
        """The DLQ's topic id, its replication factor and its partitions."""
        future = self._admin.describe_topics(TopicCollection([self._dlq]), request_timeout=REQUEST_TIMEOUT_S)
        description = future[self._dlq].result()
        replicas = max((len(p.replicas) for p in description.partitions), default=1)
        return str(description.topic_id), replicas, sorted(p.id for p in description.partitions)

    def _ensure_ledger(self, replicas: int, *, exists: bool) -> bool:
        """Create the ledger topic if missing (as long-lived as the DLQ); True if created now."""
        if exists:
            return False
        resource = ConfigResource(ResourceType.TOPIC, self._dlq)
        configs = next(iter(self._admin.describe_configs([resource], request_timeout=REQUEST_TIMEOUT_S)
                            .values())).result()
        retention = configs.get("retention.ms")
        config = {"retention.ms": retention.value} if retention is not None and retention.value else {}
        new = NewTopic(self._ledger_topic, num_partitions=1, replication_factor=replicas, config=config)
        try:
            self._admin.create_topics([new], request_timeout=REQUEST_TIMEOUT_S)[self._ledger_topic].result()
        except KafkaException as error:
            if _kafka_code(error) == KafkaError.TOPIC_ALREADY_EXISTS:
                return False  # another redrive created it meanwhile
            raise
        event("topic.created", f"created {self._ledger_topic}: the ledger of re-driven dead letters",
              topic=self._ledger_topic, partitions=1, replication_factor=replicas)
        return True

    # ---- writing --------------------------------------------------------------------------

    def _producer_config(self) -> Config:
        return producer_config(self._settings, "topic-admin-redrive") | {
            # One id per DLQ: a new run fences an old one, so two never move the same letters.
            "transactional.id": f"topic-admin-redrive.{self._dlq}",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        }

    def _start_producer(self) -> None:
        """A transactional producer, ready: init_transactions completes (commits or aborts) the
        transaction an earlier producer with this transactional.id left, and fences that one."""
        producer = Producer(self._producer_config())
        deadline = time.monotonic() + self._settings.kafka_wait_timeout_s
        while True:
            try:
                producer.init_transactions(max(1.0, min(REQUEST_TIMEOUT_S, deadline - time.monotonic())))
                break
            except KafkaException as error:
                kafka_error = _error_of(error)
                if kafka_error is None or not kafka_error.retriable() or time.monotonic() >= deadline:
                    raise RedriveFailed(f"could not start a transaction: {kafka_reason(error)}") from None
                self._give_up_if_stopping("starting a transaction")
        self._producer = producer

    def _recover(self, reason: str) -> None:
        """After an error that leaves the producer unusable (say, its transaction was aborted by
        the coordinator while the broker restarted): a new producer, and the ledger read again,
        so what the failed transaction did commit is not moved twice."""
        event("redrive.recovering", f"transactional producer failed ({reason}); starting a new one",
              level="WARNING", error=reason)
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(KafkaException):
                old.purge(in_queue=True, in_flight=True, blocking=False)
        self._start_producer()
        self._read_ledger()

    def _give_up_if_stopping(self, doing: str) -> None:
        """While Kafka fails, SIGTERM/SIGINT must still stop the run in time: the transaction in
        flight is left open, and the next run (or the coordinator, after
        TRANSACTION_TIMEOUT_MS) aborts it."""
        if self._stop.is_set():
            event("redrive.stopped", f"stopped while {doing}: the batch in flight was not moved",
                  level="WARNING", moved=self._committed)
            raise StopRequested(f"stopped while {doing}")

    def _move(self, batch: list[DeadLetter]) -> None:
        """Copy `batch` to JOBS_TOPIC and record it in the ledger, in one transaction."""
        deadline = time.monotonic() + self._settings.kafka_wait_timeout_s
        while True:
            pending = [letter for letter in batch if letter not in self._ledger]
            if not pending:
                break  # a transaction that reported failure had committed after all
            assert self._producer is not None
            try:
                self._transaction(self._producer, pending)
                self._ledger.add(pending)
                break
            except KafkaException as error:
                kafka_error, reason = _error_of(error), kafka_reason(error)
                if kafka_error is not None and kafka_error.code() in (KafkaError._FENCED,
                                                                      KafkaError.PRODUCER_FENCED):
                    raise RedriveFailed(
                        f"another `topic-admin redrive` of {self._dlq} took over; this one stops "
                        f"(its {self._committed} moves stay, the batch in flight was not committed)"
                    ) from None
                if time.monotonic() >= deadline:
                    raise RedriveFailed(f"a transaction kept failing for "
                                        f"{self._settings.kafka_wait_timeout_s:g} s (KAFKA_WAIT_TIMEOUT_S): "
                                        f"{reason}") from None
                self._give_up_if_stopping("Kafka failed")
                if kafka_error is not None and kafka_error.txn_requires_abort() and not kafka_error.fatal():
                    event("redrive.retry", f"transaction aborted ({reason}); moving the batch again",
                          level="WARNING", error=reason)
                    try:
                        self._producer.abort_transaction(max(1.0, min(REQUEST_TIMEOUT_S,
                                                                      deadline - time.monotonic())))
                        continue
                    except KafkaException as abort_error:
                        reason = kafka_reason(abort_error)
                self._recover(reason)
        self._committed += len(batch)
        level = "DEBUG" if self._progress.shown else "INFO"  # on a terminal the bar says it
        event("redrive.progress", f"moved {len(batch)} dead letter(s) ({self._committed} in this run)",
              level=level, moved=len(batch), total_moved=self._committed)

    def _transaction(self, producer: Producer, letters: list[DeadLetter]) -> None:
        producer.begin_transaction()
        for letter in letters:
            partition = target_partition(letter, self._jobs, self._jobs_partitions)
            due = None if self._delay_s is None else time.time() + self._delay_s  # held or parked till then
            headers: list[tuple[str, str | bytes | None]] = list(redriven_headers(letter, self._dlq, due))
            self._produce(producer, self._jobs, letter.key, letter.value, headers=headers,
                          partition=-1 if partition is None else partition)  # -1: placed by its key
        record = ledger_record(self._dlq, self._topic_id, letters, datetime.now(UTC))
        self._produce(producer, self._ledger_topic, self._topic_id.encode(), record, headers=[], partition=0)
        deadline = time.monotonic() + self._settings.kafka_wait_timeout_s
        while True:
            try:
                producer.commit_transaction(max(1.0, min(COMMIT_WAIT_S, deadline - time.monotonic())))
                return
            except KafkaException as error:
                kafka_error = _error_of(error)
                if kafka_error is None or not kafka_error.retriable() or time.monotonic() >= deadline:
                    raise
                # retriable (a timeout while the broker restarts): committing again is safe
                self._give_up_if_stopping("committing a transaction")

    @staticmethod
    def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None, *,
                 headers: list[tuple[str, str | bytes | None]], partition: int) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                producer.poll(0.1)
