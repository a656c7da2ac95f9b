"""SHUTDOWN_TIMEOUT_S is one budget (issue 22, defect 10): a consumer with a job in hand that
will not finish in time stops within it, hands the job back, and exits 0."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from jobpipe.job import Job
from tests.integration.conftest import Pipeline
from tests.service_runner import ServiceProcess, wait_until


def moment(service: ServiceProcess, name: str) -> datetime:
    return datetime.fromisoformat(str(service.events(name)[0]["time"]))


def test_a_consumer_with_a_job_in_hand_stops_within_shutdown_timeout_s(
        pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics(partitions=1)
    pipeline.send([Job.new(1, 0)])
    record = tmp_path / "record"
    consumer = pipeline.start("consumer", handler="tests.handlers:gated", test_record_file=record,
                              test_release_file=tmp_path / "never", shutdown_timeout_s=2)
    wait_until(lambda: record.exists() and "start p1-m0" in record.read_text(), 60, "the job in hand")
    assert consumer.stop() == 0, consumer.tail()
    took = (moment(consumer, "service.stopped") - moment(consumer, "service.stopping")).total_seconds()
    assert took <= 2.0, f"stopped {took:.2f} s after SIGTERM with SHUTDOWN_TIMEOUT_S=2"
    # (counted once, not twice, is defect 2 of issue 22, another change)
    assert {e["key"] for e in consumer.events("job.handed_back")} == {"p1-m0"}, consumer.tail()
