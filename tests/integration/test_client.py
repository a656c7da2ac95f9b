"""jobpipe.client and `producer submit` against the real broker: acknowledged jobs reach the
handler of their type in the real `consumer` service; refusals are clear and send nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from jobpipe.client import AsyncJobClient, JobClient, SubmitFailed, TopicMissing
from jobpipe.errors import KafkaUnreachable
from jobpipe.job import InvalidJob, Job
from tests.integration.client_handlers import records
from tests.integration.conftest import Pipeline
from tests.service_runner import BIN, REPO, free_port, service_env, wait_until

REGISTRY = "tests.integration.client_handlers:registry"


def client(pipeline: Pipeline, **extra: object) -> JobClient:
    return JobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                     kafka_wait_timeout_s=20, **extra)


def handled(record: Path, count: int) -> list[dict[str, object]]:
    return wait_until(lambda: len(done := records(str(record))) >= count and done, 60,
                      f"{count} jobs handled (have {records(str(record))})")


def test_sync_submit_reaches_the_handler_of_its_type(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics()
    record = tmp_path / "handled.jsonl"
    consumer = pipeline.start("consumer", handler=REGISTRY, test_record_file=record)
    with client(pipeline) as jobs:
        resize_id = jobs.submit({"width": 640}, type="resize", key="image-42", headers={"trace": "t-1"})
        mail_id = jobs.submit({"to": "a@example.com"}, type="mail", id="mail-1")
        futures = [jobs.submit_async(n, type="resize", key="batch") for n in range(20)]
        batch_ids = [future.result(timeout=30) for future in futures]
        many_ids = jobs.submit_many([{"n": n} for n in range(30)], type="mail")
    assert mail_id == "mail-1", "the caller's id is the job's"
    assert len({resize_id, *batch_ids, *many_ids}) == 51

    done = {entry["id"]: entry for entry in handled(record, 52)}
    assert done[resize_id] == {"handler": "resize", "id": resize_id, "type": "resize", "key": "image-42",
                               "payload": {"width": 640}, "headers": {"trace": "t-1"}}
    assert done["mail-1"]["handler"] == "mail" and done["mail-1"]["key"] is None
    assert [done[i]["payload"] for i in batch_ids] == list(range(20))
    assert all(done[i]["handler"] == "mail" for i in many_ids)
    assert len(consumer.wait_for("job.processed", 52)) == 52
    assert consumer.stop() == 0

    messages = pipeline.read(pipeline.topic, 52)
    sent = {Job.from_bytes(m.value()).id: m for m in messages}
    assert sent[resize_id].key() == b"image-42" and sent[resize_id].headers() == [("trace", b"t-1")]
    assert sent["mail-1"].key() is None, "a job without a key has no Kafka key"


def test_async_submit_reaches_the_handler(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics()
    record = tmp_path / "handled.jsonl"
    consumer = pipeline.start("consumer", handler=REGISTRY, test_record_file=record)

    async def submit_all() -> list[str]:
        async with AsyncJobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                                  kafka_wait_timeout_s=20) as jobs:
            one = await jobs.submit({"width": 1}, type="resize", key="k1", headers={"h": "v"})
            ticks = 0

            async def tick() -> None:  # the loop keeps running while jobs are in flight
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            ticker = asyncio.create_task(tick())
            many = await jobs.submit_many(range(40), type="mail")
            ticker.cancel()
            assert ticks > 0
            return [one, *many]

    ids = asyncio.run(submit_all())
    done = {entry["id"]: entry for entry in handled(record, 41)}
    assert set(done) == set(ids)
    assert done[ids[0]]["key"] == "k1" and done[ids[0]]["handler"] == "resize"
    assert done[ids[0]]["headers"] == {"h": "v"}, "the headers reach the handler"
    assert consumer.stop() == 0


def test_an_unreachable_broker_raises_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable, match=r"not reachable at 127\.0\.0\.1:\d+ within 2 s"):
        JobClient(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_wait_timeout_s=2)
    assert time.monotonic() - started < 6


def test_a_missing_topic_is_named_at_once(pipeline: Pipeline) -> None:
    started = time.monotonic()
    with pytest.raises(TopicMissing, match=f"topic '{pipeline.topic}' \\(JOBS_TOPIC\\) cannot be used"):
        client(pipeline)
    assert time.monotonic() - started < 15


def test_a_payload_that_is_not_json_is_refused_and_nothing_is_sent(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    with client(pipeline) as jobs:
        with pytest.raises(InvalidJob, match="not JSON-serialisable"):
            jobs.submit({"when": object()}, type="resize")
        with pytest.raises(InvalidJob, match="job type must be a non-empty string"):
            jobs.submit(1, type="")
        fine = jobs.submit("fine")
    [only] = pipeline.read(pipeline.topic, 1)
    assert Job.from_bytes(only.value()).id == fine


def submit_command(pipeline: Pipeline, *args: str, stdin: str = "", **settings: object
                   ) -> subprocess.CompletedProcess[str]:
    env = service_env(**pipeline.settings(log_level="WARNING", **settings))
    return subprocess.run([str(BIN / "producer"), "submit", *args], input=stdin, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_submit_command_prints_each_acknowledged_job(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    given = submit_command(pipeline, "--type", "resize", "--key", "k", '{"w": 1}', "[2]")
    assert given.returncode == 0, given.stderr
    ids = given.stdout.split()
    lines = submit_command(pipeline, "--json", "--jobs",
                           stdin='{"payload": 3, "type": "mail", "id": "m-3"}\n\n{"payload": 4}\n')
    assert lines.returncode == 0, lines.stderr
    results = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(results) == 2 and results[0]["id"] == "m-3"

    sent = {Job.from_bytes(m.value()).id: m for m in pipeline.read(pipeline.topic, 4)}
    assert [Job.from_bytes(sent[i].value()).payload for i in ids] == [{"w": 1}, [2]]
    assert all(sent[i].key() == b"k" and Job.from_bytes(sent[i].value()).type == "resize" for i in ids)
    for result in results:
        assert (sent[result["id"]].partition(), sent[result["id"]].offset()) == (
            result["partition"], result["offset"])


def test_the_submit_command_exit_codes(pipeline: Pipeline) -> None:
    pipeline.ensure_topics()
    bad = submit_command(pipeline, stdin='{"ok": 1}\n{"broken": \n')
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().startswith("producer submit: bad input: stdin line 2: not JSON")
    setting = submit_command(pipeline, "1", kafka_wait_timeout_s="soon")
    assert setting.returncode == 2 and "KAFKA_WAIT_TIMEOUT_S='soon'" in setting.stderr
    down = submit_command(pipeline, "1", kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
                          kafka_wait_timeout_s=1)
    assert down.returncode == 3 and "not reachable" in down.stderr and down.stdout == ""
    fine = submit_command(pipeline, "1")
    assert fine.returncode == 0
    [only] = pipeline.read(pipeline.topic, 1)  # the bad inputs sent nothing
    assert Job.from_bytes(only.value()).id == fine.stdout.strip()


def test_a_job_the_broker_refuses_raises_with_the_brokers_reason(
        pipeline: Pipeline, admin: AdminClient) -> None:
    """A topic whose messages may have at most 1 KiB: the broker refuses bigger ones (and with
    them the whole batch they were sent in); every job is acknowledged or raises, none is lost."""
    for future in admin.create_topics([NewTopic(pipeline.topic, 1, 1,
                                                config={"max.message.bytes": "1024"})]).values():
        future.result(30)
    too_large = "Broker: Message size too large"
    with client(pipeline) as jobs:
        with pytest.raises(SubmitFailed, match=f"^job .* was not acknowledged: {too_large}$"):
            jobs.submit("x" * 4000)
        futures = [jobs.submit_async("y" * 4000), jobs.submit_async("small")]
        with pytest.raises(SubmitFailed) as refused:
            jobs.submit_many(["z" * 4000, "fine"])
        assert too_large in str(refused.value) and set(refused.value.failed.values()) == {too_large}
        last = jobs.submit("alone")
    outcomes = [future.exception(0) or future.result(0) for future in futures]
    assert isinstance(outcomes[0], SubmitFailed) and outcomes[0].reason == too_large
    acknowledged = [job_id for job_id in outcomes if isinstance(job_id, str)] + [last]
    count = len(acknowledged) + 2 - len(refused.value.failed)  # submit_many's acknowledged ones
    stored = {Job.from_bytes(m.value()).id: Job.from_bytes(m.value()).payload
              for m in pipeline.read(pipeline.topic, count)}
    assert set(acknowledged) <= set(stored) and stored[last] == "alone"
    assert not any(len(str(payload)) == 4000 for payload in stored.values())


def test_one_client_is_shared_by_threads(pipeline: Pipeline) -> None:
    """Threads submit one at a time, without waiting, and in batches through one client:
    each gets its own jobs' ids, and every job is in the topic once."""
    pipeline.ensure_topics()
    per_thread = 300
    ids: dict[int, list[str]] = {}
    with client(pipeline) as jobs:
        def work(number: int) -> None:
            if number % 3 == 0:
                ids[number] = [jobs.submit({"t": number, "n": n}) for n in range(per_thread)]
            elif number % 3 == 1:
                futures = [jobs.submit_async({"t": number, "n": n}) for n in range(per_thread)]
                ids[number] = [future.result(30) for future in futures]
            else:
                ids[number] = jobs.submit_many([{"t": number, "n": n} for n in range(per_thread)])

        threads = [threading.Thread(target=work, args=(number,)) for number in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(jobs) == 0, "nothing left unacknowledged"
    assert sorted(ids) == list(range(6))
    stored = {Job.from_bytes(m.value()).id: Job.from_bytes(m.value()).payload
              for m in pipeline.read(pipeline.topic, 6 * per_thread)}
    for number, mine in ids.items():
        assert [stored[job_id] for job_id in mine] == [{"t": number, "n": n} for n in range(per_thread)]
