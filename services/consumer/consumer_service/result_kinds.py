"""Results as outgoing records under PROCESSING_GUARANTEE=at_least_once (kinds of
consumer_service.outgoing.RecordKind): a succeeded job's result, and a dead letter that carries
the job's failure result. Either way the job finishes, its offset committable, only once the
broker acknowledged every record (one report for both records of a dead letter:
DeadLetterPublisher.send). Under exactly_once the same records go into the member's
transactions instead (consumer_service.transactions)."""

from __future__ import annotations

from consumer_service.dead_letters import DeadLetterPublisher, DeadLetters, DeliveryReport
from consumer_service.outgoing import Record
from consumer_service.result_records import dead_lettered_records
from consumer_service.scheduler import Task


class Results:
    """A succeeded job's result: `Record.detail` is its records (consumer_service.result_records)."""

    name = "result"

    def __init__(self, publisher: DeadLetterPublisher, topic: str) -> None:
        self._publisher = publisher
        self.topic = topic

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        self._publisher.send(record.detail, report)

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        """Nothing more: the job was counted and logged as processed when its handler returned."""


class DeadLettersWithResults:
    """Dead letters (`Record.detail` is the reason), each with its job's failure result."""

    name = "dead letter"

    def __init__(self, dead_letters: DeadLetters, publisher: DeadLetterPublisher, results_topic: str,
                 member: str) -> None:
        self._dead_letters = dead_letters
        self._publisher = publisher
        self._results_topic = results_topic
        self._member = member
        self.topic = dead_letters.topic

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        self._publisher.send(dead_lettered_records(
            self.topic, self._results_topic, task.payload, job=record.job, reason=record.detail,
            attempts=record.attempts, member=self._member), report)

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        self._dead_letters.acknowledged(task, record, member)
