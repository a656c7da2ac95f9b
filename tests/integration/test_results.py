"""Results on the real broker (issue 24): every job's handler value reaches RESULTS_TOPIC once,
a dead-lettered job publishes its failure result beside its dead letter, a fenced member's
transaction never shows, and a client waits for its job's value."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from jobpipe.job import Job
from jobpipe.results import Result
from tests.integration.conftest import Pipeline
from tests.observing import wait_until

HANDLER = "tests.integration.result_handlers:square"


def results_topic(pipeline: Pipeline) -> str:
    return f"{pipeline.topic}.results"


def read_committed(pipeline: Pipeline, topic: str, expected: int, timeout: float = 60.0,
                   settle_s: float = 1.5) -> list[Any]:
    """Every record of `topic` visible to a read_committed reader, once `expected` are there
    and nothing more came for `settle_s`."""
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Any] = []

        def enough() -> bool:
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    records.append(message)
            return len(records) >= expected

        wait_until(enough, timeout, f"{expected} records in {topic} (have {len(records)})", poll=0)
        quiet_until = time.monotonic() + settle_s
        while time.monotonic() < quiet_until:
            records += [m for m in consumer.consume(500, 0.2) if m.error() is None]
        return records
    finally:
        consumer.close()


def ensure_with_results(pipeline: Pipeline) -> str:
    """JOBS_TOPIC, DLQ_TOPIC and RESULTS_TOPIC, 3 partitions each, by `topic-admin ensure`."""
    topic = results_topic(pipeline)
    admin = pipeline.run("topic-admin", "ensure", results_topic=topic)
    assert admin.process.returncode == 0, admin.tail()
    assert admin.events("topic.created")[-1]["topic"] == topic
    return topic


def jobs(count: int, **payload: Any) -> list[Job]:
    return [Job.create({"n": n, **payload}, key=f"k{n % 50}") for n in range(count)]


@pytest.mark.parametrize(("concurrency", "guarantee"), [(1, "exactly_once"), (32, "exactly_once"),
                                                        (32, "at_least_once")])
def test_every_job_has_exactly_one_result_with_its_value(pipeline: Pipeline, concurrency: int,
                                                         guarantee: str) -> None:
    topic = results_topic(pipeline)
    ensure_with_results(pipeline)
    sent = jobs(600)
    pipeline.send(sent)
    consumer = pipeline.start("consumer", handler=HANDLER, results_topic=topic,
                              processing_guarantee=guarantee, consumer_concurrency=concurrency,
                              test_handler_sleep_ms=1)
    records = read_committed(pipeline, topic, len(sent))
    assert consumer.stop() == 0, consumer.tail()
    results = [Result.from_bytes(m.value()) for m in records]
    assert Counter(r.id for r in results) == Counter({j.id: 1 for j in sent}), "one result per job"
    by_id = {j.id: j for j in sent}
    for message, result in zip(records, results, strict=True):
        job = by_id[result.id]
        assert message.key() == job.id.encode()
        assert (result.ok, result.value, result.key, result.attempts) == (
            True, {"id": job.id, "square": job.payload["n"] ** 2}, job.key, 1)
