"""Publishing given-up jobs and non-job messages to DLQ_TOPIC, with headers saying why.

The original key, value and headers are kept; `dlq.*` headers name the error, the number
of attempts and the original topic, partition and offset. The consumer commits the
original offset only after the broker acknowledged the dead letter.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, Producer

from consumer_service.settings import ConsumerSettings
from jobpipe.kafka_clients import producer_config


class Delivery:
    """The broker's answer for one dead letter."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.error: str | None = None

    def done(self) -> bool:
        return self._done.is_set()

    def report(self, error: KafkaError | None, _message: Message) -> None:
        self.error = error.str() if error is not None else None
        self._done.set()


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
    def __init__(self, settings: ConsumerSettings, client_id: str) -> None:
        self.topic = settings.dlq_topic
        self._producer = Producer(producer_config(settings, client_id))

    def publish(self, message: Message, reason: str, attempts: int, consumer: str) -> Delivery:
        delivery = Delivery()
        self._producer.produce(self.topic, key=message.key(), value=message.value(),
                               headers=dead_letter_headers(message, reason, attempts, consumer),
                               on_delivery=delivery.report)
        return delivery

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def close(self, timeout: float) -> int:
        """Flush; return how many dead letters were still unacknowledged."""
        return self._producer.flush(timeout)
