"""Publishing given-up jobs and non-job messages to DLQ_TOPIC, with headers saying why.

The original key, value and headers are kept; `dlq.*` headers name the error, the number
of attempts and the original topic, partition and offset. The consumer commits the
original offset only after the broker acknowledged the dead letter (a group member through
consumer_service.outgoing, with `DeadLetters` as the record kind).

`DeadLetterPublisher` owns a member's producer: the group worker sends its other outgoing
records (parked copies) on it too (`produce`), so one thread serves all their answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer_service.outgoing import Record, identify
from consumer_service.scheduler import Task
from consumer_service.settings import ConsumerSettings
from consumer_service.transactions import OutRecord
from jobpipe.handling import log_dead_lettered
from jobpipe.kafka_clients import producer_config

# Called (on the thread that polls the publisher) with the broker's answer: None or the error.
DeliveryReport = Callable[[KafkaError | None, Message], None]


def dead_letter_headers(message: Message, reason: str, attempts: int,
                        consumer: str) -> list[tuple[str, str | bytes | None]]:
    ours = {
        "dlq.error": reason,
        "dlq.attempts": str(attempts),
        "dlq.original.topic": message.topic() or "",
        "dlq.original.partition": str(message.partition()),
        "dlq.original.offset": str(message.offset()),
        "dlq.consumer": consumer,
        "dlq.failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    original = message.headers() or []
    pairs = list(original.items()) if isinstance(original, dict) else list(original)
    kept: list[tuple[str, str | bytes | None]] = [
        (name, value) for name, value in pairs if not name.startswith("dlq.")]
    return kept + [(name, value.encode()) for name, value in ours.items()]


class DeadLetterPublisher:
    def __init__(self, settings: ConsumerSettings, client_id: str, timeout_s: float | None = None) -> None:
        """`timeout_s`: how long librdkafka tries to deliver a dead letter before it reports
        failure (its message.timeout.ms; librdkafka's default when None)."""
        self.topic = settings.dlq_topic
        config = producer_config(settings, client_id)
        if timeout_s is not None:
            config["message.timeout.ms"] = int(timeout_s * 1000)
        self._producer = Producer(config)

    def publish(self, message: Message, reason: str, attempts: int, consumer: str,
                report: DeliveryReport) -> None:
        """Send `message` to the DLQ; `report` gets the broker's answer from `poll`. Raises
        BufferError (the local queue is full) or KafkaException if it cannot even be queued."""
        self._producer.produce(self.topic, key=message.key(), value=message.value(),
                               headers=dead_letter_headers(message, reason, attempts, consumer),
                               on_delivery=report)

    def send(self, records: Sequence[OutRecord], report: DeliveryReport) -> None:
        """Send `records` (a job's result; a dead letter and its failure result); `report` once
        all are answered: None, or the first error. Raises (nothing then queued) if the first
        cannot even be queued; one after it that cannot is reported as failed."""
        if len(records) > 1:
            report = _AllAnswered(len(records), report).one
        for index, record in enumerate(records):
            try:
                self._producer.produce(record.topic, key=record.key, value=record.value,
                                       headers=record.headers, on_delivery=report)
            except (BufferError, KafkaException) as error:
                if index == 0:
                    raise
                for _ in records[index:]:  # the first ones are out: the whole lot is published again
                    report(KafkaError(KafkaError._FAIL, f"not queued: {error}"), None)  # type: ignore[arg-type]
                return

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def close(self, timeout: float) -> int:
        """Flush; return how many dead letters were still unacknowledged."""
        return self._producer.flush(timeout)


class DeadLetterCount(Protocol):
    dead_lettered: int


class DeadLetters:
    """Dead letters as a kind of outgoing record (consumer_service.outgoing.RecordKind):
    `Record.detail` is the reason."""

    name = "dead letter"

    def __init__(self, publisher: DeadLetterPublisher, counts: DeadLetterCount, member: str) -> None:
        self._publisher = publisher
        self._counts = counts
        self._member = member
        self.topic = publisher.topic

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        self._publisher.publish(task.payload, record.detail, record.attempts, self._member, report)

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        self._counts.dead_lettered += 1
        key, job_id = identify(task, record.job)
        log_dead_lettered(key, job_id, reason=record.detail, attempts=record.attempts, consumer=member,
                          destination=self.topic, partition=task.tp[1], offset=task.offset)


class _AllAnswered:
    """One report for several records: after the last answer, with the first error if any
    (answers may come on two threads that poll the producer at once)."""

    def __init__(self, count: int, report: DeliveryReport) -> None:
        self._left = count
        self._error: KafkaError | None = None
        self._report = report
        self._lock = threading.Lock()

    def one(self, error: KafkaError | None, message: Message) -> None:
        with self._lock:
            self._left -= 1
            if error is not None and self._error is None:
                self._error = error
            last = self._left == 0
        if last:
            self._report(self._error, message)
