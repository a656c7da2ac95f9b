"""METRICS_PORT: /metrics, /healthz and /readyz of a running consumer and producer; static
membership keeps a restarted replica's partitions without a group-wide rebalance."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Pipeline
from tests.observing import http_get, metric, owned_by_member, scrape, split_among, wait_until
from tests.service_runner import ServiceProcess, free_port


def test_consumer_serves_metrics_health_and_readiness(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    assert pipeline.run("producer").process.returncode == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    consumer = pipeline.start("consumer", metrics_port=port)
    wait_until(lambda: http_get(f"{base}/healthz")[0] == 200, 30, "/healthz")
    wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 30, "/readyz after joining the group")
    consumer.wait_for("job.processed", 20)
    wait_until(lambda: scrape(port, "jobs_processed_total") == 20, 10, "processed=20")
    body = http_get(f"{base}/metrics")[1]
    assert metric(body, "job_processing_seconds_count") == 20
    for name in ("jobs_failed_total", "jobs_retried_total", "jobs_dead_lettered_total"):
        assert f"{name} 0.0" in body
    for family in ("jobs_parked_total", "delayed_job_late_seconds"):  # the delay tiers' (issue 23)
        assert f"# HELP {family} " in body, family
    wait_until(lambda: "consumer_lag{" in http_get(f"{base}/metrics")[1], 15, "consumer_lag from statistics")
    assert consumer.stop() == 0


def test_healthz_answers_503_while_a_workers_loop_is_stalled_and_200_once_it_turns_again(
        pipeline: Pipeline, tmp_path: Path) -> None:
    """The real consumer, run by tests/stalling_consumer.py: its loop blocks while a file
    exists, and the stall limit is 3 s instead of 60 s (a slow handler is not a stall: it runs
    on its own thread)."""
    pipeline.ensure_topics()
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    stall = tmp_path / "stall"
    consumer = pipeline.start("python", "-m", "tests.stalling_consumer", metrics_port=port,
                              test_stall_s=3, test_stall_file=stall)
    consumer.wait_for("partitions.assigned", timeout=60)
    wait_until(lambda: http_get(health)[0] == 200, 30, "/healthz 200 while the loop turns")
    stall.touch()

    def unhealthy() -> str | None:
        status, body = http_get(health)
        return body if status == 503 else None
    assert wait_until(unhealthy, 30, "/healthz 503 once the loop has not turned for 3 s") == "not ready\n"
    stall.unlink()
    wait_until(lambda: http_get(health)[0] == 200, 30, "/healthz 200 again once the loop turns")
    assert consumer.stop() == 0, consumer.tail()


def test_continuous_producer_serves_metrics(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    port = free_port()
    producer = pipeline.start("producer", metrics_port=port, messages_per_worker=0, produce_rate=50)
    producer.wait_for("job.produced", 20)
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 10, "producer ready")
    # jobs_produced_total is brought up to date in bulk (issue 10), a moment after the lines.
    wait_until(lambda: (scrape(port, "jobs_produced_total") or 0) >= 20, 10,
               "jobs_produced_total to reach the 20 jobs logged")
    assert producer.stop() == 0


def settled_split(consumer: ServiceProcess, members: int) -> dict[str, set[int]] | None:
    owned = owned_by_member(consumer.events())
    return owned if split_among(owned, members, 3) else None


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
