"""The producer of one consumer member, for every record tied to one of its jobs.

Why it exists: a job's outcome may be a record in another topic (a dead letter, a parked copy
in a delay tier, a result), and the job's offset is committed only once the broker
acknowledged it (consumer_service.outgoing). The member sends all of them on one producer, so
that one thread (or the member's loop) serves every answer; this module owns that producer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer_service.settings import ConsumerSettings
from consumer_service.transactions import OutRecord
from jobpipe.kafka_clients import producer_config

# Called (on the thread that polls the producer) with the broker's answer: None or the error.
DeliveryReport = Callable[[KafkaError | None, Message], None]


class MemberProducer:
    """A member's producer for every record tied to one of its jobs: dead letters, parked
    copies, results. One producer, so one thread serves all their answers."""

    def __init__(self, settings: ConsumerSettings, client_id: str, timeout_s: float | None = None) -> None:
        """`timeout_s`: how long librdkafka tries to deliver a record before it reports
        failure (its message.timeout.ms; librdkafka's default when None)."""
        config = producer_config(settings, client_id)
        if timeout_s is not None:
            config["message.timeout.ms"] = int(timeout_s * 1000)
        self._producer = Producer(config)

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
        """Flush; return how many records were still unacknowledged."""
        return self._producer.flush(timeout)


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
