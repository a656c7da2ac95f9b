"""HANDLER naming a JobRegistry, in the real `consumer` (Kafka) and `inmemory` services: each job
runs the handler of its type; a job whose type has no handler is dead-lettered at once."""

from __future__ import annotations

from pathlib import Path

from jobpipe.client import JobClient
from jobpipe.job import Job
from tests.integration.client_handlers import records
from tests.integration.conftest import Pipeline
from tests.service_runner import run_to_end, wait_until


def test_jobs_are_routed_by_type_and_an_unknown_type_goes_to_the_dlq_at_once(
        pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics()
    record = tmp_path / "handled.jsonl"
    consumer = pipeline.start("consumer", handler="tests.integration.client_handlers:registry",
                              test_record_file=record, max_attempts=5)
    with JobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                   kafka_wait_timeout_s=20) as jobs:
        resized = jobs.submit({"w": 1}, type="resize", key="same")
        unknown = jobs.submit({"to": "x"}, type="sms", key="same")  # same key: after resize, before mail
        mailed = jobs.submit({"to": "a"}, type="mail", key="same")
        untyped = jobs.submit("no type")
    pipeline.send([Job.new(1, 0)])  # the demo producer's job: no type either

    letters = pipeline.read(pipeline.dlq, 3)
    wait_until(lambda: len(records(str(record))) >= 2, 30, "2 jobs handled")
    consumer.wait_for("job.dead_lettered", 3)
    assert consumer.stop() == 0

    assert {(r["id"], r["handler"]) for r in records(str(record))} == {(resized, "resize"), (mailed, "mail")}
    headers = {Job.from_bytes(m.value()).id: {k: v.decode() for k, v in m.headers() or []} for m in letters}
    assert headers[unknown]["dlq.error"] == (
        "UnknownJobType: no handler for job type 'sms' (known: mail, resize)")
    assert headers[unknown]["dlq.attempts"] == "1", "not retried: no handler will ever take it"
    assert headers[untyped]["dlq.error"].endswith("no handler for jobs without a type (known: mail, resize)")
    assert not consumer.events("job.retry")
    lines = {e["id"]: e["message"] for e in consumer.events("job.dead_lettered")}
    assert f"dead-lettered job {untyped} from partition" in lines[untyped], "a job without a key: its id"


def test_the_inmemory_service_uses_the_same_registry(tmp_path: Path) -> None:
    record = tmp_path / "handled.jsonl"
    run = run_to_end("inmemory", timeout=60, handler="tests.integration.client_handlers:with_default",
                     test_record_file=record)
    assert run.process.returncode == 0, run.tail()
    handled = records(str(record))
    assert len(handled) == 20 and {r["handler"] for r in handled} == {"default"}, "demo jobs have no type"
