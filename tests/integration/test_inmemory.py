"""The in-memory service: the seed's defaults, backpressure, retries and graceful stop."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tests.service_runner import ServiceProcess, run_to_end


def test_defaults_process_20_jobs_from_2_producers_and_exit_0() -> None:
    run = run_to_end("inmemory", timeout=60)
    assert run.process.returncode == 0, run.tail()
    produced = run.events("job.produced")
    done = run.events("job.processed")
    assert {e["key"] for e in produced} == {f"p{w}-m{s}" for w in (1, 2) for s in range(10)}
    assert Counter(e["id"] for e in done) == Counter({e["id"]: 1 for e in produced})
    assert {e["consumer"] for e in done} <= {"consumer 1", "consumer 2"}
    stopped = run.events("service.stopped")[-1]
    assert (stopped["produced"], stopped["processed"], stopped["abandoned"]) == (20, 20, 0)
    assert run.events("service.started")[0]["config"]["queue_capacity"] == 100


def test_a_full_queue_blocks_the_producers_and_every_job_still_completes() -> None:
    capacity, consumers = 1, 2
    run = run_to_end("inmemory", timeout=60, queue_capacity=capacity, consumers=consumers,
                     handler="tests.handlers:slow")
    assert run.process.returncode == 0, run.tail()
    ahead = peak = 0
    for record in run.events():  # in the order they happened
        if record["event"] == "job.produced":
            ahead += 1
        elif record["event"] == "job.processed":
            ahead -= 1
        peak = max(peak, ahead)
    # queued + one in each consumer's hands: never more, so producers waited for room
    assert peak <= capacity + consumers, peak
    assert len(run.events("job.processed")) == 20


def test_retries_then_dead_letters_use_the_same_policy_as_the_consumer() -> None:
    recovering = run_to_end("inmemory", timeout=60, handler="tests.handlers:fails_first_attempt",
                            producers=1, jobs_per_producer=3, max_attempts=2,
                            retry_backoff_initial_ms=200, retry_backoff_max_ms=200)
    assert recovering.process.returncode == 0, recovering.tail()
    retries = recovering.events("job.retry")
    assert [e["attempt"] for e in retries] == [1, 1, 1], "each job failed its first attempt once"
    assert all(100 <= e["delay_ms"] <= 200 for e in retries), "equal jitter: half to all of 200 ms"
    done = recovering.events("job.processed")
    assert sorted(e["id"] for e in done) == sorted(e["id"] for e in retries)
    assert all(e["attempt"] == 2 for e in done), "succeeded on the retry"
    assert recovering.events("job.dead_lettered") == []

    failing = run_to_end("inmemory", timeout=60, handler="tests.handlers:always_fails",
                         producers=1, jobs_per_producer=2, max_attempts=3, retry_backoff_initial_ms=10)
    assert failing.process.returncode == 0, "every job accounted for: dead-lettered"
    assert len(failing.events("job.retry")) == 4
    letters = failing.events("job.dead_lettered")
    assert len(letters) == 2 and all(e["attempts"] == 3 for e in letters)


def test_sigterm_stops_producing_drains_the_queue_and_exits_0() -> None:
    with ServiceProcess("inmemory", jobs_per_producer=0, handler="tests.handlers:slow",
                        queue_capacity=10) as run:
        run.wait_for("job.processed", 10, timeout=30)
        assert run.stop(timeout=20) == 0, run.tail()
    stopped = run.events("service.stopped")[-1]
    assert stopped["abandoned"] == 0
    assert stopped["processed"] == stopped["produced"] == len(run.events("job.processed"))


def test_sigterm_with_a_full_queue_and_a_slow_handler_stops_within_the_budget() -> None:
    """Each job takes 20 s, so no room comes in the queue for a long while: the shutdown budget
    counts from the signal, not from when the consumers' end markers fit in (jobs abandoned:
    exit 1)."""
    budget = 3.0
    with ServiceProcess("inmemory", producers=1, consumers=1, jobs_per_producer=0, queue_capacity=5,
                        handler="tests.handlers:paced", test_handler_sleep_ms=20_000,
                        shutdown_timeout_s=budget) as run:
        run.wait_for("job.produced", count=6, timeout=60)  # queue full, one job in the handler
        signalled = time.monotonic()
        exit_code = run.stop(timeout=budget + 30)
        took = time.monotonic() - signalled
    assert took <= budget + 5, f"stopped {took:.1f} s after SIGTERM:\n{run.tail()}"
    assert exit_code == 1, run.tail()
    stopped = run.events("service.stopped")[-1]
    assert stopped["abandoned"] == stopped["produced"] - stopped["processed"] > 0, stopped


def test_an_async_def_handler_is_awaited_and_does_its_work(tmp_path: Path) -> None:
    record = tmp_path / "done.txt"
    run = run_to_end("inmemory", timeout=60, handler="tests.handlers:async_record", test_record_file=record)
    assert run.process.returncode == 0, run.tail()
    assert sorted(record.read_text().split()) == sorted(e["id"] for e in run.events("job.produced"))
    assert len(run.events("job.processed")) == 20
