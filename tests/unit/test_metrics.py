"""The metrics /metrics serves: names and labels by Prometheus' conventions, the end-to-end
histogram, and consumer_lag / consumer_partitions_owned following what a replica owns."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer_service import lag_exporter, member_producer, worker
from consumer_service.settings import ConsumerSettings
from jobpipe import metrics
from jobpipe.handlers import demo_handler
from jobpipe.handling import JobHandler
from jobpipe.job import Job
from jobpipe.retry import RetryPolicy

# Every metric the services define (docs/operations.md, "Health endpoints and metrics", lists
# them with these types).
DOCUMENTED = {
    "jobs_produced": "counter", "jobs_produce_failed": "counter", "jobs_processed": "counter",
    "jobs_failed": "counter", "jobs_retried": "counter", "jobs_dead_lettered": "counter",
    "job_processing_seconds": "histogram", "job_end_to_end_seconds": "histogram",
    "consumer_lag": "gauge", "consumer_partitions_owned": "gauge", "inmemory_queue_depth": "gauge",
    "service_ready": "gauge",
    # the delay tiers (issue 23)
    "jobs_parked": "counter", "delayed_job_late_seconds": "histogram",
    # consumer_service.lag_exporter (compose profile `monitoring`)
    "consumer_group_lag": "gauge", "consumer_group_members": "gauge",
    "consumer_group_lag_updated_timestamp_seconds": "gauge", "jobs_dead_letters_waiting": "gauge",
}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Labels Prometheus sets on every target (or keeps for itself): a metric's own label of that
# name would be renamed exported_<name> at scrape.
RESERVED_LABELS = {"job", "instance", "le", "quantile"}


def lag(topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value("consumer_lag", {"topic": topic, "partition": str(partition)})


def owned() -> float:
    return REGISTRY.get_sample_value("consumer_partitions_owned") or 0.0


def test_metric_and_label_names_follow_prometheus_conventions() -> None:
    lag_exporter.GROUP_LAG.labels("g", "t", "0").set(0)  # a labelled family shows once it has a series
    lag_exporter.GROUP_MEMBERS.labels("g").set(0)
    lag_exporter.UPDATED.labels("g").set(0)
    lag_exporter.DEAD_LETTERS_WAITING.labels("t.dlq", "0").set(0)
    metrics.CONSUMER_LAG.labels("t", "0").set(0)
    try:
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    finally:
        metrics.CONSUMER_LAG.remove("t", "0")
        lag_exporter.GROUP_LAG.remove("g", "t", "0")
        lag_exporter.DEAD_LETTERS_WAITING.remove("t.dlq", "0")
    ours = {name: family for name, family in families.items() if name in DOCUMENTED}
    assert {name: f.type for name, f in ours.items()} == DOCUMENTED
    for name, family in ours.items():
        assert NAME.match(name), name  # lower snake_case, no colons (those are for recording rules)
        if family.type == "histogram":
            assert name.endswith("_seconds"), f"{name}: a duration is in seconds, named so"
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name in (f"{name}_total", f"{name}_created"), sample.name
            for label in sample.labels:
                assert NAME.match(label) and not label.startswith("__"), (name, label)
                if label not in ("le",):
                    assert label not in RESERVED_LABELS, (name, label)


def test_the_metrics_table_says_which_service_serves_each_metric() -> None:
    """docs/operations.md's table, "served by" column: what each service's /metrics serves."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines()
            if re.match(r"^\| `[a-z_]+` \| (counter|gauge|histogram) \|", line)]
    documented = {row[0].strip("`").removesuffix("_total"): {s.strip() for s in row[3].split(",")}
                  for row in rows}
    assert set(documented) == set(DOCUMENTED)
    for name, services in documented.items():
        serving = {service for service, families in metrics.SERVED_BY.items() if name in families}
        assert services == (set(metrics.SERVED_BY) if name == "service_ready" else serving), name


def test_end_to_end_histogram_counts_successes_from_created_at() -> None:
    handler = JobHandler(demo_handler, RetryPolicy(0.01, 0.1, 3), end_to_end=True)
    stats = metrics.handler_stats()
    before = list(stats.e2e_buckets)
    old = Job(id="a" * 32, key="p1-m0", created_at=datetime.now(UTC) - timedelta(seconds=7), payload={"m": 1})
    ahead = Job(id="b" * 32, key="p1-m1", created_at=datetime.now(UTC) + timedelta(seconds=30), payload="m")
    bad = Job(id="c" * 32, key="p1-m2", created_at=datetime.now(UTC), payload=42)  # demo handler refuses
    assert handler.attempt(old, 1).error is None
    assert handler.attempt(ahead, 1).error is None
    assert handler.attempt(bad, 1).error is not None  # a failure is not "processed": not counted
    added = [after - was for after, was in zip(stats.e2e_buckets, before, strict=True)]
    bounds = (*metrics.END_TO_END_BUCKETS, float("inf"))
    assert sum(added) == 2
    assert added[bounds.index(10)] == 1  # 7 s old: the (5, 10] bucket
    assert added[0] == 1  # a producer clock ahead of ours counts as 0, not negative

    count = REGISTRY.get_sample_value("job_end_to_end_seconds_count")
    below_10 = REGISTRY.get_sample_value("job_end_to_end_seconds_bucket", {"le": "10.0"})
    assert count is not None and below_10 is not None and count >= 2 and below_10 >= 2


class _FakeClient:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def commit(self, asynchronous: bool = False) -> None:
        return None

    def subscribe(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def flush(self, *_args: Any) -> int:
        return 0

    def poll(self, *_args: Any) -> None:
        return None


@pytest.fixture
def member(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(worker, "Consumer", _FakeClient)
    monkeypatch.setattr(member_producer, "Producer", _FakeClient)
    settings = ConsumerSettings(kafka_bootstrap_servers="127.0.0.1:1", jobs_topic="lagtest")
    handler = JobHandler(demo_handler, settings.retry_policy())
    one = worker.ConsumerWorker(1, settings, handler, threading.Event(), threading.Event(), metrics_on=True)
    yield one
    one._forget(set(one._assigned), "test over")
    one._executor.close(1.0)


def stats(lags: dict[int, int]) -> str:
    return json.dumps({"brokers": {"b1": {"source": "learned", "state": "UP"}},
                       "topics": {"lagtest": {"partitions": {
                           **{str(p): {"consumer_lag": n} for p, n in lags.items()},
                           "-1": {"consumer_lag": -1}}}}})


def test_consumer_lag_follows_the_partitions_a_replica_owns(member: Any) -> None:
    start = owned()
    member._on_assign(None, [TopicPartition("lagtest", 0), TopicPartition("lagtest", 1)])
    assert owned() == start + 2
    member._on_stats(member._generation, stats({0: 5, 1: 7, 2: 9}))
    assert (lag("lagtest", 0), lag("lagtest", 1)) == (5, 7)
    assert lag("lagtest", 2) is None, "statistics of a partition it does not own are not its lag"

    member._on_revoke(None, [TopicPartition("lagtest", 1)])  # a cooperative rebalance moves 1
    assert lag("lagtest", 1) is None and lag("lagtest", 0) == 5
    assert owned() == start + 1
    member._on_stats(member._generation, stats({0: 4, 1: 7}))  # stale statistics: 1 stays gone
    assert lag("lagtest", 1) is None and lag("lagtest", 0) == 4

    member._on_lost(None, [TopicPartition("lagtest", 0)])
    assert lag("lagtest", 0) is None and owned() == start


def test_a_replaced_client_leaves_no_lag_behind(member: Any) -> None:
    start = owned()
    member._on_assign(None, [TopicPartition("lagtest", 0), TopicPartition("lagtest", 2)])
    member._on_stats(member._generation, stats({0: 3, 2: 1}))
    old_generation = member._generation
    member._replace_client()
    assert lag("lagtest", 0) is None and lag("lagtest", 2) is None and owned() == start
    member._on_stats(old_generation, stats({0: 3, 2: 1}))  # the old client's last statistics
    assert lag("lagtest", 0) is None
