"""CONSUMER_MODE=share on a real broker (issue 15, KIP-932): more consumers than partitions all
do work; every job is processed, none twice on the graceful path; failures go to the DLQ;
delayed jobs wait in the delay tiers and run once, after their time."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from local_kafka import LocalKafkaCluster

from jobpipe.client import JobClient
from jobpipe.job import Job
from tests.integration.conftest import Pipeline, processed
from tests.integration.reliability import set_group_config
from tests.integration.test_delays import starts
from tests.service_runner import ServiceProcess, wait_until

SCRIPTED = "tests.handlers:scripted"


def job(seq: int, **payload: object) -> Job:
    return Job.new(5, seq, payload=payload or {"sleep_s": 0.02})


def send_one_per_batch(pipeline: Pipeline, jobs: list[Job]) -> None:
    """A share group hands out (and locks) whole record batches: jobs sent at a steady pace
    come one per batch, as here; a burst of one batch goes to one member."""
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "linger.ms": 0, "acks": "all"})
    for one in jobs:
        producer.produce(pipeline.topic, key=one.key, value=one.to_bytes())
        producer.flush(10)
    assert len(producer) == 0


def send_in_one_batch(pipeline: Pipeline, jobs: list[Job]) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "linger.ms": 1000, "acks": "all"})
    for one in jobs:
        producer.produce(pipeline.topic, key=one.key, value=one.to_bytes())
    producer.flush(30)
    assert len(producer) == 0


def ensure_share(pipeline: Pipeline, partitions: int, lock_ms: int | None = None) -> None:
    admin = pipeline.run("topic-admin", "ensure", jobs_partitions=partitions, consumer_mode="share")
    assert admin.process.returncode == 0, admin.tail()
    assert admin.events("share_group.configured"), admin.tail()
    if lock_ms is not None:  # a crashed member's records come back when their lock ends
        set_group_config(pipeline.bootstrap, pipeline.group, "share.record.lock.duration.ms", lock_ms)


def test_six_share_consumers_on_two_partitions_all_do_work_and_process_each_job_once(
        pipeline: Pipeline) -> None:
    """Six members, then rounds of 20 jobs of 20 ms, one per record batch, until each member has
    done some (a member that gets its partitions late finds the first rounds taken: the test
    waits for the work, not a clock); every job processed exactly once."""
    ensure_share(pipeline, partitions=2)
    consumers = [pipeline.start("consumer", handler=SCRIPTED, consumer_mode="share") for _ in range(6)]
    for consumer in consumers:
        consumer.wait_for("share.joined", 1, timeout=60)
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "linger.ms": 0, "acks": "all"})
    jobs: list[Job] = []
    while not all(processed(consumer) for consumer in consumers):  # rounds of 20 jobs
        assert len(jobs) < 2000, [len(processed(consumer)) for consumer in consumers]
        for _ in range(20):
            jobs.append(job(len(jobs)))
            producer.produce(pipeline.topic, key=jobs[-1].key, value=jobs[-1].to_bytes())
            producer.flush(10)
        wait_until(lambda: len(processed(*consumers)) >= len(jobs), 120, f"{len(jobs)} jobs processed")
    for consumer in consumers:
        assert consumer.stop() == 0, consumer.tail()
    counts = Counter(e["id"] for e in processed(*consumers))
    assert counts == Counter({j.id: 1 for j in jobs}), "each job exactly once"


def test_share_mode_dead_letters_poison_and_exhausted_jobs_with_headers(pipeline: Pipeline) -> None:
    ensure_share(pipeline, partitions=2)
    doomed = job(1, fail="always")
    good = [job(10 + i) for i in range(5)]
    pipeline.send([doomed, b"this is not json", *good])
    consumer = pipeline.start("consumer", handler=SCRIPTED, consumer_mode="share", max_attempts=3,
                              retry_backoff_initial_ms=50, retry_backoff_max_ms=200)
    consumer.wait_for("job.dead_lettered", 2, timeout=60)
    consumer.wait_for("job.processed", 5, timeout=60)
    assert consumer.stop() == 0, consumer.tail()
    letters = pipeline.read(pipeline.dlq, 2)
    headers = {m.value(): {k: v.decode() for k, v in (m.headers() or [])} for m in letters}
    assert headers[doomed.to_bytes()]["dlq.attempts"] == "3"
    assert headers[b"this is not json"]["dlq.error"].startswith("not a job")
    assert {e["id"] for e in processed(consumer)} == {j.id for j in good}
    describe = pipeline.run("topic-admin", "describe", "--json", consumer_mode="share")
    assert describe.process.returncode == 0, describe.tail()
    described = json.loads(describe.output)
    assert described["mode"] == "share", "a share group has no committed offsets: no lag is made up"
    assert described["share_configs"]["share.auto.offset.reset"] == "earliest"
    assert all(p["lag"] is None for t in described["topics"] for p in t["partitions"])


def test_a_member_killed_mid_stream_loses_nothing(pipeline: Pipeline) -> None:
    """Its jobs come back when their lock (5 s here) ends and the others take them: each job
    ends processed (before the kill or by a survivor) or, released too often, dead-lettered."""
    ensure_share(pipeline, partitions=2, lock_ms=5000)
    jobs = [job(seq) for seq in range(200)]
    send_one_per_batch(pipeline, jobs)
    victim = pipeline.start("consumer", handler=SCRIPTED, consumer_mode="share", consumer_concurrency=4)
    others = [pipeline.start("consumer", handler=SCRIPTED, consumer_mode="share") for _ in range(2)]
    victim.wait_for("job.processed", 10, timeout=60)
    victim.kill()
    before_kill = {e["id"] for e in processed(victim)}

    def done() -> set[str]:
        letters = {e["id"] for c in others for e in c.events("job.dead_lettered")}
        return before_kill | letters | {e["id"] for e in processed(*others)}
    wait_until(lambda: done() >= {j.id for j in jobs}, 120,
               "every job processed before the kill, by a survivor, or dead-lettered")
    for consumer in others:
        assert consumer.stop() == 0, consumer.tail()


def test_a_poll_bigger_than_its_lock_allows_does_no_job_twice_and_loses_none(pipeline: Pipeline) -> None:
    """300 jobs of 20 ms in one record batch, a 3 s lock: a member gets them all in one poll and
    can start only a fraction within its share of the lock (2 s). It releases the rest unstarted
    (share.poll_too_big), rather than running them after the broker gave them to the other
    member; each job ends processed once or, released too often, dead-lettered."""
    ensure_share(pipeline, partitions=1, lock_ms=3000)
    jobs = [job(seq) for seq in range(300)]
    send_in_one_batch(pipeline, jobs)
    consumers = [pipeline.start("consumer", handler=SCRIPTED, consumer_mode="share") for _ in range(2)]

    def settled() -> int:
        return len(processed(*consumers)) + sum(len(c.events("job.dead_lettered")) for c in consumers)
    wait_until(lambda: settled() >= len(jobs), 120, "every job processed or dead-lettered")
    for consumer in consumers:
        assert consumer.stop() == 0, consumer.tail()
    counts = Counter(e["id"] for e in processed(*consumers))
    assert max(counts.values()) == 1, "no job processed twice"
    letters = {Job.from_bytes(m.value()).id for m in pipeline.read(pipeline.dlq, len(jobs) - len(counts))}
    assert set(counts) | letters == {j.id for j in jobs} and not set(counts) & letters
    assert any(c.events("share.poll_too_big") for c in consumers)


def test_one_slow_job_does_not_hold_back_the_quick_ones_behind_it(pipeline: Pipeline) -> None:
    """Issue 22, defect 5: CONSUMER_CONCURRENCY=4, a 20 s job, then 20 quick ones: they all run
    while the slow one does (librdkafka refuses a new poll while a record of the last one is
    unacknowledged: another of the member's share consumers polls). Before: none ran until the
    slow job was acknowledged."""
    ensure_share(pipeline, partitions=1)
    consumer = pipeline.start("consumer", handler=SCRIPTED, consumer_mode="share", consumer_concurrency=4)
    consumer.wait_for("share.joined", 1, timeout=60)
    first = job(0)
    send_one_per_batch(pipeline, [first])
    consumer.wait_for("job.processed", 1, timeout=60)
    slow = job(1, sleep_s=20)
    quick = [job(10 + n) for n in range(20)]
    send_one_per_batch(pipeline, [slow, *quick])
    wait_until(lambda: {e["id"] for e in processed(consumer)} >= {j.id for j in quick}, 15,
               "the 20 quick jobs processed while the 20 s job runs")
    assert slow.id not in {e["id"] for e in processed(consumer)}
    consumer.wait_for("job.processed", 22, timeout=60)
    assert consumer.stop() == 0, consumer.tail()
    assert Counter(e["id"] for e in processed(consumer)) == Counter({j.id: 1 for j in [first, slow, *quick]})
    stopped = consumer.events("service.stopped")[-1]  # counted once the broker took each ACCEPT
    assert (stopped["processed"], stopped["handed_back"]) == (22, 0), stopped


def ended_or_dead_lettered(consumer: ServiceProcess) -> bool:
    return consumer.process.poll() is not None or bool(consumer.events("job.dead_lettered"))


def test_a_job_whose_handler_kills_the_process_is_dead_lettered_not_redelivered_for_ever(
        pipeline: Pipeline) -> None:
    ensure_share(pipeline, partitions=1, lock_ms=1000)
    crasher = job(1, crash=True)
    send_one_per_batch(pipeline, [crasher])
    exits = []
    for _ in range(6):  # a supervisor restarting the consumer after each crash
        consumer = pipeline.start("consumer", handler=SCRIPTED, consumer_mode="share", max_attempts=2)
        wait_until(partial(ended_or_dead_lettered, consumer), 60, "a crash or the dead letter")
        if consumer.events("job.dead_lettered"):
            assert consumer.stop() == 0, consumer.tail()
            break
        exits.append(consumer.process.returncode)
    else:
        raise AssertionError(f"never dead-lettered; exits {exits}")
    assert exits and all(code == 70 for code in exits), exits
    letter = pipeline.read(pipeline.dlq, 1)[0]
    headers = {k: v.decode() for k, v in (letter.headers() or [])}
    assert letter.value() == crasher.to_bytes() and "delivered" in headers["dlq.error"]


def test_a_cluster_without_share_groups_is_refused_saying_how_to_enable_them() -> None:
    """A cluster formatted with share groups off (as one upgraded from Kafka 3.x): `ensure` and
    the consumer each exit 3 with one line naming the feature to turn on, no traceback."""
    with LocalKafkaCluster(features={"share.version": 0}) as cluster:
        settings = {"kafka_bootstrap_servers": cluster.bootstrap_servers, "jobs_topic": "jobs",
                    "dlq_topic": "jobs.dlq", "consumer_mode": "share", "kafka_wait_timeout_s": 30}
        for args in (("topic-admin", "ensure"), ("consumer",)):
            with ServiceProcess(*args, **settings) as service:  # killed if an assertion fails
                assert service.wait(60) == 3, service.tail()
                failed = service.events("service.failed")
                assert len(failed) == 1 and "Traceback" not in service.output + service.stderr, \
                    service.tail()
                assert "--feature share.version=1" in failed[0]["message"], failed[0]["message"]


def jobs_in(pipeline: Pipeline, topic: str) -> dict[str, Job]:
    """Every job in `topic` (from its start to its end now), by id."""
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"reader-{pipeline.group}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: dict[str, Job] = {}
        left = {p for p, end in ends.items() if end > 0}

        def read_to_the_end() -> bool:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                one = Job.from_bytes(message.value())
                found[one.id] = one
                if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                    left.discard(message.partition() or 0)
            return not left
        wait_until(read_to_the_end, 30, f"{topic} read to its end", poll=0)
        return found
    finally:
        consumer.close()


def test_delayed_jobs_are_parked_in_the_tiers_and_run_once_after_their_time(
        pipeline: Pipeline, tmp_path: Path) -> None:
    """20 jobs submitted with delay=6 to two share members: each is parked (the 5 s tier, then
    the 5 s tier again until its due time: a share member never holds a record for its time),
    comes back through a member's tier mover, and runs exactly once, never before its
    not_before; none is dead-lettered. Before: all 20 were dead-lettered (DelayedJobRefused)."""
    ensure_share(pipeline, partitions=2)
    record = tmp_path / "starts.txt"
    consumers = [pipeline.start("consumer", handler="tests.handlers:timed", consumer_mode="share",
                                test_record_file=record, log_level="DEBUG") for _ in range(2)]
    for consumer in consumers:
        consumer.wait_for("share.joined", 1, timeout=60)
    with JobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                   kafka_wait_timeout_s=20) as client:
        ids = [client.submit({"n": n}, key=f"delayed-{n}", delay=6) for n in range(20)]
    wait_until(lambda: set(ids) <= set(starts(record)), 60, "every delayed job run")
    for consumer in consumers:
        assert consumer.stop() == 0, consumer.tail()
    ran = starts(record)
    submitted = jobs_in(pipeline, pipeline.topic)  # the jobs as sent (and as they came back)
    due = {job_id: submitted[job_id].not_before.timestamp() for job_id in ids}  # type: ignore[union-attr]
    early = [job_id for job_id in ids if min(ran[job_id]) < due[job_id]]
    assert not early, f"started before their not_before: {early}"
    assert Counter({job_id: len(ran[job_id]) for job_id in ids}) == Counter(dict.fromkeys(ids, 1)), \
        "each delayed job exactly once"
    assert not [e for c in consumers for e in c.events("job.dead_lettered")], "none dead-lettered"
    parked = {e["id"] for c in consumers for e in c.events("job.parked")}
    assert parked == set(ids), "each one waited in a tier, not in a member"
    stopped = [c.events("service.stopped")[-1] for c in consumers]
    assert sum(s["processed"] for s in stopped) == len(ids) and not any(s["dead_lettered"] for s in stopped)
    late = max(min(ran[job_id]) - due[job_id] for job_id in ids)
    print(f"latest start {late:.2f} s after its not_before")
