"""Parked copies: a job that must wait longer than the in-memory threshold, published to a delay
tier, as a kind of outgoing record (consumer_service.outgoing.RecordKind).

Why it exists: a job that waits (its `not_before`, or a retry's long back-off) must not hold its
partition, a slot or the committed offset (jobpipe.delays). So a copy goes to a delay tier and
the original counts as finished once the broker acknowledged the copy (consumer_service.outgoing
owns that wait; a share-group member, consumer_service.share_worker, accepts its record only
then). The copy has the original key, value and headers, plus `delay.*` headers (its due time,
when it leaves the tier, the tier) and, for a retry, `retry.*` (attempts made, the last error);
consumer_service.tier_mover moves it on when its tier's time is up.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Message

from consumer_service.member_producer import DeliveryReport, MemberProducer
from consumer_service.outgoing import Record, identify
from consumer_service.scheduler import Task
from consumer_service.transactions import OutRecord
from jobpipe import metrics
from jobpipe.delays import (
    ATTEMPTS_HEADER,
    DUE_HEADER,
    ERROR_HEADER,
    PARKED_HEADERS,
    RELEASE_HEADER,
    TIER_HEADER,
    Park,
    epoch_ms,
)
from jobpipe.handling import label_of
from jobpipe.logs import event

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Parking:
    """Where a job is parked (`Record.detail` of a parked copy)."""

    park: Park
    due: float  # epoch seconds
    error: str | None = None  # a parked retry: its last attempt's error


def parked_headers(original: Headers | None, parking: Parking, attempts: int) -> Headers:
    """The copy's headers: the original's (less any earlier `delay.*`/`retry.*`) and ours."""
    kept = [(name, value) for name, value in original or [] if name not in PARKED_HEADERS]
    ours: Headers = [(DUE_HEADER, epoch_ms(parking.due)),
                     (RELEASE_HEADER, epoch_ms(parking.park.release_at)),
                     (TIER_HEADER, parking.park.tier.name.encode())]
    if attempts:
        ours.append((ATTEMPTS_HEADER, str(attempts).encode()))
    if parking.error is not None:
        ours.append((ERROR_HEADER, parking.error.encode(errors="replace")[:1000]))
    return kept + ours


def parked_copy(message: Message, parking: Parking, attempts: int) -> OutRecord:
    """The parked copy of `message` (its key and value, the headers of `parked_headers`), for
    the group member (below) and the share member (consumer_service.share_worker)."""
    headers = message.headers()
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    return OutRecord(parking.park.tier.topic, message.key(), message.value(),
                     parked_headers(pairs, parking, attempts))


def count_parked(parking: Parking, key: str | None, job_id: str | None, *, partition: int, offset: int,
                 member: str) -> None:
    """A parked copy the broker acknowledged: counted (jobs_parked_total) and logged."""
    tier = parking.park.tier
    metrics.JOBS_PARKED.labels(tier.name).inc()
    event("job.parked",
          f"{member} parked {label_of(key, job_id)} from partition {partition} offset {offset} "
          f"in {tier.topic} until {parking.park.release_at:.3f} (due {parking.due:.3f})",
          level="DEBUG", id=job_id, key=key, partition=partition, offset=offset,
          tier=tier.name, due=parking.due, release_at=parking.park.release_at,
          retry=parking.error is not None, consumer=member)


class ParkedCopies:
    """Copies of waiting jobs sent to the delay tiers, on the member's producer."""

    name = "parked copy"

    def __init__(self, producer: MemberProducer, jobs_topic: str) -> None:
        self._producer = producer
        self.topic = f"{jobs_topic}.delay.*"

    def records(self, task: Task, record: Record) -> list[OutRecord]:
        """The copy (under PROCESSING_GUARANTEE=exactly_once it goes in the member's transaction)."""
        return [parked_copy(task.payload, record.detail, record.attempts)]

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        self._producer.send(self.records(task, record), report)

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        key, job_id = identify(task, record.job)
        count_parked(record.detail, key, job_id, partition=task.tp[1], offset=task.offset, member=member)
