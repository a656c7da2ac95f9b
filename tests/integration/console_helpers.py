"""Helpers for the console's integration and browser tests: the console run as its real
console script (uvicorn) against the session's Kafka, dead letters made as the consumer writes
them, and the topics read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from confluent_kafka import Consumer, Producer, TopicPartition

from jobpipe.job import Job
from tests.integration.conftest import Pipeline
from tests.service_runner import ServiceProcess, free_port

TOKEN = "console-test-token-7f3a"
ERRORS = {"timeout": "TimeoutError: upstream timed out", "malformed": "ValueError: malformed payload"}


@contextmanager
def running_console(pipeline: Pipeline, **settings: object) -> Iterator[tuple[ServiceProcess, str]]:
    """The console service for the pipeline's topics and group; yields it and its base URL."""
    port = free_port()
    values: dict[str, object] = {"console_port": port, "console_token": TOKEN, "console_refresh_s": 0.5}
    service = pipeline.start("console", **(values | settings))
    try:
        service.wait_for("console.listening", timeout=60)
        yield service, f"http://127.0.0.1:{port}"
    finally:
        service.stop()


def dead_letters(pipeline: Pipeline, kinds: list[str], *, failed_at: datetime | None = None,
                 attempts: int = 5) -> list[Job]:
    """One dead letter per entry of `kinds` ("timeout" or "malformed") in the DLQ, with the
    headers the consumer writes; keys `<kind>-<n>`."""
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "acks": "all", "linger.ms": 20})
    moment = (failed_at or datetime.now(UTC)).isoformat(timespec="milliseconds").encode()
    jobs = []
    for seq, kind in enumerate(kinds):
        job = Job.create({"error": kind, "seq": seq}, key=f"{kind}-{seq}")
        jobs.append(job)
        headers = [("trace-id", job.id.encode()), ("dlq.error", ERRORS[kind].encode()),
                   ("dlq.attempts", str(attempts).encode()),
                   ("dlq.original.topic", pipeline.topic.encode()),
                   ("dlq.original.partition", str(seq % 3).encode()),
                   ("dlq.original.offset", str(seq // 3).encode()), ("dlq.consumer", b"test"),
                   ("dlq.failed_at", moment)]
        while True:
            try:
                producer.produce(pipeline.dlq, key=job.key, value=job.to_bytes(), headers=headers,
                                 partition=seq % 3)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    return jobs


def redriven_ids(pipeline: Pipeline, expected: int) -> list[str]:
    """The ids of the jobs in the jobs topic (exactly `expected` of them, read committed)."""
    return [json.loads(m.value() or b"")["id"] for m in pipeline.read(pipeline.topic, expected, timeout=60)]


def jobs_in(pipeline: Pipeline) -> int:
    """How many messages the jobs topic holds (its end offsets, summed): nothing moved is 0."""
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": "console-test-reader"})
    try:
        partitions = consumer.list_topics(pipeline.topic, timeout=10).topics[pipeline.topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(pipeline.topic, p), timeout=10)[1]
                   for p in partitions)
    finally:
        consumer.close()
