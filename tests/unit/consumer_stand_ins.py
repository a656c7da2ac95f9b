"""What the loop tests of both consumer modes (test_consumer_loop, test_share_worker) build a
member from: a stand-in for the dead-letter producer (confluent_kafka.Producer), which answers
deliveries in `poll` (and `flush`) as librdkafka does and can be told to hold its answers, to
fail some, or to refuse to queue at all; settings and a handler with fast retries; and the
member's log, captured as JSON events."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message

from consumer_service.main import job_handler
from consumer_service.settings import ConsumerSettings
from jobpipe.handling import JobHandler
from jobpipe.job import Job
from jobpipe.logs import configure_logging

TOPIC = "jobs"


def member_parts(function: Callable[[Job], Any], **settings: Any) -> tuple[ConsumerSettings, JobHandler]:
    """A member's settings (no broker; retries after 1-2 ms unless told) and its handler."""
    values: dict[str, Any] = {"kafka_bootstrap_servers": "127.0.0.1:1", "jobs_topic": TOPIC,
                              "retry_backoff_initial_ms": 1, "retry_backoff_max_ms": 2, **settings}
    config = ConsumerSettings(**values)
    return config, job_handler(config, function)


class JsonLog:
    """The services' log, as JSON lines in a buffer, from creation until `restore`."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        configure_logging("consumer", "INFO", "json", self._buffer)

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self._buffer.getvalue().splitlines()]
        return [line for line in lines if line["event"] == name]

    @staticmethod
    def restore() -> None:
        configure_logging("tests", "INFO", "text")


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
