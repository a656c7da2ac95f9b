"""Delayed jobs, the delay tiers and non-blocking retries on a real broker (issue 23).

One test runs every scenario of the issue at once, so that the long wait (75 s: the 1 min tier,
then the 5 s one) is paid once (the test-time budget): a member parks 1,000 jobs and jobs due
in 2 s, 20 s and 75 s, and is
SIGKILLed; a second member, started at once, runs them all once due; meanwhile a job whose
`not_before` is not a time, and a job whose first attempt fails with a 60 s back-off (the jobs
behind it on its key run meanwhile). Each attempt's start time is recorded by the handler
(tests.handlers:timed) and compared with the job's due time: none starts early, none is lost.
"""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobpipe.job import Job
from tests.integration.conftest import Pipeline
from tests.service_runner import wait_until

PARKED = 1000
FAST_SESSION = "session.timeout.ms=6000,heartbeat.interval.ms=1000"  # a killed member is replaced in 6 s
BACKOFF_MS = 60_000


def starts(record: Path) -> dict[str, list[float]]:
    """Each job id's attempt start times (epoch seconds), from the handler's record."""
    found: dict[str, list[float]] = defaultdict(list)
    if record.exists():
        for line in record.read_text().splitlines():
            what, job_id, at = line.split()
            if what == "start":
                found[job_id].append(float(at))
    return found


def due_in(seconds: float, key: str, payload: object = None) -> Job:
    return Job.create(payload, key=key, not_before=datetime.now(UTC) + timedelta(seconds=seconds))


def test_delayed_jobs_run_after_their_time_never_before_none_lost_when_a_member_dies(
        pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics()
    record = tmp_path / "starts.txt"
    member = {"handler": "tests.handlers:timed", "test_record_file": record, "log_level": "DEBUG",
              "kafka_consumer_extra_config": FAST_SESSION, "retry_backoff_initial_ms": BACKOFF_MS,
              "retry_backoff_max_ms": BACKOFF_MS, "max_attempts": 3}
    # Jobs due in 2 s, 20 s and 75 s, and 1,000 due in 30 s, sent before the first member
    # starts: held (2 s) or parked (in the 5 s and 1 min tiers, hop after hop: 75 s goes to the
    # 1 min tier, then the 5 s one); the member dies while they wait.
    timely = {seconds: [due_in(seconds, f"due-{seconds}-{n}") for n in range(3)] for seconds in (2, 20, 75)}
    parked = [due_in(30, f"parked-{n % 50}") for n in range(PARKED)]
    pipeline.send([*(job for jobs in timely.values() for job in jobs), *parked])
    first = pipeline.start("consumer", **member)
    first.wait_for("job.parked", PARKED + 6, timeout=60)
    assert {e["tier"] for e in first.events("job.parked") if e["key"].startswith("due-75-")} == {"1m"}
    first.signal(signal.SIGKILL)
    second = pipeline.start("consumer", **member)

    # Meanwhile: an invalid not_before; a retry with a 60 s back-off (run by the second member).
    retried = Job.create({"fail_times": 1}, key="retried")
    behind = [Job.create({"n": n}, key="retried") for n in range(3)]
    invalid = json.dumps({"id": "bad-time", "created_at": "2026-01-01T00:00:00Z", "key": "bad",
                          "not_before": "next tuesday"}).encode()
    pipeline.send([retried, *behind, invalid])

    # The tiers are visible while jobs wait in them.
    shown = pipeline.run("topic-admin", "describe", "--json")
    tiers = {tier["tier"]: tier for tier in json.loads(shown.output)["tiers"]}
    assert set(tiers) == {"5s", "1m", "10m", "1h"}
    assert sum(tier["waiting"] for tier in tiers.values()) > 0, tiers

    # The invalid one is dead-lettered at once, naming the field.
    (letter,) = pipeline.read(pipeline.dlq, 1, timeout=60)
    reason = dict(letter.headers() or [])["dlq.error"].decode()
    assert reason.startswith("not a job: not_before: "), reason

    everything = [*parked, *(job for jobs in timely.values() for job in jobs), retried, *behind]
    wait_until(lambda: all(job.id in starts(record) for job in everything) and
               len(starts(record)[retried.id]) >= 2, 240, "every job run (the retry twice)")

    ran = starts(record)
    for job in everything:
        if job.not_before is not None:
            assert min(ran[job.id]) >= job.not_before.timestamp(), f"{job.key} started before its time"
    retry_events = [e for e in second.events("job.retry") if e["id"] == retried.id]
    assert len(retry_events) == 1, retry_events
    first_try, second_try = sorted(ran[retried.id])[:2]
    assert second_try >= first_try + retry_events[0]["delay_ms"] / 1000, "the retry came back early"
    assert all(max(ran[job.id]) < second_try for job in behind), \
        "the key's later jobs did not run while the retry waited"
    lost = [job.key for job in everything if job.id not in ran]
    assert not lost
    twice = sum(len(ran[job.id]) > 1 for job in parked)
    assert twice <= PARKED // 2, f"{twice} parked jobs ran twice"  # at-least-once after a SIGKILL
    second.stop()
    first.wait(5)

