"""Fixtures for running the services against the session's real Kafka.

`pipeline` gives each test its own topics and consumer group, starts services with those
settings, and kills whatever is still running at teardown.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from jobpipe.job import Job
from tests.service_runner import ServiceProcess, wait_until


@dataclass
class Pipeline:
    bootstrap: str
    topic: str
    dlq: str
    group: str
    started: list[ServiceProcess] = field(default_factory=list)

    def settings(self, **extra: object) -> dict[str, object]:
        return {"kafka_bootstrap_servers": self.bootstrap, "jobs_topic": self.topic,
                "dlq_topic": self.dlq, "consumer_group": self.group,
                "kafka_wait_timeout_s": 30, "shutdown_timeout_s": 10} | extra

    def start(self, command: str, *args: str, **extra: object) -> ServiceProcess:
        service = ServiceProcess(command, *args, **self.settings(**extra))
        self.started.append(service)
        return service

    def run(self, command: str, *args: str, timeout: float = 120.0, **extra: object) -> ServiceProcess:
        service = self.start(command, *args, **extra)
        service.wait(timeout)
        return service

    def ensure_topics(self, partitions: int = 3) -> None:
        admin = self.run("topic-admin", "ensure", jobs_partitions=partitions)
        assert admin.process.returncode == 0, admin.tail()

    def send(self, values: list[bytes | Job], partition: int | None = None) -> list[tuple[int, int]]:
        """Produce jobs (or raw values) and return their (partition, offset)."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all",
                             "enable.idempotence": True})
        placed: dict[int, tuple[int, int]] = {}

        def reporter(index: int) -> Any:
            def report(error: Any, message: Message) -> None:
                assert error is None, error
                placed[index] = (message.partition() or 0, message.offset() or 0)
            return report

        for index, value in enumerate(values):
            key, raw = (value.key, value.to_bytes()) if isinstance(value, Job) else (None, value)
            extra = {} if partition is None else {"partition": partition}
            producer.produce(self.topic, key=key, value=raw, on_delivery=reporter(index), **extra)
        assert producer.flush(30) == 0
        return [placed[index] for index in range(len(values))]

    def read(self, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
        """Read `topic` from the beginning until `expected` messages (or fail)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        messages: list[Message] = []

        def enough() -> bool:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                messages.append(message)
            return len(messages) >= expected

        try:
            wait_until(enough, timeout, f"{expected} messages in {topic} (have {len(messages)})", poll=0)
            extra = consumer.poll(1.0)  # nothing more should be there
            assert extra is None or extra.error() is not None, "more messages than expected"
        finally:
            consumer.close()
        return messages


@pytest.fixture
def pipeline(kafka_bootstrap: str, topic_name: str) -> Iterator[Pipeline]:
    line = Pipeline(kafka_bootstrap, topic_name, f"{topic_name}.dlq", f"group-{topic_name}")
    try:
        yield line
    finally:
        for service in line.started:
            service.kill()


def processed(*services: ServiceProcess) -> list[dict[str, Any]]:
    return [e for s in services for e in s.events("job.processed")]
