"""The shared library's pieces: retry policy, job model, log lines, health server."""

from __future__ import annotations

import io
import itertools
import json
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime

import pytest
from loguru import logger

from jobpipe.errors import ExitCode, StopRequested, exit_code_for
from jobpipe.handlers import demo_handler
from jobpipe.handling import JobHandler
from jobpipe.health import HealthServer
from jobpipe.job import InvalidJob, Job
from jobpipe.kafka_clients import wait_for_broker
from jobpipe.logs import configure_logging, event
from jobpipe.retry import RetryPolicy
from jobpipe.settings import KafkaSettings
from jobpipe.signals import install_stop_handler, wait_logged


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=10.0, max_attempts=5)
    for _ in range(200):
        delays = [policy.delay_s(attempt) for attempt in range(1, 12)]
        for attempt, delay in enumerate(delays, start=1):
            ceiling = min(10.0, 0.1 * 2 ** (attempt - 1))
            assert ceiling / 2 <= delay <= ceiling
        assert all(a <= b * 2 for a, b in itertools.pairwise(delays))
        assert max(delays) <= 10.0
    assert len({policy.delay_s(3) for _ in range(20)}) > 1, "jittered"
    assert not policy.gives_up_after(4) and policy.gives_up_after(5)


def test_job_round_trips_and_has_the_contract_fields() -> None:
    job = Job.new(1, 0)
    assert job.key == "p1-m0"
    data = json.loads(job.to_bytes())
    assert {"id", "key", "producer", "seq", "created_at", "payload"} <= set(data)
    assert datetime.fromisoformat(data["created_at"].replace("Z", "+00:00")).tzinfo is not None
    assert Job.from_bytes(job.to_bytes()) == job
    assert Job.new(1, 0).id != job.id, "ids are unique"
    demo_handler(job)


@pytest.mark.parametrize("raw", [None, b"", b"not json", b"[]", b'{"id": "x"}',
                                 b'{"id":"a","key":"k","producer":1,"seq":0,"created_at":"yesterday"}'])
def test_anything_but_a_job_is_invalid(raw: bytes | None) -> None:
    with pytest.raises(InvalidJob):
        Job.from_bytes(raw)


def test_fields_the_contract_does_not_name_are_kept() -> None:
    sent = json.loads(Job.new(1, 0).to_bytes()) | {"trace_id": "abc", "extra": [1, 2]}
    job = Job.from_bytes(json.dumps(sent).encode())
    assert dict(job.extra) == {"trace_id": "abc", "extra": [1, 2]}
    assert json.loads(job.to_bytes()) == sent
    assert Job.new(1, 0).extra == {}


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"id":"a","key":"k","producer":1,"seq":"x","created_at":"2024-01-01T00:00:00Z"}',
     "not a job: seq: Expected `int | null`, got `str`"),
    (b'{"id":"a","key":"k","producer":1,"seq":0,"created_at":"2024-01-01T00:00:00"}',
     "not a job: created_at: Expected `datetime` with a timezone component"),
    (b'{"id":"a","key":"k","producer":1,"seq":0,"more":1}',
     "not a job: created_at: Field required"),
    (b'{"id":"","key":"k","producer":1,"seq":0,"created_at":"2024-01-01T00:00:00Z"}',
     "not a job: id: Expected `str` of length >= 1"),
    (b"[]", "not a job: value: Expected `object`, got `array`"),
    (b"not json", "not a job: value: JSON is malformed"),
])
def test_a_message_that_is_not_a_job_is_refused_naming_the_field(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        Job.from_bytes(raw)
    assert str(refused.value).startswith(reason)


@pytest.fixture
def own_logging() -> Iterator[None]:
    """A test that points the process's logging at a buffer: loguru's default sink (stderr) is
    back afterwards, so later tests in this process do not write into a dead buffer."""
    yield
    logger.remove()
    logger.add(sys.stderr)


@pytest.mark.usefixtures("own_logging")
def test_json_log_lines_have_the_contract_fields_at_top_level() -> None:
    out = io.StringIO()
    configure_logging("consumer", "INFO", "json", out)
    event("job.processed", "processed p1-m0", id="abc", key="p1-m0", partition=2, offset=7)
    event("debug.noise", "hidden", level="DEBUG")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "job.processed" and record["service"] == "consumer"
    assert record["level"] == "INFO" and record["message"] == "processed p1-m0"
    assert (record["partition"], record["offset"], record["key"]) == (2, 7, "p1-m0")
    assert record["time"].endswith("Z")


@pytest.mark.usefixtures("own_logging")
def test_text_log_lines_read_like_the_seed() -> None:
    out = io.StringIO()
    configure_logging("producer", "INFO", "text", out)
    event("job.produced", "producer 1 produced p1-m0 to partition 2 offset 0", key="p1-m0")
    line = out.getvalue().strip()
    assert line.endswith("| INFO    | producer | producer 1 produced p1-m0 to partition 2 offset 0")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_server_serves_metrics_and_probes() -> None:
    ready = False
    server = HealthServer(0, live=lambda: True, ready=lambda: ready, host="127.0.0.1",
                          service="consumer").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/readyz")[0] == 503
        ready = True
        assert get(f"{base}/readyz")[0] == 200
        status, body = get(f"{base}/metrics")
        assert status == 200 and "jobs_processed_total" in body
        assert get(f"{base}/nope")[0] == 404
    finally:
        server.close()


@pytest.mark.parametrize(("service", "serves", "not_served"), [
    ("producer", {"jobs_produced_total", "jobs_produce_failed_total"},
     {"jobs_processed_total", "consumer_partitions_owned", "inmemory_queue_depth", "consumer_group_lag"}),
    ("consumer", {"jobs_processed_total", "jobs_dead_lettered_total", "consumer_partitions_owned",
                  "job_end_to_end_seconds_count"},
     {"jobs_produced_total", "jobs_produce_failed_total", "inmemory_queue_depth"}),
    ("inmemory", {"jobs_produced_total", "jobs_processed_total", "inmemory_queue_depth"},
     {"jobs_produce_failed_total", "consumer_partitions_owned", "job_end_to_end_seconds_count"}),
])
def test_each_service_serves_only_the_metrics_it_moves(service: str, serves: set[str],
                                                       not_served: set[str]) -> None:
    """A producer that served `jobs_processed_total 0` looked like a consumer doing nothing."""
    server = HealthServer(0, live=lambda: True, ready=lambda: True, host="127.0.0.1",
                          service=service).start()
    try:
        _status, body = get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and line[0] != "#"}
    assert serves | {"service_ready", "process_cpu_seconds_total"} <= names, (service, names)
    assert not names & not_served, (service, names & not_served)


def test_a_stop_ends_the_wait_for_a_broker_that_is_down() -> None:
    """SIGTERM while the broker is down: a clean stop (exit 0) within SHUTDOWN_TIMEOUT_S, not
    exit 3 once KAFKA_WAIT_TIMEOUT_S has passed."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = KafkaSettings(kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_wait_timeout_s=60,
                             shutdown_timeout_s=2)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StopRequested) as stopped:
        wait_for_broker(settings, stop)
    assert time.monotonic() - started < 2, "within SHUTDOWN_TIMEOUT_S"
    assert exit_code_for(stopped.value) is ExitCode.OK


@pytest.mark.usefixtures("own_logging")
def test_a_signal_that_lands_while_a_line_is_being_logged_loses_nothing(
        capfd: pytest.CaptureFixture[str]) -> None:
    """The handler runs in the main thread between two bytecodes, here inside loguru's sink:
    logging from there would hit loguru's lock (a lost line and a traceback on stderr)."""

    class SignalMidWrite(io.StringIO):
        def write(self, text: str) -> int:
            if "first line" in text:
                signal.raise_signal(signal.SIGTERM)  # the handler runs before this returns
            return super().write(text)

    out = SignalMidWrite()
    configure_logging("producer", "INFO", "json", out)
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = install_stop_handler()
        event("demo.first", "first line")
        assert stop.is_set()
        wait_logged(timeout=10)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["demo.first", "service.stopping"], out.getvalue()
    assert "Logging error" not in capfd.readouterr().err


def test_a_handler_that_returns_a_coroutine_fails_instead_of_passing_for_done() -> None:
    async def work(job: Job) -> None:
        raise AssertionError("never awaited here")

    def hides_its_coroutine(job: Job) -> object:  # a plain function, so not awaited
        return work(job)

    handler = JobHandler(hides_its_coroutine, RetryPolicy())
    attempt = handler.attempt(Job.new(1, 0), 1)
    assert isinstance(attempt.error, TypeError) and "async def" in str(attempt.error)


def test_the_library_modules_import_each_other_in_one_direction_only() -> None:
    """No import circle (issue 22): settings, client_check and kafka_clients imported each other
    (settings did it inside a method). Every import counts, wherever it is written."""
    import ast
    from pathlib import Path

    import jobpipe

    folder = Path(jobpipe.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jobpipe."):
                found.add(node.module.removeprefix("jobpipe."))
            elif isinstance(node, ast.ImportFrom) and node.module == "jobpipe":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("jobpipe.") for a in node.names
                          if a.name.startswith("jobpipe.")}
        imports[path.stem] = found

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for name in imports.get(start, set()) - seen:
            seen.add(name)
            if name == goal or reaches(name, goal, seen):
                return True
        return False

    circles = sorted(name for name in imports if reaches(name, name, set()))
    assert circles == [], f"modules in an import circle: {circles}"
