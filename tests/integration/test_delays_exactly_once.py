"""Delayed jobs under PROCESSING_GUARANTEE=exactly_once on a real broker (issues 23 and 24):
a member dies (SIGKILL, its tier mover with it) while its jobs wait in the 5 s tier or are being
moved on; the member that takes over runs the rest; a read_committed reader of RESULTS_TOPIC sees
every job's result exactly once, none from before the job's time. A retry with a back-off longer
than DELAY_HOLD_MAX_MS (parked in the member's transaction) gives one result too."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from jobpipe.job import Job
from jobpipe.results import Result
from tests.integration.conftest import Pipeline
from tests.integration.test_delays import FAST_SESSION, starts
from tests.integration.test_results import ensure_with_results, read_committed
from tests.observing import wait_until

DELAYED = 400
BACKOFF_MS = 12000  # equal jitter: 6-12 s, past the 5 s tier (a wait under it is held in memory)


@contextmanager
def watermarks(pipeline: Pipeline) -> Iterator[Callable[[], int]]:
    """The jobs topic's end offsets added up (uncommitted records included), as a function."""
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"ends-{uuid.uuid4().hex}"})
    try:
        partitions = [TopicPartition(pipeline.topic, p) for p in
                      consumer.list_topics(pipeline.topic, timeout=10).topics[pipeline.topic].partitions]
        yield lambda: sum(consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in partitions)
    finally:
        consumer.close()


def test_every_delayed_job_has_exactly_one_result_when_a_member_dies_while_they_are_parked(
        pipeline: Pipeline, tmp_path: Path) -> None:
    topic = ensure_with_results(pipeline)
    record = tmp_path / "starts.txt"
    member = {"handler": "tests.handlers:timed", "test_record_file": record, "log_level": "DEBUG",
              "results_topic": topic, "processing_guarantee": "exactly_once", "delay_hold_max_ms": 500,
              "kafka_consumer_extra_config": FAST_SESSION, "retry_backoff_initial_ms": BACKOFF_MS,
              "retry_backoff_max_ms": BACKOFF_MS, "max_attempts": 3}
    first = pipeline.start("consumer", **member)
    first.wait_for("partitions.assigned", timeout=60)  # its transactional producers are ready
    # Due from 8 to 18 s from now: parked in the 5 s tier, some moved through it twice, and
    # moved back to the jobs topic (and run) over about ten seconds.
    now = datetime.now(UTC)
    delayed = [Job.create({"n": n}, key=f"k{n % 40}", not_before=now + timedelta(seconds=8 + n % 11))
               for n in range(DELAYED)]
    pipeline.send(delayed)
    try:
        first.wait_for("job.parked", DELAYED // 2, timeout=60)
        # Kill it the moment its mover starts copying the first of them back to the jobs topic
        # (a burst of copies: an at-least-once mover would not have committed their tier offsets).
        with watermarks(pipeline) as end:
            wait_until(lambda: end() > DELAYED, 60, "the first copies back in the jobs topic", poll=0.002)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{first.tail(30)}") from None
    first.signal(signal.SIGKILL)
    ran_before_kill = len(starts(record))
    second = pipeline.start("consumer", **member)

    retried = Job.create({"fail_times": 1}, key="retried")
    pipeline.send([retried])
    everything = [*delayed, retried]
    try:
        records = read_committed(pipeline, topic, len(everything), timeout=90, settle_s=3)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{second.tail(30)}") from None
    assert second.stop() == 0, second.tail()
    first.wait(5)

    results = [Result.from_bytes(m.value()) for m in records]
    counted = Counter(r.id for r in results)
    twice = sorted(job_id for job_id, n in counted.items() if n > 1)
    missing = sorted(job.id for job in everything if job.id not in counted)
    assert not twice and not missing and len(counted) == len(everything), \
        f"one result per job: {len(twice)} twice, {len(missing)} missing, {len(counted)} ids"
    by_id = {r.id: r for r in results}
    ran = starts(record)
    for job in delayed:
        assert job.not_before is not None
        assert by_id[job.id].ok and by_id[job.id].finished_at >= job.not_before, f"{job.key} early"
        assert min(ran[job.id]) >= job.not_before.timestamp(), f"{job.key} started before its time"
    assert (by_id[retried.id].ok, by_id[retried.id].attempts) == (True, 2)
    retry_runs = sorted(ran[retried.id])
    (retry,) = [e for e in second.events("job.retry") if e["id"] == retried.id]
    assert retry_runs[-1] - retry_runs[0] >= retry["delay_ms"] / 1000, "the retry came back early"
    assert any(e.get("retry") for e in second.events("job.parked")), "the retry was not parked"
    runs = sum(len(ran[job.id]) for job in delayed)
    print(f"{ran_before_kill} run before the kill; handler runs {runs} for {DELAYED} delayed jobs; "
          f"results {len(results)}")
