"""The stop's one budget (issue 22, defect 10): SHUTDOWN_TIMEOUT_S counted once, every phase
(work, commit, close, dead-letter flush) drawing from it; a consumer whose coordinator does
not answer and whose dead letters are never acknowledged still stops within the budget, and
never closes its client while a commit of it is still running."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer_service import member_producer, worker
from jobpipe.shutdown import PHASES, ShutdownBudget
from tests.unit.consumer_stand_ins import member_parts


@given(st.floats(0, 1e6), st.floats(0.001, 3600), st.floats(0, 4000))
def test_every_phase_ends_in_order_within_the_budget(started: float, total: float, after: float) -> None:
    budget = ShutdownBudget(started, total)
    ends = [budget.ends(phase) for phase in PHASES]
    assert ends == sorted(ends), "each phase ends after the one before it"
    assert started < ends[0] and ends[-1] <= started + total, "all of them within SHUTDOWN_TIMEOUT_S"
    assert ends[0] - started >= 0.75 * total, "most of it for finishing the work in hand"
    now = started + after
    for phase in PHASES:
        assert budget.left(phase, now) == max(0.0, budget.ends(phase) - now)


class UnansweredCoordinator:
    """A consumer client whose group coordinator never answers a commit (until the test ends);
    it records a close() made while a commit was still running."""

    release = threading.Event()

    def __init__(self, config: dict[str, Any]) -> None:
        self.committing = 0
        self.closed_while_committing = False

    def subscribe(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def commit(self, asynchronous: bool = False) -> None:
        self.committing += 1
        try:
            self.release.wait(30)
        finally:
            self.committing -= 1

    def close(self) -> None:
        self.closed_while_committing |= self.committing > 0
        self.release.wait(30)

    def poll(self, timeout: float = 0) -> None:
        return None


class UnacknowledgedDeadLetters:
    """A dead-letter producer with one dead letter the broker never acknowledges."""

    def __init__(self, config: dict[str, Any]) -> None:
        return None

    def flush(self, timeout: float = 0) -> int:
        time.sleep(timeout)
        return 1


@pytest.mark.parametrize("timeout_s", [0.5, 2.0])
def test_a_consumer_stops_within_shutdown_timeout_s_and_never_closes_during_a_commit(
        monkeypatch: pytest.MonkeyPatch, timeout_s: float) -> None:
    monkeypatch.setattr(UnansweredCoordinator, "release", threading.Event())
    monkeypatch.setattr(worker, "Consumer", UnansweredCoordinator)
    monkeypatch.setattr(member_producer, "Producer", UnacknowledgedDeadLetters)
    settings, handler = member_parts(lambda job: None, shutdown_timeout_s=timeout_s)
    stop = threading.Event()
    member = worker.ConsumerWorker(1, settings, handler, stop, threading.Event())
    try:
        stop.set()
        started = time.monotonic()
        member.run()
        took = time.monotonic() - started
        # Before: 0.8 x T for the commit, then close() on another thread during the commit,
        # 0.05 x T more for it, then max(0.5 s, 0.1 x T) for the dead letters: 2.2 s for T = 2.
        # The budget ends at 0.95 x T (the rest is the exit's); 50 ms of slack for a loaded machine.
        assert took <= timeout_s + 0.05, f"stopped after {took:.2f} s of {timeout_s} s"
        assert not member._consumer.closed_while_committing
    finally:
        UnansweredCoordinator.release.set()
