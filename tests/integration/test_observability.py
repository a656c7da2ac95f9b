"""METRICS_PORT: /metrics, /healthz and /readyz of a running consumer and producer; static
membership keeps a restarted replica's partitions without a group-wide rebalance."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from tests.integration.conftest import Pipeline
from tests.service_runner import ServiceProcess, free_port, wait_until


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def metric(body: str, name: str) -> float:
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", body, re.MULTILINE)
    return sum(float(v) for v in values)


def test_consumer_serves_metrics_health_and_readiness(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    assert pipeline.run("producer").process.returncode == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    consumer = pipeline.start("consumer", metrics_port=port)
    wait_until(lambda: get(f"{base}/healthz")[0] == 200, 30, "/healthz")
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, 30, "/readyz after joining the group")
    consumer.wait_for("job.processed", 20)
    wait_until(lambda: metric(get(f"{base}/metrics")[1], "jobs_processed_total") == 20, 10, "processed=20")
    body = get(f"{base}/metrics")[1]
    assert metric(body, "job_processing_seconds_count") == 20
    for name in ("jobs_failed_total", "jobs_retried_total", "jobs_dead_lettered_total"):
        assert f"{name} 0.0" in body
    wait_until(lambda: "consumer_lag{" in get(f"{base}/metrics")[1], 15, "consumer_lag from statistics")
    assert consumer.stop() == 0


def test_continuous_producer_serves_metrics(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    port = free_port()
    producer = pipeline.start("producer", metrics_port=port, messages_per_worker=0, produce_rate=50)
    producer.wait_for("job.produced", 20)
    wait_until(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 10, "producer ready")
    # jobs_produced_total is brought up to date in bulk (issue 10), a moment after the lines.
    wait_until(lambda: metric(get(f"http://127.0.0.1:{port}/metrics")[1], "jobs_produced_total") >= 20,
               10, "jobs_produced_total to reach the 20 jobs logged")
    assert producer.stop() == 0


def owned_by_member(consumer: ServiceProcess) -> dict[str, set[int]]:
    """Each group member's partitions after the latest rebalance event it logged."""
    changes = sorted(consumer.events("partitions.assigned") + consumer.events("partitions.revoked"),
                     key=lambda e: e["time"])
    return {e["consumer"]: set(e["owned"]) for e in changes}


def settled_split(consumer: ServiceProcess, members: int) -> dict[str, set[int]] | None:
    owned = owned_by_member(consumer)
    split = sorted(p for partitions in owned.values() for p in partitions)
    if len(owned) == members and all(owned.values()) and split == [0, 1, 2]:
        return owned
    return None


def test_static_member_restarted_quickly_gets_its_partitions_back_without_rebalance(
        pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    static = {"static_membership": "true", "kafka_extra_config": "session.timeout.ms=30000"}
    first = pipeline.start("consumer", consumer_workers=2, **static)
    before = wait_until(lambda: settled_split(first, 2), 60, "both static members to share 3 partitions")
    assert first.stop() == 0
    second = pipeline.start("consumer", consumer_workers=2, **static)
    after = wait_until(lambda: settled_split(second, 2), 30, "the static members to rejoin")
    assert after == before, "same instance ids, same partitions"
    assert len(second.events("partitions.assigned")) == 2, "one assignment each, no rebalance after"
    assert second.stop() == 0
