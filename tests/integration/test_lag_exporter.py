"""Lag metrics against the real broker: consumer_service.lag_exporter reads the group's lag per
partition and its members without joining the group (so it keeps reporting when every consumer
is down) and how many dead letters wait (not yet re-driven); each consumer replica reports
consumer_lag only for the partitions it owns."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from confluent_kafka import KafkaException, Producer
from local_kafka import LocalKafkaCluster
from prometheus_client import REGISTRY

from consumer_service.lag_exporter import LagReader
from consumer_service.settings import ConsumerSettings
from jobpipe.job import Job
from tests.integration.conftest import Pipeline
from tests.integration.test_operations import produce
from tests.observing import http_get, metric, samples, wait_until
from tests.service_runner import free_port


def answered(reader: LagReader) -> bool:
    try:
        reader.read()
    except KafkaException:
        return False
    return True


def group_lag(pipeline: Pipeline) -> dict[int, float]:
    found = {}
    for partition in range(3):
        value = REGISTRY.get_sample_value("consumer_group_lag", {
            "group": pipeline.group, "topic": pipeline.topic, "partition": str(partition)})
        if value is not None:
            found[partition] = value
    return found


def test_lag_exporter_reports_the_groups_lag_from_the_broker(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(3)
    placed = pipeline.send([Job.new(1, seq) for seq in range(9)])
    settings = ConsumerSettings(**pipeline.settings())  # type: ignore[arg-type]
    reader = LagReader(settings)
    try:
        # Nothing committed yet: everything in the topic is lag. A broker just started may answer
        # NOT_COORDINATOR at first (the exporter's loop reads again): so does this.
        wait_until(lambda: answered(reader), 30, "the group's coordinator to answer", poll=0.5)
        per_partition = {p: sum(1 for q, _ in placed if q == p) for p in range(3)}
        assert group_lag(pipeline) == {p: float(n) for p, n in per_partition.items()}
        assert REGISTRY.get_sample_value("consumer_group_members", {"group": pipeline.group}) == 0

        consumer = pipeline.start("consumer")
        consumer.wait_for("job.processed", count=9, timeout=60)

        def drained() -> bool:
            reader.read()
            members = REGISTRY.get_sample_value("consumer_group_members", {"group": pipeline.group})
            return group_lag(pipeline) == {0: 0.0, 1: 0.0, 2: 0.0} and members == 1
        wait_until(drained, 60, "lag 0 with the consumer in the group", poll=0.5)

        assert consumer.stop() == 0
        pipeline.send([Job.new(2, seq) for seq in range(4)])  # no consumer: the lag is still seen

        def behind() -> bool:
            reader.read()
            return sum(group_lag(pipeline).values()) == 4
        wait_until(behind, 30, "lag 4 with no consumer running", poll=0.5)
    finally:
        reader.close()


def dead_letters_waiting(pipeline: Pipeline) -> dict[int, float]:
    found = {}
    for partition in range(3):
        value = REGISTRY.get_sample_value("jobs_dead_letters_waiting", {
            "topic": pipeline.dlq, "partition": str(partition)})
        if value is not None:
            found[partition] = value
    return found


def test_dead_letters_waiting_are_the_dlq_less_what_redrive_moved(pipeline: Pipeline) -> None:
    """jobs_dead_letters_waiting (docs/operations.md): 10 dead letters wait; a re-drive of 4
    leaves 6, on the partitions `topic-admin dlq list` shows them not yet re-driven."""
    pipeline.ensure_topics(3)
    produce(pipeline, pipeline.dlq, [(Job.new(1, seq), [("dlq.error", b"ValueError: x")], seq % 3)
                                     for seq in range(10)])
    reader = LagReader(ConsumerSettings(**pipeline.settings()))  # type: ignore[arg-type]
    try:
        def waiting(expected: dict[int, float]) -> bool:
            return answered(reader) and dead_letters_waiting(pipeline) == expected
        wait_until(lambda: waiting({0: 4.0, 1: 3.0, 2: 3.0}), 30, "10 dead letters waiting", poll=0.5)

        moved = pipeline.run("topic-admin", "redrive", "--limit", "4", "--json")
        assert moved.process.returncode == 0 and json.loads(moved.output)["moved"] == 4, moved.tail()
        listed = pipeline.run("topic-admin", "dlq", "list", "--json")
        assert listed.process.returncode == 0, listed.tail()
        rows = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
        left = Counter(int(row["at"].split(":")[0]) for row in rows if not row["redriven"])
        assert sum(left.values()) == 6
        wait_until(lambda: waiting({p: float(left[p]) for p in range(3)}), 30,
                   f"6 dead letters waiting, as `dlq list` shows them: {dict(left)}", poll=0.5)
    finally:
        reader.close()


def test_dead_letters_written_in_transactions_are_counted_without_their_markers(pipeline: Pipeline) -> None:
    """Under PROCESSING_GUARANTEE=exactly_once dead letters are written in transactions: the DLQ
    then holds a commit marker per transaction, and an aborted one's records, which are offsets
    and no dead letters. 12 letters in 4 transactions, beside 3 aborted: 12 waiting, not 20 (the
    partition's end); a re-drive of 5 leaves 7."""
    pipeline.ensure_topics(3)
    producer = Producer({"bootstrap.servers": pipeline.bootstrap,
                         "transactional.id": f"dlq-{pipeline.topic}"})
    producer.init_transactions(30)
    for batch in range(5):
        producer.begin_transaction()
        for seq in range(3):
            producer.produce(pipeline.dlq, Job.new(batch, seq).to_bytes(), partition=0,
                             headers=[("dlq.error", b"ValueError: x")])
        if batch == 2:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    del producer  # all acknowledged: no client left reconnecting after the broker stops
    reader = LagReader(ConsumerSettings(**pipeline.settings()))  # type: ignore[arg-type]
    try:
        def waiting(expected: float) -> bool:
            return answered(reader) and dead_letters_waiting(pipeline) == {0: expected, 1: 0.0, 2: 0.0}
        wait_until(lambda: waiting(12.0), 30, "12 dead letters waiting", poll=0.5)
        moved = pipeline.run("topic-admin", "redrive", "--limit", "5", "--json")
        assert moved.process.returncode == 0 and json.loads(moved.output)["moved"] == 5, moved.tail()
        wait_until(lambda: waiting(7.0), 30, "7 dead letters waiting", poll=0.5)
    finally:
        reader.close()


def lag_partitions(body: str) -> set[int]:
    return {int(labels["partition"]) for labels, _ in samples(body, "consumer_lag")}


def owned_count(body: str) -> float:
    found = metric(body, "consumer_partitions_owned")
    return -1.0 if found is None else found


def text(url: str) -> str:
    return http_get(url)[1]


def test_each_partitions_lag_is_reported_by_its_owner_only(pipeline: Pipeline) -> None:
    """A second replica joins: the partitions it takes leave the first one's consumer_lag (they
    used to keep their last value there, and a sum over replicas counted them twice)."""
    pipeline.ensure_topics(3)
    pipeline.send([Job.new(1, seq) for seq in range(9)])
    ports = [free_port(), free_port()]
    first = pipeline.start("consumer", metrics_port=ports[0])
    urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
    wait_until(lambda: lag_partitions(text(urls[0])) == {0, 1, 2} and owned_count(text(urls[0])) == 3, 60,
               "the first replica reporting the lag of all 3 partitions")
    pipeline.start("consumer", metrics_port=ports[1])

    def split() -> tuple[set[int], set[int]] | None:
        bodies = [text(url) for url in urls]
        mine, theirs = lag_partitions(bodies[0]), lag_partitions(bodies[1])
        owned = owned_count(bodies[0]) + owned_count(bodies[1])
        ok = mine and theirs and not mine & theirs and mine | theirs == {0, 1, 2} and owned == 3
        return (mine, theirs) if ok else None
    mine, theirs = wait_until(split, 60, "the 3 partitions' lag split between the replicas, none twice",
                              poll=0.5)
    assert owned_count(text(urls[0])) == len(mine) and owned_count(text(urls[1])) == len(theirs)
    assert first.stop() == 0


def test_lag_exporter_stops_exporting_lag_while_the_broker_is_away(
        make_kafka_cluster: Callable[..., LocalKafkaCluster], topic_name: str) -> None:
    """A broker that stops answering: the last lag and member count are no longer served as if
    current (a dashboard showed them live); the time of the last answer is."""
    cluster = make_kafka_cluster(nodes=1)
    pipeline = Pipeline(cluster.bootstrap_servers, topic_name, f"{topic_name}.dlq", f"group-{topic_name}")
    try:
        pipeline.ensure_topics(3)
        pipeline.send([Job.new(1, seq) for seq in range(6)])
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        exporter = pipeline.start("python", "-m", "consumer_service.lag_exporter", metrics_port=port)

        def exported() -> bool:
            body = text(url)
            return metric(body, "consumer_group_lag") is not None and \
                metric(body, "consumer_group_members") is not None
        wait_until(lambda: exported() or exporter.process.poll() is not None, 60, "the group's lag exported")
        assert exporter.process.poll() is None, exporter.tail()
        assert metric(text(url), "consumer_group_lag") == 6

        failures = len(exporter.events("lag.read_failed"))  # a broker just started may refuse a read
        cluster.stop()
        exporter.wait_for("lag.read_failed", count=failures + 1, timeout=60)

        def stale_gone() -> str | None:
            body = text(url)
            current = metric(body, "consumer_group_lag") is not None or \
                metric(body, "consumer_group_members") is not None
            return None if current else body
        body = wait_until(stale_gone, 30, "the last lag and member count no longer exported")
        assert metric(body, "consumer_group_lag_updated_timestamp_seconds") is not None
    finally:
        for service in pipeline.started:
            service.kill()
