"""The exactly-once scenario of `make reliability` (issue 24): members SIGKILLed at random while
they process a backlog with results on; then RESULTS_TOPIC, read read_committed, must hold every
job's result exactly once. Re-runs of the handler are allowed (they are counted and reported),
duplicate results are not.

Kept beside tests/integration/reliability.py (whose Run, profiles and report it uses) so that
file stays the other scenarios'."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from jobpipe.job import Job
from jobpipe.results import Result
from tests.integration.reliability import RESULTS, SHORT_SESSION, Run
from tests.observing import wait_until

HANDLER = "tests.integration.result_handlers:square"
JOBS = {"short": 1000, "full": 20_000}
KILLS = {"short": 2, "full": 6}
PARTITIONS = 6


class ResultReader:
    """Reads RESULTS_TOPIC read_committed from the start, counting each job id's results."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "isolation.level": "read_committed"})
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.counts: Counter[str] = Counter()

    def read(self, timeout: float = 0.2) -> int:
        for message in self._consumer.consume(5000, timeout):
            if message.error() is None:
                self.counts[Result.from_bytes(message.value()).id] += 1
        return len(self.counts)

    def close(self) -> None:
        self._consumer.close()


def exactly_once_sigkill(run: Run) -> dict[str, Any]:
    """11. Exactly-once members (one at concurrency 8) SIGKILLed at random while they work
    through a backlog; RESULTS_TOPIC read read_committed must show each job once."""
    profile = run.profile.name
    jobs = [Job.create({"n": n}, key=f"k{n % 500}") for n in range(JOBS[profile])]
    results_topic = f"{run.topic}.results"
    admin = run.start("topic-admin", "ensure", jobs_partitions=PARTITIONS, results_topic=results_topic)
    assert admin.wait(120) == 0, admin.tail()
    producer = Producer({"bootstrap.servers": run.bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5})
    for job in jobs:
        producer.produce(run.topic, job.to_bytes(), job.key)
        producer.poll(0)
    assert producer.flush(60) == 0
    run.ledger.test_sent += len(jobs)
    settings = {"handler": HANDLER, "results_topic": results_topic, "processing_guarantee": "exactly_once",
                "kafka_extra_config": SHORT_SESSION, "test_handler_sleep_ms": 1}
    run.consumer_settings = settings
    for concurrency in (1, 8, 1):
        run.consumer(consumer_concurrency=concurrency)
    reader = ResultReader(run.bootstrap, results_topic)
    rng = random.Random(24)
    kills = 0
    try:
        for kill in range(KILLS[profile]):  # spread over the backlog: after each share of results
            target = len(jobs) * (kill + 1) // (KILLS[profile] + 1)
            wait_until(lambda target=target: reader.read() >= target, run.profile.settle_s,
                       f"{target} results before kill {kill + 1}", poll=0)
            deadline = time.monotonic() + rng.uniform(0.0, 1.0)  # anywhere in a commit interval
            while time.monotonic() < deadline:
                reader.read(0.05)
            run.kill(rng.choice(run.running("consumer")))
            kills += 1
            run.consumer(consumer_concurrency=rng.choice((1, 8)))
        wait_until(lambda: reader.read() >= len(jobs), run.profile.settle_s,
                   f"a result for each of {len(jobs)} jobs", poll=0)
        quiet_until = time.monotonic() + 5  # anything late (a duplicate) would show by now
        while time.monotonic() < quiet_until:
            reader.read()
    finally:
        reader.close()
    sent_ids = {job.id for job in jobs}
    missing = len(sent_ids - reader.counts.keys())
    twice = sum(count - 1 for count in reader.counts.values())
    row = run.finish(f"{kills} members SIGKILLed")
    runs = sum(1 for service in run.services for event in service.events("job.processed"))
    row.update(sent=len(jobs), acked=len(jobs), lost=missing, duplicates=twice,
               processed_unique=len(reader.counts.keys() & sent_ids),
               notes=f"{kills} members SIGKILLed; results read_committed: {missing} missing, {twice} "
                     f"twice; handler runs {runs} for {len(jobs)} jobs (re-runs allowed)")
    RESULTS[-1] = row
    return row
