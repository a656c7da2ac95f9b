"""topic-admin against a real broker: ensure is idempotent, grows, never shrinks; describe."""

from __future__ import annotations

import json

from tests.integration.conftest import Pipeline


def actions(service_output: str) -> dict[str, str]:
    return {json.loads(line)["topic"]: json.loads(line)["event"]
            for line in service_output.splitlines()
            if line.startswith("{") and json.loads(line)["event"].startswith("topic.")}


def test_ensure_creates_then_changes_nothing_then_grows_but_never_shrinks(pipeline: Pipeline) -> None:
    first = pipeline.run("topic-admin", jobs_partitions=3)  # ensure is the default command
    assert first.process.returncode == 0, first.tail()
    assert actions(first.stderr) == {pipeline.topic: "topic.created", pipeline.dlq: "topic.created"}

    again = pipeline.run("topic-admin", "ensure", jobs_partitions=3)
    assert again.process.returncode == 0
    assert actions(again.stderr) == {pipeline.topic: "topic.unchanged", pipeline.dlq: "topic.unchanged"}

    grown = pipeline.run("topic-admin", "ensure", jobs_partitions=5)
    assert actions(grown.stderr) == {pipeline.topic: "topic.grown", pipeline.dlq: "topic.grown"}

    fewer = pipeline.run("topic-admin", "ensure", jobs_partitions=2)
    assert fewer.process.returncode == 0
    assert actions(fewer.stderr) == {pipeline.topic: "topic.unchanged", pipeline.dlq: "topic.unchanged"}
    described = json.loads(pipeline.run("topic-admin", "describe", "--json").output)
    assert [len(t["partitions"]) for t in described["topics"]] == [5, 5]


def test_describe_shows_offsets_committed_offsets_and_lag(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(partitions=3)
    producer = pipeline.run("producer")
    assert producer.process.returncode == 0

    before = json.loads(pipeline.run("topic-admin", "describe", "--json").output)
    jobs_topic = next(t for t in before["topics"] if t["name"] == pipeline.topic)
    assert sum(p["end_offset"] for p in jobs_topic["partitions"]) == 20
    assert all(p["committed"] is None for p in jobs_topic["partitions"])
    assert before["total_lag"] == 20
    assert before["group"] == pipeline.group

    consumer = pipeline.start("consumer")
    consumer.wait_for("job.processed", 20)
    assert consumer.stop() == 0
    after = json.loads(pipeline.run("topic-admin", "describe", "--json").output)
    jobs_topic = next(t for t in after["topics"] if t["name"] == pipeline.topic)
    assert all(p["committed"] == p["end_offset"] and p["lag"] == 0 for p in jobs_topic["partitions"])
    assert after["total_lag"] == 0

    table = pipeline.run("topic-admin", "describe").output
    header = table.splitlines()[0].split()
    assert header == ["topic", "partition", "leader", "replicas", "isr", "start", "end", "committed", "lag"]
    assert f"group {pipeline.group}: total lag 0" in table
    assert table.count(pipeline.topic) >= 3


def test_reset_empties_the_topics(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    assert pipeline.run("producer").process.returncode == 0
    reset = pipeline.run("topic-admin", "reset")
    assert reset.process.returncode == 0, reset.tail()
    described = json.loads(pipeline.run("topic-admin", "describe", "--json").output)
    assert all(p["end_offset"] == 0 for t in described["topics"] for p in t["partitions"])
    assert [len(t["partitions"]) for t in described["topics"]] == [3, 3]
