"""The seed's scenario on a real broker: reset, two consumers in one group, the default producer."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import fnv1a, murmur2

from tests.integration.conftest import Pipeline, processed
from tests.observing import owned_by_member, split_among, wait_until
from tests.service_runner import ServiceProcess

SEED_KEYS = {f"p{w}-m{s}" for w in (1, 2) for s in range(10)}


def wait_for_split(consumers: list[ServiceProcess], partitions: int, timeout: float = 60) -> None:
    """Until every consumer owns some partitions and together they own all, once each."""
    def split() -> bool:
        owned = {str(n): set().union(*owned_by_member(c.events()).values())
                 for n, c in enumerate(consumers)}
        return split_among(owned, len(consumers), partitions)
    wait_until(split, timeout, f"{len(consumers)} consumers to share {partitions} partitions")


def test_seed_scenario_processes_all_20_jobs_once_across_two_consumers(pipeline: Pipeline) -> None:
    reset = pipeline.run("topic-admin", "reset")
    assert reset.process.returncode == 0, reset.tail()
    consumers = [pipeline.start("consumer"), pipeline.start("consumer")]
    wait_for_split(consumers, 3)

    producer = pipeline.run("producer")
    assert producer.process.returncode == 0, producer.tail()
    produced = producer.events("job.produced")
    assert {e["key"] for e in produced} == SEED_KEYS
    for e in produced:  # the default partitioner places keys like the Java client
        assert e["partition"] == murmur2(e["key"].encode(), 3), e

    wait_until(lambda: len(processed(*consumers)) >= 20, 60, "20 processed jobs")
    for consumer in consumers:
        assert consumer.stop() == 0, consumer.tail()

    done = processed(*consumers)
    assert Counter(e["key"] for e in done) == Counter(SEED_KEYS), "each seed job exactly once"
    assert {e["partition"] for e in done} == {0, 1, 2}
    assert all(consumer.events("job.processed") for consumer in consumers), "both consumers worked"
    by_id = {e["id"]: e for e in produced}
    for event in done:  # logged where the broker put it
        assert (event["partition"], event["offset"]) == (by_id[event["id"]]["partition"],
                                                         by_id[event["id"]]["offset"])
        assert event["attempt"] == 1
        assert event["duration_ms"] >= 0
    for consumer in consumers:
        stopped = consumer.events("service.stopped")[-1]
        assert stopped["exit_code"] == 0
    assert sum(c.events("service.stopped")[-1]["processed"] for c in consumers) == 20


def test_fnv1a_partitioner_places_keys_like_the_seeds_kafka_go_hash_balancer(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(partitions=3)
    producer = pipeline.run("producer", partitioner="fnv1a_random")
    assert producer.process.returncode == 0, producer.tail()
    produced = producer.events("job.produced")
    assert len(produced) == 20
    assert all(e["partition"] == fnv1a(e["key"].encode(), 3) for e in produced)
    assert {e["partition"] for e in produced} == {0, 1, 2}
