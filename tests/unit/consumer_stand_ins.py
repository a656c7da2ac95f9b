"""A stand-in for the consumer's dead-letter producer (confluent_kafka.Producer), shared by the
loop tests of both consumer modes: it answers deliveries in `poll` (and `flush`), as librdkafka
does, and can be told to hold its answers, to fail some, or to refuse to queue at all."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message


class FakeProducer:
    """`hold` keeps every answer back; `failures` answers fail first (message timed out);
    `refuse` makes `produce` raise BufferError (the local queue is full)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.pending: list[tuple[Callable[..., None], Message]] = []
        self.published: list[Message] = []
        self.failures = 0
        self.hold = False
        self.refuse = False
        self.polls = 0

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                headers: Any = None, on_delivery: Callable[..., None] | None = None) -> None:
        if self.refuse:
            raise BufferError("Local: Queue full")
        assert on_delivery is not None
        self.pending.append((on_delivery, Message(topic=topic, key=key, value=value, headers=headers)))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        if self.hold or not self.pending:
            time.sleep(min(timeout, 0.01))
            return 0
        answered, self.pending = self.pending, []
        for report, message in answered:
            if self.failures:
                self.failures -= 1
                report(KafkaError(KafkaError._MSG_TIMED_OUT), message)
            else:
                self.published.append(message)
                report(None, message)
        return len(answered)

    def flush(self, timeout: float = 0) -> int:
        """What is still unanswered (held answers stay so)."""
        self.poll(0)
        return len(self.pending)
