"""The consumer's delivery semantics against a real broker: retries, dead letters, slow
handlers, non-blocking retries, graceful shutdown and hand-over."""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from jobpipe.job import Job
from tests.integration.conftest import Pipeline, processed
from tests.service_runner import wait_until

SCRIPTED = "tests.handlers:scripted"


def job(seq: int, **payload: object) -> Job:
    return Job.new(9, seq, payload=payload or {"message": "ok"})


def seconds_between(earlier: dict[str, Any], later: dict[str, Any]) -> float:
    """Seconds between two log events, from their `time` fields (RFC 3339, milliseconds)."""
    def at(e: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00"))
    return (at(later) - at(earlier)).total_seconds()


def test_failing_attempts_are_retried_with_growing_backoff_then_succeed(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    flaky = [job(i, fail_times=2) for i in range(4)]
    fine = [job(100 + i) for i in range(6)]
    pipeline.send([*flaky, *fine])
    consumer = pipeline.start("consumer", handler=SCRIPTED, retry_backoff_initial_ms=200)
    consumer.wait_for("job.processed", 10, timeout=60)
    assert consumer.stop() == 0

    done = {e["id"]: e for e in consumer.events("job.processed")}
    assert set(done) == {j.id for j in flaky + fine}
    assert all(done[j.id]["attempt"] == 3 for j in flaky)
    assert all(done[j.id]["attempt"] == 1 for j in fine)
    for flaky_job in flaky:
        retries = [e for e in consumer.events("job.retry") if e["id"] == flaky_job.id]
        assert [e["attempt"] for e in retries] == [1, 2]
        first, second = (e["delay_ms"] for e in retries)
        assert 100 <= first <= 200 and 200 <= second <= 400, (first, second)
        assert "fails attempt" in retries[0]["error"]
    assert consumer.events("job.dead_lettered") == []


def test_exhausted_and_invalid_messages_go_to_the_dlq_with_headers(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    doomed = job(1, fail="always")
    good = [job(10 + i) for i in range(5)]
    placed = pipeline.send([doomed, b"this is not json", b'{"id": "x"}', *good])
    consumer = pipeline.start("consumer", handler=SCRIPTED, max_attempts=3,
                              retry_backoff_initial_ms=50, retry_backoff_max_ms=200)
    consumer.wait_for("job.dead_lettered", 3, timeout=60)
    consumer.wait_for("job.processed", 5, timeout=60)
    assert consumer.stop() == 0

    letters = pipeline.read(pipeline.dlq, 3)
    headers = [{k: v.decode() for k, v in (m.headers() or [])} for m in letters]
    by_value = {m.value(): h for m, h in zip(letters, headers, strict=True)}
    exhausted = by_value[doomed.to_bytes()]
    assert exhausted["dlq.attempts"] == "3"
    assert "always fails" in exhausted["dlq.error"]
    assert exhausted["dlq.original.topic"] == pipeline.topic
    assert (int(exhausted["dlq.original.partition"]), int(exhausted["dlq.original.offset"])) == placed[0]
    for raw, (partition, offset) in zip([b"this is not json", b'{"id": "x"}'], placed[1:3], strict=True):
        assert by_value[raw]["dlq.attempts"] == "0"
        assert by_value[raw]["dlq.error"].startswith("not a job")
        assert (int(by_value[raw]["dlq.original.partition"]),
                int(by_value[raw]["dlq.original.offset"])) == (partition, offset)
    assert {e["id"] for e in processed(consumer)} == {j.id for j in good}
    retries = [e for e in consumer.events("job.retry") if e["id"] == doomed.id]
    assert len(retries) == 2, "attempts 1 and 2 retried, attempt 3 dead-lettered"

    describe = pipeline.run("topic-admin", "describe", "--json")
    assert describe.process.returncode == 0, describe.tail()


def test_handler_slower_than_max_poll_interval_keeps_the_consumer_in_the_group(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    slow = job(0, sleep_s=9)
    others = [job(1 + i) for i in range(10)]
    pipeline.send([slow, *others])
    consumer = pipeline.start("consumer", handler=SCRIPTED,
                              kafka_extra_config="max.poll.interval.ms=6000,session.timeout.ms=6000")
    consumer.wait_for("job.processed", 11, timeout=90)
    assert consumer.stop() == 0

    counts = Counter(e["id"] for e in processed(consumer))
    assert counts == Counter({j.id: 1 for j in [slow, *others]}), "each job exactly once"
    slow_event = next(e for e in processed(consumer) if e["id"] == slow.id)
    assert slow_event["duration_ms"] >= 9000
    assert len(consumer.events("partitions.assigned")) == 1, "never rejoined the group"
    lost = [e for e in consumer.events("partitions.revoked") if e.get("lost")]
    assert lost == []
    assert not [e for e in consumer.events("kafka.error") if "max.poll" in e["message"].lower()]


def test_a_job_waiting_for_its_retry_does_not_stall_other_partitions(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    failing = job(0, fail_times=1)
    pipeline.send([failing], partition=0)
    later_same_partition = [job(10 + i) for i in range(3)]
    pipeline.send(later_same_partition, partition=0)
    consumer = pipeline.start("consumer", handler=SCRIPTED, ordering="partition",
                              retry_backoff_initial_ms=6000, retry_backoff_max_ms=6000)
    retry = consumer.wait_for("job.retry", 1, timeout=60)[0]
    other = [job(20 + i) for i in range(3)] + [job(30 + i) for i in range(3)]
    pipeline.send(other[:3], partition=1)
    pipeline.send(other[3:], partition=2)
    consumer.wait_for("job.processed", 10, timeout=60)
    assert consumer.stop() == 0

    done = processed(consumer)
    order = [e["id"] for e in done]
    retried_at = order.index(failing.id)
    assert {j.id for j in other} <= set(order[:retried_at]), "other partitions flowed meanwhile"
    partition0 = [e["offset"] for e in done if e["partition"] == 0]
    assert partition0 == sorted(partition0), "a partition's jobs stay in order"
    expected_order = [failing.id] + [j.id for j in later_same_partition]
    assert [e["id"] for e in done if e["partition"] == 0] == expected_order
    assert retry["delay_ms"] >= 3000
    assert Counter(order) == Counter({e: 1 for e in order})


def test_sigterm_mid_stream_exits_0_and_the_next_consumer_takes_only_the_rest(
        pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics()
    jobs = [job(i) for i in range(200)]
    pipeline.send(jobs, partition=0)
    release = tmp_path / "release"  # jobs from seq 20 on wait for it: the stream is mid-way
    budget = 5.0
    first = pipeline.start("consumer", handler="tests.handlers:gated", shutdown_timeout_s=budget,
                           test_gate_seq=20, test_release_file=release)
    first.wait_for("job.processed", 20, timeout=60)
    first.signal(signal.SIGTERM)
    signalled = time.monotonic()
    first.wait_for("service.stopping", timeout=10)
    release.touch()  # the job in hand finishes; nothing more starts
    assert first.wait(budget + 10) == 0, first.tail()
    took = time.monotonic() - signalled
    # The promise, as the service measures it: from the signal to its last line.
    stopping, stopped = first.events("service.stopping")[0], first.events("service.stopped")[-1]
    assert seconds_between(stopping, stopped) <= budget, "stopped within SHUTDOWN_TIMEOUT_S"
    # From outside: the same plus a stated margin of 3 s for delivering the signal, the
    # interpreter's exit and this test's polling on a loaded machine.
    assert took <= budget + 3, f"exited {took:.1f} s after SIGTERM (SHUTDOWN_TIMEOUT_S={budget:g})"
    done_first = {e["id"] for e in processed(first)}
    assert 20 <= len(done_first) < 200

    second = pipeline.start("consumer", handler="tests.handlers:gated", test_release_file=release)
    wait_until(lambda: len(processed(second)) >= 200 - len(done_first), 60, "the rest to be processed")
    assert second.stop() == 0
    done_second = [e["id"] for e in processed(second)]
    assert not done_first & set(done_second), "nothing committed was processed again"
    assert done_first | set(done_second) == {j.id for j in jobs}
    assert len(done_second) == len(set(done_second))


def test_sigterm_to_a_continuous_producer_keeps_every_logged_job(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    producer = pipeline.start("producer", messages_per_worker=0, produce_rate=200)
    producer.wait_for("job.produced", 300, timeout=60)
    assert producer.stop() == 0, producer.tail()
    logged = {e["id"] for e in producer.events("job.produced")}
    stopped = producer.events("service.stopped")[-1]
    assert stopped["failed"] == 0 and stopped["produced"] == len(logged) == stopped["sent"]
    in_topic = {Job.from_bytes(m.value()).id for m in pipeline.read(pipeline.topic, len(logged))}
    assert in_topic == logged


def test_an_async_def_handler_is_awaited_and_does_its_work(pipeline: Pipeline, tmp_path: Path) -> None:
    """An `async def` HANDLER used to be called without being awaited: every job logged as
    processed and committed, its work never done."""
    record = tmp_path / "done.txt"
    pipeline.ensure_topics()
    jobs = [job(i) for i in range(30)]
    pipeline.send(jobs)
    consumer = pipeline.start("consumer", handler="tests.handlers:async_record", test_record_file=record)
    consumer.wait_for("job.processed", 30, timeout=60)
    assert consumer.stop() == 0, consumer.tail()
    assert sorted(record.read_text().split()) == sorted(j.id for j in jobs)
