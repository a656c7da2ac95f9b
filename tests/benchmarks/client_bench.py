"""The job client's benchmarks (issue 21), run by `make bench` next to bench.py's.

- `client_submit_per_s`: the synchronous JobClient submitting the profile's job count without
  waiting per job (`submit_async` for each, then every future's result), the same keys and
  payloads as the producer service's jobs, linger 5 ms. Also reported as `client_vs_producer`,
  its ratio to the producer service's rate in the same run (target >= 0.8).
- `client_submit_p99_ms`: one `submit` at a time at 1,000 jobs/s with linger 0, each timed from
  the call to its return (the broker's acknowledgement): the 99th percentile (target <= 5 ms).

Each runs in a process of its own (`python -m tests.benchmarks.client_bench rate|latency ...`,
printing one JSON line), as the producer service does, so the test process's threads do not
share its interpreter. Without the rest of `make bench`, on a broker that is already running:

    PYTHONPATH=deploy/kafka .venv/bin/python -m tests.benchmarks.client_bench compare localhost:9092 200000 3

runs the producer service and the client in turn (3 rounds of 200,000 jobs each) and then the
latency run, printing each result.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid

from tests.benchmarks import bench
from tests.benchmarks.bench import BenchmarkError, Kafka, Report, Row, Tracked
from tests.service_runner import REPO

# Issue 21's targets, kept with bench.TARGETS so the report shows them.
bench.TARGETS.setdefault("client_vs_producer", (">=", 0.8))
bench.TARGETS.setdefault("client_submit_p99_ms", ("<=", 5.0))
PRODUCER_TOOL = "producer service (2 workers)"


def measure_rate(bootstrap: str, topic: str, jobs: int) -> dict[str, float]:
    """Submit `jobs` jobs without waiting for each; seconds from the first submit to the last
    acknowledgement."""
    from jobpipe.client import JobClient

    with JobClient(kafka_bootstrap_servers=bootstrap, jobs_topic=topic) as client:
        submit = client.submit_async
        started = time.monotonic()
        futures = [submit({"message": f"job-p1-m{seq}"}, key=f"p1-m{seq}") for seq in range(jobs)]
        for future in futures:
            future.result()
        seconds = time.monotonic() - started
    return {"jobs": jobs, "seconds": seconds}


def measure_latency(bootstrap: str, topic: str, rate: int, seconds: float) -> dict[str, float]:
    """One `submit` at a time, due every 1/rate s, linger 0: percentiles of the wait, in ms."""
    from jobpipe.client import JobClient

    waits: list[float] = []
    with JobClient(kafka_bootstrap_servers=bootstrap, jobs_topic=topic, linger_ms=0) as client:
        client.submit("warm-up")
        started = time.monotonic()
        for seq in range(int(rate * seconds)):
            pause = started + seq / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            before = time.perf_counter()
            client.submit({"message": f"job-p1-m{seq}"}, key=f"p1-m{seq}")
            waits.append((time.perf_counter() - before) * 1000)
    cuts = statistics.quantiles(waits, n=1000)
    return {"jobs": len(waits), "p50": cuts[499], "p99": cuts[989], "p99.9": cuts[998], "max": max(waits)}


def _run(kind: str, *args: str, timeout: float) -> tuple[dict[str, float], Tracked]:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "deploy" / "kafka")])}
    process = Tracked(f"client {kind}", [sys.executable, "-m", "tests.benchmarks.client_bench", kind, *args],
                      env=env)
    if process.wait(timeout) != 0:
        raise BenchmarkError(f"client_bench {kind} failed:\n{process.tail()}")
    result: dict[str, float] = json.loads(process.output().strip().splitlines()[-1])
    return result, process


def client_comparison(kafka: Kafka, report: Report) -> None:
    """Both client benchmarks; the rate is compared to the producer service's row, if any."""
    jobs = report.profile.jobs
    topic = kafka.topic(report, "client-rate")
    rate, process = _run("rate", kafka.bootstrap, topic, str(jobs), timeout=max(120.0, jobs / 2000))
    if kafka.end_offsets(topic) != jobs:
        raise BenchmarkError(f"{topic} holds {kafka.end_offsets(topic)} jobs, {jobs} were acknowledged")
    report.rows.append(Row("producer", "JobClient.submit_async (1 thread)", jobs, rate["seconds"],
                           peak_rss_mb=process.peak_mb, notes="first submit to last acknowledgement"))
    report.keys["client_submit_per_s"] = jobs / rate["seconds"]
    service = next((row for row in report.rows if row.tool == PRODUCER_TOOL), None)
    if service is not None:
        report.keys["client_vs_producer"] = report.keys["client_submit_per_s"] / service.rate

    latency_topic = kafka.topic(report, "client-latency")
    per_s, seconds = report.profile.latency_rate, report.profile.latency_s
    waits, _ = _run("latency", kafka.bootstrap, latency_topic, str(per_s), str(seconds),
                    timeout=seconds * 3 + 60)
    report.latency_ms["client submit, linger 0"] = {key: round(value, 3) for key, value in waits.items()}
    report.keys["client_submit_p99_ms"] = waits["p99"]


def compare(bootstrap: str, jobs: int, rounds: int) -> None:
    """The producer service and the client in turn on fresh 6-partition topics, then latency."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def topic(purpose: str) -> str:
        name = f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
        for future in admin.create_topics([NewTopic(name, bench.PARTITIONS, 1)]).values():
            future.result(30)
        return name

    limit = max(120.0, jobs / 2000)
    for round_number in range(1, rounds + 1):
        service = bench.Service("producer", kafka_bootstrap_servers=bootstrap, jobs_topic=topic("producer"),
                                producer_workers=2, messages_per_worker=0)
        with bench.running(service):
            seconds = bench.time_counter([service], "jobs_produced_total", jobs, timeout=limit)
            service.stop()
        rate, process = _run("rate", bootstrap, topic("client"), str(jobs), timeout=limit)
        client_rate, service_rate = jobs / rate["seconds"], jobs / seconds
        print(f"round {round_number}: producer service {service_rate:,.0f}/s, client {client_rate:,.0f}/s, "
              f"ratio {client_rate / service_rate:.2f}, client peak RSS {process.peak_mb or 0:.0f} MB",
              flush=True)
    waits, _ = _run("latency", bootstrap, topic("latency"), "1000", "10", timeout=120)
    print("client submit at 1000/s, linger 0 (ms):", {key: round(value, 3) for key, value in waits.items()})


def main(argv: list[str]) -> None:
    if argv[0] == "compare":
        compare(argv[1], int(argv[2]), int(argv[3]))
        return
    kind, bootstrap, topic, *numbers = argv
    if kind == "rate":
        result = measure_rate(bootstrap, topic, int(numbers[0]))
    else:
        result = measure_latency(bootstrap, topic, int(numbers[0]), float(numbers[1]))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
