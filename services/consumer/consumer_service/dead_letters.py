"""Publishing given-up jobs and non-job messages to DLQ_TOPIC, with headers saying why.

The original key, value and headers are kept; `dlq.*` headers name the error, the number
of attempts and the original topic, partition and offset. The consumer commits the
original offset only after the broker acknowledged the dead letter (a group member through
consumer_service.outgoing, with `DeadLetters` as the record kind).

The dead letters go out on the member's producer (consumer_service.member_producer), with
its other records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import Message

from consumer_service.member_producer import DeliveryReport, MemberProducer
from consumer_service.outgoing import Record, identify
from consumer_service.scheduler import Task
from consumer_service.transactions import OutRecord
from jobpipe.handling import log_dead_lettered


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


def dead_letter_record(topic: str, message: Message, reason: str, attempts: int, member: str) -> OutRecord:
    """The dead letter of `message` (sent alone at-least-once; in a transaction exactly-once)."""
    return OutRecord(topic, message.key(), message.value(),
                     dead_letter_headers(message, reason, attempts, member))


class DeadLetterCount(Protocol):
    dead_lettered: int


class DeadLetters:
    """Dead letters as a kind of outgoing record (consumer_service.outgoing.RecordKind):
    `Record.detail` is the reason."""

    name = "dead letter"

    def __init__(self, producer: MemberProducer, topic: str, counts: DeadLetterCount, member: str) -> None:
        self._producer = producer
        self._counts = counts
        self._member = member
        self.topic = topic

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        self._producer.send((dead_letter_record(self.topic, task.payload, record.detail, record.attempts,
                                                self._member),), report)

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        self._counts.dead_lettered += 1
        key, job_id = identify(task, record.job)
        log_dead_lettered(key, job_id, reason=record.detail, attempts=record.attempts, consumer=member,
                          destination=self.topic, partition=task.tp[1], offset=task.offset)
