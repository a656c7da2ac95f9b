"""topic-admin's operations against a real broker: `redrive` (dead letters back to the jobs
topic, exactly once even when killed), `offsets` (move a group's committed offsets) and
`describe --watch`. Every wait has a deadline and waits for an event, never for time."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from local_kafka import LocalKafkaCluster

from jobpipe.job import Job
from tests.integration.conftest import Pipeline
from tests.service_runner import ServiceProcess, wait_until
from topic_admin_service.redriver import TRANSACTION_TIMEOUT_MS

FAILS = "tests.integration.operation_handlers:fails_by_payload"
NOOP = "tests.handlers:noop"
TIMEOUT_ERROR = "TimeoutError: upstream timed out"
MALFORMED_ERROR = "ValueError: malformed payload"


def run_json(pipeline: Pipeline, *args: str, **extra: object) -> dict[str, Any]:
    run = pipeline.run("topic-admin", *args, **extra)
    assert run.process.returncode == 0, run.tail()
    document: dict[str, Any] = json.loads(run.output)
    return document


def headers_of(message: Message) -> dict[str, bytes | None]:
    return dict(message.headers() or [])


Record = tuple[Job, list[tuple[str, bytes]], int | None]  # job, headers, partition (None: by key)


def produce(pipeline: Pipeline, topic: str, records: list[Record]) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 20})
    failures: list[Any] = []
    for job, headers, partition in records:
        placement = {} if partition is None else {"partition": partition}
        while True:
            try:
                producer.produce(topic, key=job.key, value=job.to_bytes(), headers=headers,
                                 on_delivery=lambda error, _m: failures.append(error) if error else None,
                                 **placement)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    assert failures == []


def dead_letter(pipeline: Pipeline, jobs: list[Job]) -> None:
    """Send `jobs` (with a header of their own) and let a consumer whose handler fails them
    dead-letter every one (MAX_ATTEMPTS=1)."""
    produce(pipeline, pipeline.topic, [(job, [("trace-id", job.id.encode())], None) for job in jobs])
    failing = pipeline.start("consumer", handler=FAILS, max_attempts=1)
    failing.wait_for("job.dead_lettered", len(jobs), timeout=120)
    assert failing.stop() == 0, failing.tail()


def copies_in(pipeline: Pipeline, total: int) -> list[Message]:
    """The re-driven copies among the `total` messages of the jobs topic."""
    return [m for m in pipeline.read(pipeline.topic, total, timeout=60) if "redrive.count" in headers_of(m)]


def refusal_lines(run: ServiceProcess) -> list[str]:
    """What topic-admin said on stderr besides its JSON log lines."""
    return [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("{")]


# ---- redrive --------------------------------------------------------------------------------

def test_redrive_dry_run_counts_by_error_then_moves_one_kind_which_is_processed_once(
        pipeline: Pipeline, admin: AdminClient) -> None:
    pipeline.ensure_topics(3)
    timeouts = [Job.new(1, seq, {"error": "timeout"}) for seq in range(30)]
    malformed = [Job.new(2, seq, {"error": "malformed"}) for seq in range(20)]
    dead_letter(pipeline, timeouts + malformed)

    dry = run_json(pipeline, "redrive", "--dry-run", "--json")
    assert dry["dry_run"] is True and dry["moved"] == 50 and dry["scanned"] == 50
    assert dry["moved_by_error"] == {TIMEOUT_ERROR: 30, MALFORMED_ERROR: 20}
    assert f"{pipeline.dlq}.redriven" not in admin.list_topics(timeout=10).topics, "a dry run creates nothing"
    described = run_json(pipeline, "describe", "--json")
    jobs_topic = next(t for t in described["topics"] if t["name"] == pipeline.topic)
    assert sum(p["end_offset"] for p in jobs_topic["partitions"]) == 50, "a dry run moves nothing"

    moved = run_json(pipeline, "redrive", "--error-contains", "Timeout", "--json")
    assert (moved["moved"], moved["skipped_by_filter"], moved["dry_run"]) == (30, 20, False)
    assert moved["moved_by_error"] == {TIMEOUT_ERROR: 30}

    copies = copies_in(pipeline, 80)
    originals = {job.id: job for job in timeouts}
    assert sorted(json.loads(m.value() or b"")["id"] for m in copies) == sorted(originals)
    for copy in copies:
        job = originals[json.loads(copy.value() or b"")["id"]]
        headers = headers_of(copy)
        assert copy.key() == job.key.encode() and copy.value() == job.to_bytes()
        assert headers["trace-id"] == job.id.encode(), "original headers are kept"
        assert headers["redrive.count"] == b"1"
        assert headers["redrive.source"] is not None
        assert headers["redrive.source"].startswith(f"{pipeline.dlq}/".encode())
        assert not [name for name in headers if name.startswith("dlq.")]

    worker = pipeline.start("consumer", handler=NOOP)
    worker.wait_for("job.processed", 30, timeout=90)
    assert worker.stop() == 0
    assert sorted(e["id"] for e in worker.events("job.processed")) == sorted(originals), \
        "each moved job processed exactly once, and nothing else"

    rest = run_json(pipeline, "redrive", "--dry-run", "--json")
    assert (rest["moved"], rest["already_redriven"]) == (20, 30)
    assert rest["moved_by_error"] == {MALFORMED_ERROR: 20}


def test_max_redrives_leaves_a_job_that_keeps_failing_in_the_dlq(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(3)
    jobs = [Job.new(1, seq, {"error": "malformed"}) for seq in range(10)]
    produce(pipeline, pipeline.topic, [(job, [], None) for job in jobs])
    failing = pipeline.start("consumer", handler=FAILS, max_attempts=1)  # the handler is still broken
    failing.wait_for("job.dead_lettered", 10, timeout=120)

    assert run_json(pipeline, "redrive", "--json")["moved"] == 10
    failing.wait_for("job.dead_lettered", 20, timeout=120)  # failed again: back in the DLQ
    again = pipeline.read(pipeline.dlq, 20)
    assert sorted(headers_of(m).get("redrive.count") or b"0" for m in again) == [b"0"] * 10 + [b"1"] * 10

    held = run_json(pipeline, "redrive", "--max-redrives", "1", "--json")
    assert (held["moved"], held["left_max_redrives"], held["already_redriven"]) == (0, 10, 10)

    assert run_json(pipeline, "redrive", "--max-redrives", "2", "--json")["moved"] == 10
    failing.wait_for("job.dead_lettered", 30, timeout=120)
    held = run_json(pipeline, "redrive", "--max-redrives", "2", "--json")
    assert (held["moved"], held["left_max_redrives"], held["already_redriven"]) == (0, 10, 20)
    assert failing.stop() == 0
    copies = copies_in(pipeline, 30)
    assert Counter(headers_of(m)["redrive.count"] for m in copies) == {b"1": 10, b"2": 10}


def fill_dlq(pipeline: Pipeline, total: int) -> list[Job]:
    """`total` dead letters in the DLQ, with the headers the consumer writes."""
    jobs = [Job.new(1, seq) for seq in range(total)]
    failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").encode()
    produce(pipeline, pipeline.dlq, [
        (job, [("dlq.error", b"ValueError: bad"), ("dlq.attempts", b"5"),
               ("dlq.original.topic", pipeline.topic.encode()),
               ("dlq.original.partition", str(seq % 3).encode()),
               ("dlq.original.offset", str(seq // 3).encode()), ("dlq.consumer", b"test"),
               ("dlq.failed_at", failed_at)], seq % 3)
        for seq, job in enumerate(jobs)])
    return jobs


def assert_each_once(pipeline: Pipeline, jobs: list[Job]) -> None:
    """The jobs topic holds exactly one committed copy of each job (reading read_committed)."""
    copies = pipeline.read(pipeline.topic, len(jobs), timeout=120)  # fails on any extra message
    ids = Counter(json.loads(m.value() or b"")["id"] for m in copies)
    assert set(ids) == {job.id for job in jobs}
    assert set(ids.values()) == {1}, "no dead letter doubled"
    assert len({headers_of(m)["redrive.source"] for m in copies}) == len(jobs)


def stop_inside_a_transaction(pipeline: Pipeline, run: ServiceProcess) -> None:
    """SIGSTOP `run` at a moment its transaction is open: a partition of the jobs topic has
    records past its last stable offset (read_committed's end), and still has on a second look
    while it is stopped (a commit already on its way would have landed)."""
    committed, everything = (Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": "probe",
                                       "isolation.level": level})
                             for level in ("read_committed", "read_uncommitted"))

    def open_now() -> bool:
        tps = [TopicPartition(pipeline.topic, p) for p in range(3)]
        return any(committed.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                   < everything.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in tps)

    def stopped_inside() -> bool:
        run.signal(signal.SIGSTOP)
        if open_now() and open_now():
            return True
        run.signal(signal.SIGCONT)
        return False
    try:
        wait_until(stopped_inside, 60, "the redrive stopped with its transaction open", poll=0.01)
    finally:
        committed.close()
        everything.close()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_interrupted_redrive_then_a_second_run_moves_every_dead_letter_exactly_once(
        pipeline: Pipeline, signum: signal.Signals) -> None:
    pipeline.ensure_topics(3)
    total = 5000
    jobs = fill_dlq(pipeline, total)

    # Small transactions, so the run is still going when the signal comes.
    first = pipeline.start("topic-admin", "redrive", "--batch-size", "10", "--json")
    first.wait_for("redrive.progress", 5, timeout=90)
    if signum == signal.SIGKILL:
        stop_inside_a_transaction(pipeline, first)  # a crash with a transaction open
    seen_open = datetime.now(UTC)
    first.signal(signum)
    code = first.wait(60)
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert not first.events("redrive.done")
    else:
        assert code == 1, "an interrupted run is not a finished one: exit 1\n" + first.tail()
        summary = json.loads(first.output)
        assert summary["interrupted"] is True and 0 < summary["moved"] < total, summary
    committed_before = max(e["total_moved"] for e in first.events("redrive.progress"))
    assert committed_before < total, "the first run was not interrupted"

    rerun = pipeline.run("topic-admin", "redrive", "--json")
    assert rerun.process.returncode == 0, rerun.tail()
    second = json.loads(rerun.output)
    assert second["moved"] + second["already_redriven"] == total, second
    assert second["already_redriven"] >= committed_before
    aborted = rerun.events("redrive.aborted_earlier")
    looked = datetime.fromisoformat(str(rerun.events("redrive.ledger")[0]["time"]).replace("Z", "+00:00"))
    # The broker itself aborts an abandoned transaction TRANSACTION_TIMEOUT_MS (10 s) after it
    # began (a moment before it was seen open: 2 s of margin): a re-run that looked later (a very
    # loaded machine) may rightly find nothing open.
    if signum == signal.SIGKILL and (looked - seen_open).total_seconds() < TRANSACTION_TIMEOUT_MS / 1000 - 2:
        # the re-run says what it found and aborted, in its own words
        assert len(aborted) == 1 and 1 <= aborted[0]["not_committed"] <= 10, rerun.tail()
        assert "aborted the open transaction of an interrupted earlier re-drive" in aborted[0]["message"]
    elif signum == signal.SIGTERM:
        assert aborted == [], "SIGTERM commits the batch in hand: nothing is left open"

    assert_each_once(pipeline, jobs)
    assert run_json(pipeline, "redrive", "--json")["already_redriven"] == total


def test_a_broker_restart_during_a_redrive_loses_and_doubles_nothing(
        make_kafka_cluster: Callable[..., LocalKafkaCluster], topic_name: str) -> None:
    cluster = make_kafka_cluster(nodes=1)  # a broker of this test's own, to kill
    line = Pipeline(cluster.bootstrap_servers, topic_name, f"{topic_name}.dlq", f"group-{topic_name}")
    try:
        line.ensure_topics(3)
        jobs = fill_dlq(line, 3000)
        first = line.start("topic-admin", "redrive", "--batch-size", "10", "--json", kafka_wait_timeout_s=60)
        first.wait_for("redrive.progress", 5, timeout=90)
        cluster.kill_node(0)  # SIGKILL: a crash, in the middle of a transaction
        cluster.start_node(0)
        # README: the run retries through a broker restart; it exits non-zero only when Kafka
        # stays away longer than KAFKA_WAIT_TIMEOUT_S (60 s here; the restart takes seconds).
        assert first.wait(180) == 0, f"redrive gave up on a broker restart:\n{first.tail()}"
        assert json.loads(first.output)["moved"] == len(jobs)
        assert_each_once(line, jobs)
    finally:
        for service in line.started:
            service.kill()


def test_dead_letters_are_listed_shown_and_re_driven_one_by_one_at_a_rate(pipeline: Pipeline) -> None:
    """Look before re-driving: `dlq list` with filters (case-insensitive text, a regular
    expression, where the job came from, attempts), `dlq show` of one, `redrive --at` of one,
    and `--rate` spreading a re-drive over time."""
    pipeline.ensure_topics(3)
    timeouts = [Job.new(1, seq, {"error": "timeout"}) for seq in range(12)]
    malformed = [Job.new(2, seq, {"error": "malformed"}) for seq in range(3)]
    dead_letter(pipeline, timeouts + malformed)

    def listed(*args: str) -> list[dict[str, Any]]:
        run = pipeline.run("topic-admin", "dlq", "list", "--json", *args)
        assert run.process.returncode == 0, run.tail()
        return [json.loads(line) for line in run.output.splitlines() if line.startswith("{")]

    everything = listed()
    assert len(everything) == 15 and not any(row["redriven"] for row in everything)
    assert {row["error"] for row in listed("--error-contains", "UPSTREAM TIMED")} == {TIMEOUT_ERROR}
    assert len(listed("--error-regex", r"^valueerror: malformed")) == 3
    assert len(listed("--limit", "4")) == 4
    one = next(row for row in everything if row["error"] == MALFORMED_ERROR)
    assert listed("--original-partition", str(one["original_partition"]), "--original-offset",
                  str(one["original_offset"])) == [one]
    assert {row["attempts"] for row in everything} == {1}
    assert listed("--attempts", "2") == []

    shown = pipeline.run("topic-admin", "dlq", "show", one["at"], "--json")
    assert shown.process.returncode == 0, shown.tail()
    detail = json.loads(shown.output)
    headers = dict(detail["headers"])
    assert detail["error"] == MALFORMED_ERROR and headers["dlq.error"] == MALFORMED_ERROR
    assert headers["trace-id"] == detail["body"]["id"], "the job's own headers are kept"
    assert detail["body"]["payload"] == {"error": "malformed"}
    text = pipeline.run("topic-admin", "dlq", "show", one["at"]).output
    assert MALFORMED_ERROR in text and "trace-id" in text
    nowhere = pipeline.run("topic-admin", "dlq", "show", "0:99999")
    assert nowhere.process.returncode == 2 and "no dead letter there" in refusal_lines(nowhere)[0]

    single = run_json(pipeline, "redrive", "--at", one["at"], "--json")
    assert (single["moved"], single["scanned"]) == (1, 1)
    assert [row["redriven"] for row in listed("--at", one["at"])] == [True]

    started = time.monotonic()
    paced = run_json(pipeline, "redrive", "--error-regex", "timeout", "--rate", "5", "--json")
    took = time.monotonic() - started
    assert paced["moved"] == 12
    assert took >= 11 / 5, f"12 dead letters at 5/s took {took:.1f} s"  # the first goes at once
    copies = copies_in(pipeline, 15 + 13)
    assert len(copies) == 13, "each moved once"


# ---- offsets --------------------------------------------------------------------------------

def process_all(pipeline: Pipeline, count: int) -> list[dict[str, Any]]:
    """Run a consumer until it processed `count` jobs, stop it, return what it processed."""
    worker = pipeline.start("consumer", handler=NOOP)
    worker.wait_for("job.processed", count, timeout=90)
    assert worker.stop() == 0
    return worker.events("job.processed")


def committed(pipeline: Pipeline) -> dict[int, int | None]:
    shown = run_json(pipeline, "offsets", "--json")
    return {p["partition"]: p["committed"] for p in shown["partitions"]}


def all_committed(pipeline: Pipeline, jobs: int) -> dict[int, int | None] | None:
    """The committed offsets once they add up to `jobs` (a consumer commits about every second)."""
    offsets = committed(pipeline)
    return offsets if sum(o or 0 for o in offsets.values()) == jobs else None


def test_offsets_dry_run_changes_nothing_execute_replays_and_shift_skips_exactly_n(
        pipeline: Pipeline) -> None:
    pipeline.ensure_topics(3)
    for partition in range(3):
        pipeline.send([Job.new(1, partition * 10 + seq) for seq in range(10)], partition=partition)
    first = process_all(pipeline, 30)
    assert committed(pipeline) == {0: 10, 1: 10, 2: 10}

    dry = run_json(pipeline, "offsets", "--to-earliest", "--json")
    assert dry["executed"] is False and dry["replayed"] == 30
    assert [(p["current"], p["new"]) for p in dry["partitions"]] == [(10, 0)] * 3
    assert committed(pipeline) == {0: 10, 1: 10, 2: 10}, "a dry run changes nothing"

    applied = run_json(pipeline, "offsets", "--to-earliest", "--execute", "--json")
    assert applied["executed"] is True and applied["replayed"] == 30
    assert committed(pipeline) == {0: 0, 1: 0, 2: 0}
    replayed = process_all(pipeline, 30)
    assert sorted(e["id"] for e in replayed) == sorted(e["id"] for e in first), "every job replayed once"

    run_json(pipeline, "offsets", "--to-earliest", "--execute", "--json")
    shifted = run_json(pipeline, "offsets", "--shift-by", "4", "--execute", "--json")
    assert shifted["skipped"] == 12
    rest = process_all(pipeline, 18)
    assert len(rest) == 18 and all(e["offset"] >= 4 for e in rest), "exactly 4 skipped per partition"

    one = run_json(pipeline, "offsets", "--shift-by", "-3", "--partition", "1", "--execute", "--json")
    assert [(p["partition"], p["current"], p["new"]) for p in one["partitions"]] == [(1, 10, 7)]
    assert committed(pipeline) == {0: 10, 1: 7, 2: 10}


def test_offsets_export_to_a_file_and_come_back_from_it_and_position_a_new_group(
        pipeline: Pipeline, tmp_path: Path) -> None:
    """kafka-consumer-groups.sh's --export / --from-file: save where a group is, move it, come
    back; and a group that does not exist yet is positioned before its consumers first start."""
    pipeline.ensure_topics(3)
    for partition in range(3):
        pipeline.send([Job.new(1, partition * 10 + seq) for seq in range(10)], partition=partition)

    # A new group starts at offset 7 of each partition: its first consumer skips 0..6.
    saved = tmp_path / "start.csv"
    saved.write_text("".join(f"{pipeline.topic},{p},7\n" for p in range(3)))
    created = run_json(pipeline, "offsets", "--from-file", str(saved), "--execute", "--json")
    assert created["executed"] is True and created["skipped"] == 21
    assert committed(pipeline) == {0: 7, 1: 7, 2: 7}
    first = process_all(pipeline, 9)
    assert sorted(e["offset"] for e in first) == [7, 7, 7, 8, 8, 8, 9, 9, 9]

    # Save where the group is, replay everything, then come back to the saved place.
    here = tmp_path / "here.csv"
    current = run_json(pipeline, "offsets", "--to-current", "--export", str(here), "--json")
    assert current["changed"] == 0
    assert sorted(here.read_text().splitlines()) == [f"{pipeline.topic},{p},10" for p in range(3)]
    run_json(pipeline, "offsets", "--to-earliest", "--execute", "--json")
    assert committed(pipeline) == {0: 0, 1: 0, 2: 0}
    back = run_json(pipeline, "offsets", "--from-file", str(here), "--execute", "--json")
    assert back["skipped"] == 30
    assert committed(pipeline) == {0: 10, 1: 10, 2: 10}

    saved.write_text(f"{pipeline.topic},0,5\nsomething-else,1,5\n")
    bad = pipeline.run("topic-admin", "offsets", "--from-file", str(saved), "--execute")
    assert bad.process.returncode == 2 and "line 2: topic 'something-else'" in refusal_lines(bad)[0]
    assert committed(pipeline) == {0: 10, 1: 10, 2: 10}


def test_offsets_are_not_moved_while_the_group_has_a_member(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(3)
    pipeline.send([Job.new(1, seq) for seq in range(6)])
    worker = pipeline.start("consumer", handler=NOOP)
    worker.wait_for("job.processed", 6, timeout=90)
    before = wait_until(lambda: all_committed(pipeline, 6), 60, "the member's commits of all 6 jobs")

    refused = pipeline.run("topic-admin", "offsets", "--to-earliest", "--execute")
    assert refused.process.returncode == 2, refused.tail()
    lines = refusal_lines(refused)
    assert len(lines) == 1 and "active member" in lines[0] and pipeline.group in lines[0], refused.stderr
    assert refused.output == ""

    dry = pipeline.run("topic-admin", "offsets", "--to-earliest")  # a dry run still shows the plan
    assert dry.process.returncode == 0 and dry.events("offsets.group_active")
    assert worker.stop() == 0
    assert committed(pipeline) == before


def test_bad_requests_exit_2_with_one_line_and_change_nothing(pipeline: Pipeline,
                                                               admin: AdminClient) -> None:
    no_dlq = pipeline.run("topic-admin", "redrive")  # no topics yet
    assert no_dlq.process.returncode == 2
    lines = refusal_lines(no_dlq)
    assert len(lines) == 1 and "DLQ_TOPIC" in lines[0] and "no such topic" in lines[0], no_dlq.stderr
    existing = set(admin.list_topics(timeout=10).topics)
    assert not {pipeline.topic, pipeline.dlq, f"{pipeline.dlq}.redriven"} & existing, "nothing created"

    pipeline.ensure_topics(3)
    no_group = pipeline.run("topic-admin", "offsets")  # showing a group that does not exist
    assert no_group.process.returncode == 2
    assert "no such group" in refusal_lines(no_group)[0]

    for args in (["offsets", "--partition", "7"], ["redrive", "--frobnicate"],
                 ["redrive", "--since", "soon"]):
        bad = pipeline.run("topic-admin", *args)
        assert bad.process.returncode == 2, (args, bad.tail())
        assert len(refusal_lines(bad)) == 1 and bad.output == "", (args, bad.stderr)
    assert f"{pipeline.dlq}.redriven" not in admin.list_topics(timeout=10).topics


# ---- describe --watch -----------------------------------------------------------------------

def json_lines(run: ServiceProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.output.splitlines()
            if line.startswith("{") and line.endswith("}")]


def test_watch_refreshes_with_rates_and_exits_0_on_sigint(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(3)
    watch = pipeline.start("topic-admin", "describe", "--watch", "--interval", "0.3", "--json")
    wait_until(lambda: len(json_lines(watch)) >= 2, 60, "two refreshes")
    pipeline.send([Job.new(1, seq) for seq in range(30)])

    def rate_seen() -> bool:
        return any(sum(p["in_per_s"] or 0 for p in line["partitions"] if p["topic"] == pipeline.topic) > 0
                   for line in json_lines(watch))

    wait_until(rate_seen, 60, "a refresh that shows jobs coming in")
    watch.signal(signal.SIGINT)
    assert watch.wait(30) == 0, watch.tail()
    lines = json_lines(watch)
    assert {p["topic"] for p in lines[-1]["partitions"]} == {pipeline.topic, pipeline.dlq}
    assert lines[-1]["total_lag"] == 30
    assert watch.events("service.stopped")[0]["refreshes"] == len(lines)

    table = pipeline.start("topic-admin", "describe", "--watch", "--interval", "0.3")
    wait_until(lambda: table.output.count("lag trend") >= 2, 60, "two tables")
    table.signal(signal.SIGINT)
    assert table.wait(30) == 0, table.tail()
    # No consumer has joined: the group does not exist yet, and the watch says so (it goes on).
    assert f"group {pipeline.group}: no such group yet" in table.output
    assert lines[-1]["group_exists"] is False
