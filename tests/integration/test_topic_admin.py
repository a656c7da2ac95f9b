"""topic-admin against a real broker: ensure is idempotent, grows, never shrinks; describe."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

from local_kafka import LocalKafkaCluster

from tests.integration.conftest import Pipeline
from tests.service_runner import wait_until


def actions(service_output: str) -> dict[str, str]:
    return {json.loads(line)["topic"]: json.loads(line)["event"]
            for line in service_output.splitlines()
            if line.startswith("{") and json.loads(line)["event"].startswith("topic.")}


def test_ensure_creates_then_changes_nothing_then_grows_but_never_shrinks(pipeline: Pipeline) -> None:
    tiers = [f"{pipeline.topic}.delay.{tier}" for tier in ("5s", "1m", "10m", "1h")]  # issue 23
    topics = [pipeline.topic, pipeline.dlq, *tiers]

    def each(what: str) -> dict[str, str]:
        return dict.fromkeys(topics, what)

    first = pipeline.run("topic-admin", jobs_partitions=3)  # ensure is the default command
    assert first.process.returncode == 0, first.tail()
    assert actions(first.stderr) == each("topic.created")

    again = pipeline.run("topic-admin", "ensure", jobs_partitions=3)
    assert again.process.returncode == 0
    assert actions(again.stderr) == each("topic.unchanged")

    grown = pipeline.run("topic-admin", "ensure", jobs_partitions=5)
    assert actions(grown.stderr) == each("topic.grown")

    fewer = pipeline.run("topic-admin", "ensure", jobs_partitions=2)
    assert fewer.process.returncode == 0
    assert actions(fewer.stderr) == each("topic.unchanged")
    described = json.loads(pipeline.run("topic-admin", "describe", "--json").output)
    assert [len(t["partitions"]) for t in described["topics"]] == [5, 5]


def test_describe_shows_offsets_committed_offsets_and_lag(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(partitions=3)
    producer = pipeline.run("producer")
    assert producer.process.returncode == 0

    # No consumer has joined yet: the group does not exist. Shown, then refused (exit 2).
    unknown = pipeline.run("topic-admin", "describe", "--json")
    assert unknown.process.returncode == 2, unknown.tail()
    assert f"CONSUMER_GROUP={pipeline.group!r}: no such group" in unknown.stderr.splitlines()[-1]
    before = json.loads(unknown.output)
    jobs_topic = next(t for t in before["topics"] if t["name"] == pipeline.topic)
    assert sum(p["end_offset"] for p in jobs_topic["partitions"]) == 20
    assert all(p["committed"] is None for p in jobs_topic["partitions"])
    assert before["total_lag"] == 20
    assert before["group"] == pipeline.group and before["group_exists"] is False

    consumer = pipeline.start("consumer")
    consumer.wait_for("job.processed", 20)
    assert consumer.stop() == 0
    described = pipeline.run("topic-admin", "describe", "--json")
    assert described.process.returncode == 0, described.tail()
    after = json.loads(described.output)
    jobs_topic = next(t for t in after["topics"] if t["name"] == pipeline.topic)
    assert all(p["committed"] == p["end_offset"] and p["lag"] == 0 for p in jobs_topic["partitions"])
    assert after["total_lag"] == 0 and after["group_exists"] is True and after["group_state"] == "empty"

    table = pipeline.run("topic-admin", "describe").output
    header = table.splitlines()[0].split()
    assert header == ["topic", "partition", "leader", "replicas", "isr", "start", "end", "committed", "lag"]
    assert f"group {pipeline.group}: total lag 0, 0 member(s) (empty)" in table
    assert table.count(pipeline.topic) >= 3


def test_reset_empties_the_topics(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    assert pipeline.run("producer").process.returncode == 0
    reset = pipeline.run("topic-admin", "reset")
    assert reset.process.returncode == 0, reset.tail()
    described = json.loads(pipeline.run("topic-admin", "describe", "--json").output)
    assert all(p["end_offset"] == 0 for t in described["topics"] for p in t["partitions"])
    assert [len(t["partitions"]) for t in described["topics"]] == [3, 3]


def test_describe_names_the_group_and_topic_by_flag_and_tells_members_apart(pipeline: Pipeline) -> None:
    """--group and --topic win over the environment; two members of one host (one process with
    CONSUMER_WORKERS=2) are told apart by their member id."""
    pipeline.ensure_topics(partitions=2)
    consumer = pipeline.start("consumer", consumer_workers=2)
    consumer.wait_for("partitions.assigned", count=2, timeout=60)

    def two_members() -> dict[str, Any] | None:
        run = pipeline.run("topic-admin", "describe", "--json", "--group", pipeline.group,
                           "--topic", pipeline.topic, consumer_group="not-this-one", jobs_topic="nor-this")
        found: dict[str, Any] = json.loads(run.output)
        owners = [m for m in found["members"] if m["partitions"]]
        return found if run.process.returncode == 0 and len(owners) == 2 else None

    found = wait_until(two_members, 60, "two members, each with a partition", poll=1.0)
    assert found["group"] == pipeline.group
    assert [t["name"] for t in found["topics"]] == [pipeline.topic, pipeline.dlq]
    hosts = {m["host"] for m in found["members"]}
    ids = {m["member_id"] for m in found["members"]}
    assert len(hosts) == 1 and len(ids) == 2 and all(ids)
    table = pipeline.run("topic-admin", "describe", "--group", pipeline.group).output
    assert all(member_id in table for member_id in ids)
    assert consumer.stop() == 0


def test_watch_shows_a_dead_broker_within_seconds_and_stops_at_once_on_ctrl_c(
        make_kafka_cluster: Callable[..., LocalKafkaCluster], topic_name: str) -> None:
    cluster = make_kafka_cluster(nodes=1)
    pipeline = Pipeline(cluster.bootstrap_servers, topic_name, f"{topic_name}.dlq", f"group-{topic_name}")
    try:
        pipeline.ensure_topics(3)
        watch = pipeline.start("topic-admin", "describe", "--watch", "--interval", "0.5", "--json")
        wait_until(lambda: watch.output.count('"group_exists": false') >= 1, 60, "a refresh")
        cluster.stop()
        stopped = time.monotonic()
        watch.wait_for("watch.refresh_failed", timeout=30)
        noticed = time.monotonic() - stopped
        # A refresh waits at most max(3 s, the interval) per answer (was 30 s).
        assert noticed < 15, f"the dead broker showed after {noticed:.1f} s"
        watch.signal(signal.SIGINT)
        asked = time.monotonic()
        assert watch.wait(10) == 0, watch.tail()
        # Ctrl-C does not wait for the refresh under way (it would for its broker timeout).
        assert time.monotonic() - asked < 5, watch.tail()
    finally:
        for service in pipeline.started:
            service.kill()
