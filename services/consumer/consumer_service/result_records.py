"""The records a finished job publishes besides its offset: its result, or its dead letter and
its failure result. Built here once for both guarantees (at-least-once sends them one by one
and commits after the acknowledgement; exactly-once writes them in the member's transaction,
consumer_service.transactions).

Why the failure result: a caller waiting for a job's result (jobpipe.client.submit_for_result)
learns that it was dead-lettered at once, with the error, instead of waiting out its timeout.
A message that is not a job has no id, so it publishes no result, only its dead letter.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message

from consumer_service.dead_letters import dead_letter_record
from consumer_service.transactions import OutRecord
from jobpipe.job import Job
from jobpipe.results import Result, result_bytes


def result_record(topic: str, job: Job, value: Any, attempts: int) -> OutRecord:
    """A succeeded job's result, keyed by its id."""
    result = Result.succeeded(job.id, job.type, job.key, value, attempts)
    return OutRecord(topic, job.id, result_bytes(result))


def failure_record(topic: str, job: Job, error: str, attempts: int) -> OutRecord:
    """A dead-lettered job's failure result, keyed by its id."""
    return OutRecord(topic, job.id, result_bytes(Result.failed(job.id, job.type, job.key, error, attempts)))


def dead_lettered_records(dlq_topic: str, results_topic: str | None, message: Message, *, job: Job | None,
                          reason: str, attempts: int, member: str) -> list[OutRecord]:
    """A given-up job's records: its dead letter, then (results on, and it is a job) its failure result."""
    records = [dead_letter_record(dlq_topic, message, reason, attempts, member)]
    if results_topic is not None and job is not None:
        records.append(failure_record(results_topic, job, reason, attempts))
    return records
