"""The delay tiers' benchmarks (issue 23), run by `make bench` next to bench.py's.

- `delay_fire_p99_ms`: jobs whose `not_before` is spread evenly over a window (full profile:
  10,000 jobs due between 60 and 120 s from now, so each passes the 1 min tier, the 5 s tier and
  memory; short, in `make test`: 300 due between 12 and 16 s) are submitted at once to one consumer (the
  default settings); the handler (tests.handlers:record_lateness) writes how long after its
  `not_before` each job started. The key is the 99th percentile of that lateness of each job's
  first start, in ms (target <= 1000). Timed on the machine's one clock.
- `delay_parked_rss_mb`: one consumer parks jobs due in 3 h (full: 100,000; short: 2,000);
  its peak RSS (VmHWM) once a tenth of them are parked and once all are: the key is the peak with
  all of them, the row's notes give both (flat: the parked jobs live in the tier topics, the
  consumer holds none).

On a machine shared with other work both are indicative only.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.benchmarks import bench
from tests.benchmarks.bench import BenchmarkError, Kafka, Report, Row, Service, running
from tests.observing import scrape
from tests.service_runner import wait_until

bench.TARGETS.setdefault("delay_fire_p99_ms", ("<=", 1000.0))


@dataclass(frozen=True)
class DelayProfile:
    jobs: int
    first_s: float  # the earliest due time, from the submit
    window_s: float  # due times spread evenly over this
    parked: int


DELAY_PROFILES = {"short": DelayProfile(300, 12, 4, 2_000), "full": DelayProfile(10_000, 60, 60, 100_000)}


def submit_due(kafka: Kafka, topic: str, dues: list[datetime]) -> None:
    from jobpipe.client import JobClient

    with JobClient(kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic) as client:
        futures = [client.submit_async({"n": n}, key=f"k{n % 100}", at=due) for n, due in enumerate(dues)]
        for future in futures:
            future.result()


def fire_lateness(kafka: Kafka, report: Report) -> None:
    profile = DELAY_PROFILES[report.profile.name]
    topic = kafka.topic(report, "delay-fire")
    with tempfile.TemporaryDirectory(prefix="bench-delay-") as tmp:
        record = Path(tmp) / "lateness.txt"
        consumer = Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                           dlq_topic=f"{topic}.dlq", consumer_group=f"group-{topic}",
                           handler="tests.handlers:record_lateness", bench_latency_file=record)
        with running(consumer):
            wait_until(consumer.ready, 60, "the consumer to join", poll=bench.POLL_S)
            start = datetime.now(UTC) + timedelta(seconds=profile.first_s)
            step = profile.window_s / profile.jobs
            submit_due(kafka, topic, [start + timedelta(seconds=n * step) for n in range(profile.jobs)])
            timeout = profile.first_s + profile.window_s + 120
            bench.time_counter([consumer], "jobs_processed_total", profile.jobs, timeout)
            report.note_rss("consumer (delays)", consumer.peak_mb)
            consumer.stop()
        first: dict[str, float] = {}
        for line in record.read_text().splitlines():
            job_id, late_ms = line.split()
            first.setdefault(job_id, float(late_ms))
    if len(first) < profile.jobs:
        raise BenchmarkError(f"{profile.jobs - len(first)} delayed jobs never ran")
    if min(first.values()) < 0:
        raise BenchmarkError(f"a delayed job started {-min(first.values()):.0f} ms before its time")
    late = sorted(first.values())
    p99 = late[int(len(late) * 0.99) - 1]
    report.keys["delay_fire_p99_ms"] = round(p99, 1)
    report.latency_ms["delayed job, start after not_before"] = {
        "p50": round(statistics.median(late), 1), "p99": round(p99, 1), "max": round(late[-1], 1)}
    report.rows.append(Row("delay_fire", "consumer + tier mover", profile.jobs,
                           profile.first_s + profile.window_s, peak_rss_mb=consumer.peak_mb,
                           notes=f"due over {profile.window_s:g} s from +{profile.first_s:g} s; "
                                 f"lateness p50 {statistics.median(late):.0f} ms, max {late[-1]:.0f} ms"))


def parked_rss(kafka: Kafka, report: Report) -> None:
    profile = DELAY_PROFILES[report.profile.name]
    topic = kafka.topic(report, "delay-parked")
    consumer = Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                       dlq_topic=f"{topic}.dlq", consumer_group=f"group-{topic}", handler=bench.NOOP)
    tenth = profile.parked // 10
    due = datetime.now(UTC) + timedelta(hours=3)
    with running(consumer):
        wait_until(consumer.ready, 60, "the consumer to join", poll=bench.POLL_S)
        started = time.monotonic()
        submit_due(kafka, topic, [due] * tenth)
        _wait_parked(consumer, tenth)
        at_tenth = consumer.peak_mb or 0.0
        submit_due(kafka, topic, [due] * (profile.parked - tenth))
        _wait_parked(consumer, profile.parked)
        time.sleep(2)  # a few turns of the loop and the mover with everything parked
        consumer.sample()
        at_all = consumer.peak_mb or 0.0
        seconds = time.monotonic() - started
        consumer.stop()
    report.keys["delay_parked_rss_mb"] = round(at_all, 1)
    report.rows.append(Row("delay_parked", "consumer", profile.parked, seconds, peak_rss_mb=at_all,
                           notes=f"peak RSS {at_tenth:.0f} MB with {tenth:,} parked, "
                                 f"{at_all:.0f} MB with {profile.parked:,}"))


def _wait_parked(consumer: Service, count: int) -> None:
    def parked() -> bool:
        consumer.sample()
        return sum((scrape(consumer.port, "jobs_parked_total", tier=tier) or 0.0)
                   for tier in ("5s", "1m", "10m", "1h")) >= count
    wait_until(parked, 600, f"{count} jobs parked", poll=0.2)
