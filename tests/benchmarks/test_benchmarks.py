"""Benchmarks (issues 6 and 10): runs tests/benchmarks/bench.py's comparisons against the real broker.

`make bench` runs the "full" profile (BENCH_PROFILE=full: a million jobs); `make test` the
"short" one, which proves the harness works and that no job goes missing in any run. Speeds
are never asserted (they belong to the report, not to a test that would flake on a busy
machine): the tests fail only when a run cannot be made or loses jobs. At the end the report
is written to benchmark-report.json and printed as tables.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import local_kafka
import pytest

from tests.benchmarks import bench, client_bench, console_bench, delay_bench, results_bench
from tests.benchmarks.bench import Kafka, Report
from tests.summary_table import SummaryTable


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> Iterator[Report]:
    table = SummaryTable(request, f"benchmark report ({bench.REPORT_PATH.name})")
    made = Report(bench.current_profile())
    yield made
    if made.rows:
        table.text = made.write()


@pytest.fixture(scope="module")
def kafka(kafka_bootstrap: str) -> Kafka:
    return Kafka(kafka_bootstrap, local_kafka.ensure_jars())


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def produced(kafka: Kafka, report: Report, workdir: Path) -> str:
    """The producer comparison; its topic (the service's jobs) feeds the consumer comparison."""
    return bench.producer_comparison(kafka, report, workdir)


def assert_peak_rss_noted(report: Report, *services: str) -> None:
    """Each of `services` ran in the calling test and its peak RSS is plausible (a process
    that was not sampled, or a unit mix-up, is not)."""
    for service in services:
        megabytes = report.peak_rss_mb.get(service)
        assert megabytes is not None and 0 < megabytes < 4096, (service, report.peak_rss_mb)


def test_producer_comparison(produced: str, report: Report) -> None:
    assert_peak_rss_noted(report, "producer", "topic-admin")
    assert report.keys["producer_vs_kcat"] > 0
    assert report.keys["producer_vs_go"] > 0
    for key in ("producer_vs_kcat", "producer_vs_go"):
        assert len(report.repeats[key]) == report.profile.repeats, report.repeats
    assert {row.tool.split()[0] for row in report.rows if row.comparison == "producer"} == {
        "producer", "kcat", "seed's", "kafka-producer-perf-test"}


def test_consumer_comparison(produced: str, kafka: Kafka, report: Report) -> None:
    value_bytes = next(row.bytes for row in report.rows if row.comparison == "producer")
    bench.consumer_comparison(kafka, report, produced, value_bytes)
    assert_peak_rss_noted(report, "consumer")
    assert report.keys["consumer_vs_kcat"] > 0
    assert report.keys["consumer_vs_go"] > 0
    assert report.keys["consumer_vs_go_raw"] > 0
    for key in ("consumer_vs_kcat", "consumer_vs_go"):
        assert len(report.repeats[key]) == report.profile.repeats, report.repeats
    assert {row.tool.split()[0] for row in report.rows if row.comparison == "consumer"} == {
        "consumer", "kcat", "seed's", "kafka-consumer-perf-test"}


@pytest.mark.parametrize("run", bench.LATENCY_RUNS, ids=lambda run: run.label.replace(" ", ","))
def test_e2e_latency(kafka: Kafka, report: Report, workdir: Path, run: bench.LatencyRun) -> None:
    bench.latency(kafka, report, workdir, run)
    measured = report.latency_ms[run.label]
    assert measured["jobs"] == report.profile.latency_rate * (report.profile.latency_s - 1)
    assert measured["p50"] <= measured["p99"] <= measured["p99.9"]


def test_inmemory_vs_queue(report: Report) -> None:
    bench.inmemory_comparison(report)
    assert_peak_rss_noted(report, "inmemory")
    assert report.keys["inmemory_vs_queue"] > 0


def test_scaling_1_to_3(kafka: Kafka, report: Report) -> None:
    bench.scaling(kafka, report)
    assert report.keys["scaling_1_to_3"] > 0


def test_concurrency(kafka: Kafka, report: Report) -> None:
    bench.concurrency(kafka, report)
    assert report.keys["concurrency_speedup"] > 0
    assert report.keys["async_jobs_per_s"] > 0


def test_share_scaling_1_to_4(kafka: Kafka, report: Report) -> None:
    bench.share_scaling(kafka, report)
    assert report.keys["share_scaling_1_to_4"] > 0


def test_share_throughput(kafka: Kafka, report: Report) -> None:
    bench.share_throughput(kafka, report)
    assert report.keys["share_jobs_per_s"] > 0


def test_memory(kafka: Kafka, report: Report) -> None:
    bench.memory(kafka, report)
    for max_in_flight in (100, 1000):
        assert 0 < report.keys[f"peak_rss_mb_mif{max_in_flight}"] < 4096


def test_client_submit(produced: str, kafka: Kafka, report: Report) -> None:
    client_bench.client_comparison(kafka, report)
    assert report.keys["client_submit_per_s"] > 0 and report.keys["client_vs_producer"] > 0
    assert 0 < report.keys["client_submit_p99_ms"] <= report.latency_ms["client submit, linger 0"]["p99.9"]


def test_delay_fire_lateness(kafka: Kafka, report: Report) -> None:
    delay_bench.fire_lateness(kafka, report)
    assert report.keys["delay_fire_p99_ms"] >= 0


def test_delay_parked_rss(kafka: Kafka, report: Report) -> None:
    delay_bench.parked_rss(kafka, report)
    assert report.keys["delay_parked_rss_mb"] > 0


def test_console_dlq_page(kafka: Kafka, report: Report) -> None:
    console_bench.console_dlq_page(kafka, report)
    assert report.keys["console_dlq_page_ms"] > 0 and report.keys["console_dlq_filtered_page_ms"] > 0


def test_results(kafka: Kafka, report: Report) -> None:
    """Issue 24: exactly-once's cost with results on, and the wait for a result (both guarantees)."""
    results_bench.eos_comparison(kafka, report)
    results_bench.wait_latency(kafka, report)
    assert report.keys["eos_vs_at_least_once"] > 0
    assert report.keys["result_wait_p99_ms"] > 0
    assert report.keys["result_wait_p99_ms_eos"] > 0
