"""The console's benchmark (issue 26), run by `make bench` (and `make test`'s short profile)
next to bench.py's.

- `console_dlq_page_ms`: 10,000 dead letters in the DLQ (2,000 in the short profile); the time
  from asking the console for the dead-letter list to having its first page (50 letters,
  rendered), the median of 5 requests after one warm-up (target <= 1000 ms). The page reads no
  further than its letters (Redriver.page), so this does not grow with the DLQ.
- `console_dlq_filtered_page_ms` (reference): the same with an error filter that only one
  letter in a hundred matches, so the page reads about 5,000 letters to fill itself.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime

import httpx
from confluent_kafka import Producer

from tests.benchmarks import bench
from tests.benchmarks.bench import BenchmarkError, Kafka, Report, Row
from tests.service_runner import ServiceProcess, free_port

bench.TARGETS.setdefault("console_dlq_page_ms", ("<=", 1000.0))
LETTERS = {"full": 10_000, "short": 2_000}  # `make test`'s short profile only proves the harness
RARE = "RareError: one in a hundred"


def fill_dlq(kafka: Kafka, jobs_topic: str, dlq: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "linger.ms": 20})
    failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").encode()
    for seq in range(count):
        error = RARE if seq % 100 == 0 else "TimeoutError: upstream timed out"
        headers = [("dlq.error", error.encode()), ("dlq.attempts", b"5"),
                   ("dlq.original.topic", jobs_topic.encode()),
                   ("dlq.original.partition", str(seq % 3).encode()),
                   ("dlq.original.offset", str(seq // 3).encode()), ("dlq.failed_at", failed_at)]
        value = b'{"id":"%d","payload":{"n":%d},"created_at":"2026-12-07T00:00:00Z"}' % (seq, seq)
        while True:
            try:
                producer.produce(dlq, key=f"k-{seq}".encode(), value=value, headers=headers,
                                 partition=seq % 3)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(60) != 0:
        raise BenchmarkError("the dead letters were not all written")


def page_ms(client: httpx.Client, path: str, rows: int) -> float:
    started = time.perf_counter()
    answer = client.get(path)
    took = (time.perf_counter() - started) * 1000
    if answer.status_code != 200 or answer.text.count('href="/dead-letters/') != rows:
        raise BenchmarkError(f"GET {path}: {answer.status_code}, not {rows} letters:\n{answer.text[-2000:]}")
    return took


def console_dlq_page(kafka: Kafka, report: Report) -> None:
    letters = LETTERS.get(report.profile.name, LETTERS["full"])
    jobs_topic = kafka.topic(report, "console")
    dlq = f"{jobs_topic}.dlq"
    fill_dlq(kafka, jobs_topic, dlq, letters)
    if kafka.end_offsets(dlq) != letters:
        raise BenchmarkError(f"{dlq} holds {kafka.end_offsets(dlq)} letters, not {letters}")
    port = free_port()
    with ServiceProcess("console", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=jobs_topic,
                        dlq_topic=dlq, console_port=port, console_page_size=50) as console:
        console.wait_for("console.listening", timeout=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            page_ms(client, "/dead-letters", 50)  # warm-up: the first connections to the broker
            plain = [page_ms(client, "/dead-letters", 50) for _ in range(5)]
            rare_rows = min(50, letters // 100)
            rare = [page_ms(client, "/dead-letters?error=RareError", rare_rows) for _ in range(3)]
        console.stop()
    report.keys["console_dlq_page_ms"] = statistics.median(plain)
    report.keys["console_dlq_filtered_page_ms"] = statistics.median(rare)
    report.repeats["console_dlq_page_ms"] = plain
    report.rows.append(Row("console", f"console, first page of {letters:,} dead letters", 50,
                           statistics.median(plain) / 1000, notes="median of 5 GET /dead-letters"))
    report.rows.append(Row("console", "console, first page, 1 in 100 letters matching",
                           min(50, letters // 100),
                           statistics.median(rare) / 1000, notes="median of 3; reads up to 5,000 letters"))
