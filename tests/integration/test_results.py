"""Results on the real broker (issue 24): every job's handler value reaches RESULTS_TOPIC once,
a dead-lettered job publishes its failure result beside its dead letter, a fenced member's
transaction never shows, and a client waits for its job's value."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from jobpipe.client import AsyncJobClient, JobClient
from jobpipe.errors import ConfigError
from jobpipe.job import InvalidJob, Job
from jobpipe.result_waiter import JobFailed, ResultTimeout
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
    sent = jobs(300)
    pipeline.send(sent)
    consumer = pipeline.start("consumer", handler=HANDLER, results_topic=topic,
                              processing_guarantee=guarantee, consumer_concurrency=concurrency,
                              test_handler_sleep_ms=1)
    try:
        records = read_committed(pipeline, topic, len(sent))
    except AssertionError as error:
        raise AssertionError(f"{error}\n{consumer.tail(30)}") from None
    assert consumer.stop() == 0, consumer.tail()
    results = [Result.from_bytes(m.value()) for m in records]
    assert Counter(r.id for r in results) == Counter({j.id: 1 for j in sent}), "one result per job"
    by_id = {j.id: j for j in sent}
    for message, result in zip(records, results, strict=True):
        job = by_id[result.id]
        assert message.key() == job.id.encode()
        assert (result.ok, result.value, result.key, result.attempts) == (
            True, {"id": job.id, "square": job.payload["n"] ** 2}, job.key, 1)


def test_a_dead_lettered_job_publishes_its_dead_letter_and_its_failure_result(pipeline: Pipeline) -> None:
    topic = ensure_with_results(pipeline)
    sent = jobs(20)
    failing = [Job.create({"fail": True}, key=f"bad{n}") for n in range(5)]
    pipeline.send(sent + failing)
    consumer = pipeline.start("consumer", handler=HANDLER, results_topic=topic, max_attempts=2,
                              processing_guarantee="exactly_once", retry_backoff_initial_ms=10,
                              retry_backoff_max_ms=10)
    results = [Result.from_bytes(m.value()) for m in read_committed(pipeline, topic, 25)]
    letters = read_committed(pipeline, pipeline.dlq, 5, settle_s=0.5)
    assert consumer.stop() == 0, consumer.tail()
    failed = {r.id: r for r in results if not r.ok}
    assert set(failed) == {j.id for j in failing}
    assert all(r.attempts == 2 and r.error == f"Refused: job {r.id} fails" for r in failed.values())
    assert sorted(Job.from_bytes(m.value()).id for m in letters) == sorted(failed)
    assert all(dict(m.headers())["dlq.attempts"] == b"2" for m in letters)
    assert sorted(r.id for r in results if r.ok) == sorted(j.id for j in sent)


def test_a_member_frozen_past_its_session_cannot_commit_its_results(pipeline: Pipeline,
                                                                    tmp_path: Path) -> None:
    """Member A is frozen (SIGSTOP) with finished jobs in hand; B takes its partitions over and
    re-runs them; A resumes (SIGCONT): its transaction is refused (its generation is stale) or
    its partitions are found lost first. Either way a read_committed reader sees one result per job."""
    topic = ensure_with_results(pipeline)
    sent = jobs(240)
    pipeline.send(sent)
    runs = tmp_path / "runs.txt"
    settings = {"handler": HANDLER, "results_topic": topic, "processing_guarantee": "exactly_once",
                "test_handler_sleep_ms": 25, "test_record_file": runs,
                "kafka_consumer_extra_config": "session.timeout.ms=6000,heartbeat.interval.ms=1000"}
    frozen = pipeline.start("consumer", **settings)
    frozen.wait_for("job.processed", 30, timeout=60)
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        other = pipeline.start("consumer", **settings)
        wait_until(lambda: any(len(e["owned"]) == 3 for e in other.events("partitions.assigned")), 60,
                   "the other member owning every partition")
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    wait_until(lambda: frozen.events("transaction.aborted") or
               any(e.get("lost") for e in frozen.events("partitions.revoked")), 30,
               "the resumed member's transaction refused, or its partitions found lost")
    results = [Result.from_bytes(m.value()) for m in read_committed(pipeline, topic, len(sent), settle_s=3)]
    assert frozen.stop() == 0 and other.stop() == 0, frozen.tail() + other.tail()
    assert Counter(r.id for r in results) == Counter({j.id: 1 for j in sent}), "one result per job"
    handler_runs = Counter(runs.read_text().split())
    assert set(handler_runs) == {j.id for j in sent}
    print(f"handler runs: {sum(handler_runs.values())} for {len(sent)} jobs; "
          f"aborted transactions: {len(frozen.events('transaction.aborted'))}")


def test_a_client_waits_for_its_jobs_value_and_learns_of_a_failure(pipeline: Pipeline) -> None:
    topic = ensure_with_results(pipeline)
    consumer = pipeline.start("consumer", handler=HANDLER, results_topic=topic, max_attempts=1,
                              consumer_concurrency=4)
    with JobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                   results_topic=topic, kafka_wait_timeout_s=20) as client:
        assert client.submit_and_wait({"n": 7}, timeout=60)["square"] == 49
        futures = [client.submit_for_result({"n": n}, key=f"k{n}") for n in range(30)]
        assert [f.result(timeout=30)["square"] for f in futures] == [n * n for n in range(30)]
        with pytest.raises(JobFailed, match="after 1 attempt") as failure:
            client.submit_for_result({"fail": True}).result(timeout=30)
        assert failure.value.error is not None and failure.value.error.startswith("Refused")
        slow = client.submit_for_result({"n": 1, "sleep_s": 2})
        started = time.monotonic()
        with pytest.raises(ResultTimeout, match=r"no result on .* within 0.5 s"):
            slow.result(timeout=0.5)
        assert time.monotonic() - started < 2.5

    async def waits() -> list[int]:
        async with AsyncJobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                                  results_topic=topic, kafka_wait_timeout_s=20) as client:
            first = await client.submit_and_wait({"n": 3}, timeout=30)
            pending = [await client.submit_for_result({"n": n}) for n in range(5)]
            rest = [value["square"] for value in await asyncio.gather(*(p.result(30) for p in pending))]
            with pytest.raises(ResultTimeout):
                await (await client.submit_for_result({"sleep_s": 2})).result(timeout=0.3)
            return [first["square"], *rest]

    assert asyncio.run(waits()) == [9, 0, 1, 4, 9, 16]
    assert consumer.stop() == 0, consumer.tail()


def test_a_client_waits_for_a_delayed_jobs_value_which_comes_no_earlier_than_its_time(
        pipeline: Pipeline) -> None:
    """submit_for_result takes submit's delay= and at=: the wait for the value includes the
    delay, and the handler starts no earlier than the job's not_before."""
    topic = ensure_with_results(pipeline)
    consumer = pipeline.start("consumer", handler="tests.integration.result_handlers:started_at",
                              results_topic=topic)
    with JobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                   results_topic=topic, kafka_wait_timeout_s=20) as client:
        with pytest.raises(InvalidJob, match="delay= must not be negative"):
            client.submit_for_result({"n": 1}, delay=-1)
        submitted = time.time()
        delayed = client.submit_for_result({"n": 1}, delay=3)
        at = datetime.now(UTC) + timedelta(seconds=3)

        async def waits() -> Result:
            async with AsyncJobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                                      results_topic=topic, kafka_wait_timeout_s=20) as async_client:
                return await (await async_client.submit_for_result({"n": 2}, at=at)).outcome(timeout=30)

        timed = asyncio.run(waits())
        outcome = delayed.outcome(timeout=30)
    assert outcome.ok and outcome.value["started_at"] >= submitted + 3, (outcome, submitted)
    assert outcome.finished_at.timestamp() >= submitted + 3
    assert timed.ok and timed.value["started_at"] >= at.timestamp(), (timed, at)
    assert consumer.stop() == 0, consumer.tail()


def test_waiting_needs_the_results_topic(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    with JobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                   kafka_wait_timeout_s=20) as client, pytest.raises(ConfigError, match="RESULTS_TOPIC"):
        client.submit_for_result({"n": 1})
