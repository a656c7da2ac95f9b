"""Results as outgoing records under PROCESSING_GUARANTEE=at_least_once (kinds of
consumer_service.outgoing.RecordKind): a succeeded job's result, and a dead letter that carries
the job's failure result. Either way the job finishes, its offset committable, only once the
broker acknowledged every record (one report for both records of a dead letter:
MemberProducer.send). Under exactly_once the same records go into the member's
transactions instead (consumer_service.transactions): a kind says which with `records`
(`TransactionalKind`). A kind of record the worker sends under exactly_once must have it: the
parked copies of delays (consumer_service.parking) have one, so they join the transaction.
"""

from __future__ import annotations

from typing import Protocol

from consumer_service.dead_letters import DeadLetters
from consumer_service.member_producer import DeliveryReport, MemberProducer
from consumer_service.outgoing import Record, RecordKind
from consumer_service.result_records import dead_lettered_records
from consumer_service.scheduler import Task
from consumer_service.transactions import OutRecord


class TransactionalKind(RecordKind, Protocol):
    """A kind of record that can also be written in an exactly-once transaction."""

    def records(self, task: Task, record: Record) -> list[OutRecord]:
        """The Kafka records `record` stands for (what `publish` sends)."""


class Results:
    """A succeeded job's result: `Record.detail` is its records (consumer_service.result_records)."""

    name = "result"

    def __init__(self, producer: MemberProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    def records(self, task: Task, record: Record) -> list[OutRecord]:
        return list(record.detail)

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        self._producer.send(record.detail, report)

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        """Nothing more: the job was counted and logged as processed when its handler returned."""


class DeadLettersWithResults:
    """Dead letters (`Record.detail` is the reason), each with its job's failure result when
    RESULTS_TOPIC is set (`results_topic`)."""

    name = "dead letter"

    def __init__(self, dead_letters: DeadLetters, producer: MemberProducer, results_topic: str | None,
                 member: str) -> None:
        self._dead_letters = dead_letters
        self._producer = producer
        self._results_topic = results_topic
        self._member = member
        self.topic = dead_letters.topic

    def records(self, task: Task, record: Record) -> list[OutRecord]:
        return dead_lettered_records(self.topic, self._results_topic, task.payload, job=record.job,
                                     reason=record.detail, attempts=record.attempts, member=self._member)

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        self._producer.send(self.records(task, record), report)

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        self._dead_letters.acknowledged(task, record, member)
