"""CONSUMER_CONCURRENCY on a real broker: many jobs of one partition in flight at once, each
key's jobs still one after another in offset order, and the watermark commit keeping
at-least-once through SIGKILL and SIGTERM."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import msgspec

from jobpipe.job import Job
from tests.integration.conftest import Pipeline, processed
from tests.observing import happens_within, wait_until

GATED = "tests.handlers:gated"


def keyed(seq: int, key: str) -> Job:
    made = Job.new(7, seq, payload={"message": "ok"})
    return msgspec.structs.replace(made, key=key)


def most_at_once(record: Path) -> int:
    running = most = 0
    for line in record.read_text().splitlines():
        running += 1 if line.startswith("start ") else -1
        most = max(most, running)
    return most


def test_concurrency_16_keeps_each_keys_order_and_processes_every_job_once(
        pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics()
    jobs = [keyed(seq, f"k{seq % 24}") for seq in range(480)]
    pipeline.send(jobs)
    record = tmp_path / "record.txt"
    consumer = pipeline.start("consumer", handler=GATED, consumer_concurrency=16, ordering="key",
                              test_handler_sleep_ms=5, test_gate_seq=10**9, test_record_file=record)
    consumer.wait_for("job.processed", len(jobs), timeout=120)
    assert consumer.stop() == 0, consumer.tail()

    done = processed(consumer)
    assert Counter(e["id"] for e in done) == Counter({j.id: 1 for j in jobs}), "each job exactly once"
    starts = [line.split() for line in record.read_text().splitlines() if line.startswith("start ")]
    for key in {j.key for j in jobs}:
        seqs = [int(seq) for _, k, seq in starts if k == key]
        assert seqs == sorted(seqs), f"{key}'s jobs started out of order: {seqs}"
    assert 1 < most_at_once(record) <= 16


def test_an_async_handler_at_concurrency_64_processes_every_job(pipeline: Pipeline, tmp_path: Path) -> None:
    record = tmp_path / "done.txt"
    pipeline.ensure_topics()
    jobs = [keyed(seq, f"k{seq}") for seq in range(300)]
    pipeline.send(jobs)
    consumer = pipeline.start("consumer", handler="tests.handlers:async_record", consumer_concurrency=64,
                              test_record_file=record)
    consumer.wait_for("job.processed", len(jobs), timeout=60)
    assert consumer.stop() == 0, consumer.tail()
    assert sorted(record.read_text().split()) == sorted(j.id for j in jobs)


def gated_stream(pipeline: Pipeline, release: Path) -> tuple[list[Job], dict[str, object]]:
    """1,200 jobs of distinct keys, and consumer settings (concurrency 32) under which the jobs
    from seq 400 on wait for the file `release`: a kill or a stop lands mid-stream, however
    fast the machine is. The first 400 are sent first, so every partition starts with them."""
    pipeline.ensure_topics()
    jobs = [keyed(seq, f"k{seq}") for seq in range(1200)]
    pipeline.send(jobs[:400])
    pipeline.send(jobs[400:])
    settings = {"handler": GATED, "consumer_concurrency": 32, "test_handler_sleep_ms": 2,
                "test_gate_seq": 400, "test_release_file": release, "shutdown_timeout_s": 10}
    return jobs, settings


def test_sigkill_mid_stream_at_concurrency_32_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    release = tmp_path / "release"
    jobs, settings = gated_stream(pipeline, release)
    first = pipeline.start("consumer", **settings)
    first.wait_for("job.processed", 100, timeout=90)
    first.kill()
    release.touch()
    done_first = {e["id"] for e in processed(first)}

    second = pipeline.start("consumer", **settings)
    wait_until(lambda: done_first | {e["id"] for e in processed(second)} >= {j.id for j in jobs},
               120, "every job to be processed by one consumer or the other")
    assert second.stop() == 0, second.tail()
    # How many are redone is bounded by test_after_a_sigkill_the_next_owner_reruns_at_most_max_in_flight
    # (here the gate holds the jobs from seq 400, so no count above 400 could fail).


HELD_SEQ = 10**6  # the gated handler holds jobs from this seq on until the release file exists


def test_after_a_sigkill_the_next_owner_reruns_at_most_max_in_flight(
        pipeline: Pipeline, tmp_path: Path) -> None:
    """README: the committed offset is a partition's oldest unfinished job, so after a crash
    the next owner re-runs what finished above it, at most MAX_IN_FLIGHT jobs per member.
    One partition: a held job at offset 0, then 10 x MAX_IN_FLIGHT quick jobs; the member is
    killed while the held job still runs. With the bound broken, it finishes every quick job
    above the held one (within about a second), and the next owner runs them all again."""
    max_in_flight, quick = 20, 200
    release = tmp_path / "release"
    record = tmp_path / "record.txt"
    pipeline.ensure_topics(partitions=1)
    held = keyed(HELD_SEQ, "held")
    jobs = [held, *(keyed(seq, f"k{seq}") for seq in range(quick))]
    pipeline.send(jobs)
    settings = {"handler": GATED, "consumer_concurrency": 4, "ordering": "none",
                "max_in_flight": max_in_flight, "test_handler_sleep_ms": 1, "test_gate_seq": HELD_SEQ,
                "test_release_file": release,
                "kafka_extra_config": "session.timeout.ms=6000"}  # the next owner's wait
    first = pipeline.start("consumer", test_record_file=record, **settings)
    wait_until(lambda: record.exists() and f"start held {HELD_SEQ}" in record.read_text(), 60,
               f"the held job to start\n{first.tail()}")
    # The member may finish at most MAX_IN_FLIGHT jobs above the held one; give it the chance to
    # break that: until it finished every quick job (the bound broken), or for 10 s (a member
    # that keeps the bound goes idle, however fast or slow the machine).
    happens_within(lambda: len(processed(first)) >= quick, 10)
    first.kill()
    done_first = {e["id"] for e in processed(first)}
    assert held.id not in done_first, "the held job held the committed offset throughout"
    release.touch()

    second = pipeline.start("consumer", **settings)
    # The committed offset is the held job's, so the next owner runs every job from there.
    second.wait_for("job.processed", len(jobs), timeout=90)
    assert second.stop() == 0, second.tail()
    done_second = [e["id"] for e in processed(second)]
    assert Counter(done_second) == Counter({j.id: 1 for j in jobs}), "none lost, none twice there"
    redone = done_first & set(done_second)
    assert len(redone) <= max_in_flight, (
        f"{len(redone)} jobs finished before the SIGKILL were run again; README bounds that by "
        f"MAX_IN_FLIGHT={max_in_flight}")


def test_sigterm_at_concurrency_32_processes_nothing_twice(pipeline: Pipeline, tmp_path: Path) -> None:
    release = tmp_path / "release"
    jobs, settings = gated_stream(pipeline, release)
    first = pipeline.start("consumer", **settings)
    first.wait_for("job.processed", 100, timeout=90)
    first.signal(signal.SIGTERM)
    first.wait_for("service.stopping", timeout=10)
    release.touch()  # the jobs in hand finish within the budget; nothing more starts
    assert first.wait(15) == 0, first.tail()
    done_first = [e["id"] for e in processed(first)]
    assert 100 <= len(done_first) < len(jobs)
    assert not first.events("job.handed_back"), "every job in hand finished in time"

    second = pipeline.start("consumer", **settings)
    wait_until(lambda: len(processed(second)) >= len(jobs) - len(done_first), 90,
               "the rest to be processed")
    assert second.stop() == 0, second.tail()
    done_second = [e["id"] for e in processed(second)]
    assert not set(done_first) & set(done_second), "nothing committed was processed again"
    assert Counter(done_first + done_second) == Counter({j.id: 1 for j in jobs})
