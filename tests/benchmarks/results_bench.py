"""Results' benchmarks (issue 24), run by `make bench` next to bench.py's.

- `eos_vs_at_least_once`: one consumer process, no-op handler, RESULTS_TOPIC set, on a backlog
  of the profile's jobs (6 partitions, distinct keys), once per guarantee; each run timed from
  its first processed job (its /metrics counter) to the group's committed offsets reaching the
  end of the jobs topic (at-least-once commits only acknowledged results, exactly-once commits
  offsets in the transactions that write them, so either way: every result written). The key
  is exactly-once's rate over at-least-once's (target >= 0.5). The commit interval (1 s
  at-least-once, 0.5 s exactly-once) is in both ends' noise: the full profile's runs last
  tens of seconds.
- `result_wait_p99_ms` / `result_wait_p99_ms_eos`: a JobClient (linger 0) submits with
  `submit_for_result` at 100 jobs/s, each timed from the call to the moment its result was
  read (`ResultFuture.settled_at`), against one consumer with the no-op handler: the 99th
  percentile, at-least-once (target <= 50 ms) and exactly-once (target <= the transaction
  interval + 50 ms).
"""

from __future__ import annotations

import statistics
import time
import uuid

from consumer_service.transactions import INTERVAL_S
from tests.benchmarks import bench
from tests.benchmarks.bench import POLL_S, BenchmarkError, Kafka, Report, Row, Service, running
from tests.service_runner import wait_until

bench.TARGETS.setdefault("eos_vs_at_least_once", (">=", 0.5))
bench.TARGETS.setdefault("result_wait_p99_ms", ("<=", 50.0))
bench.TARGETS.setdefault("result_wait_p99_ms_eos", ("<=", INTERVAL_S * 1000 + 50.0))
JOBS = {"short": 2000, "full": 200_000}
WAIT_S = {"short": 1.0, "full": 30.0}
WAIT_RATE = 100  # jobs/s
GUARANTEES = ("at_least_once", "exactly_once")


def _topics(kafka: Kafka, report: Report, purpose: str) -> tuple[str, str]:
    name = f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
    results = f"{name}.results"
    admin = Service("topic-admin", "ensure", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=name,
                    dlq_topic=f"{name}.dlq", results_topic=results, jobs_partitions=bench.PARTITIONS,
                    metrics_port=0)
    if admin.wait(120) != 0:
        raise BenchmarkError(f"topic-admin ensure {name} failed:\n{admin.tail()}")
    report.note_rss("topic-admin", admin.peak_mb)
    return name, results


def _consumer(kafka: Kafka, topic: str, results: str, guarantee: str, group: str) -> Service:
    return Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                   dlq_topic=f"{topic}.dlq", results_topic=results, processing_guarantee=guarantee,
                   consumer_group=group, handler=bench.NOOP)


def eos_comparison(kafka: Kafka, report: Report) -> None:
    jobs = JOBS[report.profile.name]
    topic, results = _topics(kafka, report, "eos")
    producer = Service("producer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                       producer_workers=2, messages_per_worker=jobs // 2)
    with running(producer):
        if producer.wait(600) != 0:
            raise BenchmarkError(f"producer exited {producer.returncode}:\n{producer.tail()}")
    rates: dict[str, float] = {}
    for guarantee in GUARANTEES:
        group = f"bench-results-{uuid.uuid4().hex[:8]}"
        consumer = _consumer(kafka, topic, results, guarantee, group)
        with running(consumer):
            wait_until(lambda consumer=consumer: consumer.counter("jobs_processed_total") > 0,
                       120, f"the {guarantee} consumer's first job", poll=POLL_S)
            started = time.monotonic()
            wait_until(lambda group=group: kafka.committed(topic, group) >= jobs, jobs * 0.01 + 120,
                       f"{jobs} jobs committed with their results ({guarantee})", poll=POLL_S)
            seconds = time.monotonic() - started
            if consumer.stop() != 0:
                raise BenchmarkError(f"consumer exited {consumer.returncode}:\n{consumer.tail()}")
        rates[guarantee] = jobs / seconds
        report.rows.append(Row("results", f"1 consumer, no-op handler, results on, {guarantee}", jobs,
                               seconds, 0, consumer.peak_mb,
                               "first processed to every offset committed (results written)"))
    report.keys["eos_vs_at_least_once"] = rates["exactly_once"] / rates["at_least_once"]


def wait_latency(kafka: Kafka, report: Report) -> None:
    from jobpipe.client import JobClient

    seconds = WAIT_S[report.profile.name]
    for guarantee in GUARANTEES:
        topic, results = _topics(kafka, report, f"wait-{guarantee[:3]}")
        consumer = _consumer(kafka, topic, results, guarantee, f"bench-wait-{uuid.uuid4().hex[:8]}")
        with running(consumer):
            wait_until(consumer.ready, 120, f"the {guarantee} consumer to join", poll=POLL_S)
            with JobClient(kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic, results_topic=results,
                           linger_ms=0) as client:
                client.submit_and_wait("warm-up", timeout=60)
                pending = []
                start = time.monotonic()
                for n in range(int(seconds * WAIT_RATE)):
                    due = start + n / WAIT_RATE
                    time.sleep(max(0.0, due - time.monotonic()))
                    submitted = time.monotonic()
                    pending.append((submitted, client.submit_for_result(n)))
                waits = []
                for submitted, future in pending:
                    future.result(timeout=60)
                    assert future.settled_at is not None
                    waits.append((future.settled_at - submitted) * 1000)
            if consumer.stop() != 0:
                raise BenchmarkError(f"consumer exited {consumer.returncode}:\n{consumer.tail()}")
        waits.sort()
        percentile = {"p50": statistics.median(waits), "p99": waits[int(len(waits) * 0.99) - 1],
                      "max": waits[-1]}
        report.latency_ms[f"submit and wait for the result, {guarantee}"] = {
            name: round(value, 2) for name, value in percentile.items()}
        key = "result_wait_p99_ms" if guarantee == "at_least_once" else "result_wait_p99_ms_eos"
        report.keys[key] = round(percentile["p99"], 2)
