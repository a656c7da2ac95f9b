"""The group's lag is what is left to process: after jobs written in a Kafka transaction (a
re-drive's, an exactly-once producer's), the commit marker that follows them is never handed
to the consumer, and its committed offset used to stop at the marker: lag 1 for good, which
paged JobpipeNoJobsProcessed in an idle pipeline."""

from __future__ import annotations

import uuid

from confluent_kafka import Producer

from jobpipe.group_offsets import GroupReader
from jobpipe.job import Job
from jobpipe.settings import KafkaSettings
from tests.integration.conftest import Pipeline
from tests.observing import wait_until


def test_lag_is_0_once_jobs_written_in_a_transaction_are_processed(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(partitions=1)
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "transactional.id": f"t-{uuid.uuid4()}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    jobs = [Job.create({"n": n}) for n in range(3)]
    for job in jobs:
        producer.produce(pipeline.topic, job.to_bytes(), partition=0)
    producer.commit_transaction(30)  # offsets 0..2 the jobs, 3 the commit marker: the end is 4

    consumer = pipeline.start("consumer")
    consumer.wait_for("job.processed", 3)
    reader = GroupReader(KafkaSettings(kafka_bootstrap_servers=pipeline.bootstrap), pipeline.group,
                         "lag-check", 10.0)
    try:
        def lag() -> int:
            [state] = reader.states(pipeline.topic, [0])
            return state.lag

        assert reader.states(pipeline.topic, [0])[0].end == 4
        wait_until(lambda: lag() == 0, 30, "the group's lag at 0 (the committed offset past the marker)")
    finally:
        reader.close()
    assert consumer.stop() == 0
