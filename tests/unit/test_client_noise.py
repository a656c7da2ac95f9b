"""A Kafka client whose broker is away (issue 22, defect 8): each cause is logged once per
interval with a count (not once per failed connection, and not twice: librdkafka's line and
the error callback are one cause); the member tells a broker that is down (keep the client,
not ready) from a client left with no broker at all (replace it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer_service import worker
from jobpipe.logs import Repeats, client_problem
from tests.unit.consumer_stand_ins import JsonLog, member_parts

LOG_LINE = ("FAIL [rdkafka#consumer-1] [thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Connect to "
            "ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)")
ERROR_CB = ("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused "
            "(after 3ms in state CONNECT)")


def test_librdkafkas_line_and_the_error_callback_are_one_cause() -> None:
    assert client_problem(LOG_LINE) == client_problem(ERROR_CB)
    assert client_problem(ERROR_CB) != client_problem(ERROR_CB.replace("9092", "9093"))


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=60), st.floats(0.5, 3))
def test_each_cause_is_written_at_most_once_per_interval_and_nothing_is_uncounted(
        reports: list[tuple[str, float]], interval: float) -> None:
    repeats = Repeats(interval)
    now = 0.0
    written: dict[str, list[float]] = {}
    counted = 0
    for cause, step in reports:
        now += step
        held = repeats.admit(cause, now)
        if held is not None:
            written.setdefault(cause, []).append(now)
            counted += 1 + held
    for cause, times in written.items():
        assert all(later - earlier >= interval for earlier, later in pairwise(times)), cause
    held_at_end = {cause: repeats.admit(cause, now + interval + 1) for cause in written}
    assert counted + sum(n or 0 for n in held_at_end.values()) == len(reports), "every report counted once"
    assert {cause for cause, _ in reports} == set(written), "the first of each cause is written"


@pytest.fixture
def member(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    settings, handler = member_parts(lambda job: None)
    one = worker.ConsumerWorker(1, settings, handler, threading.Event(), threading.Event())
    yield one
    one._executor.close(1.0)


def broker(state: str, source: str = "learned") -> dict[str, object]:
    return {"source": source, "state": state}


def test_a_broker_that_is_down_keeps_the_client_and_makes_the_member_not_ready(member: Any) -> None:
    log = JsonLog()
    try:
        member.joined.set()  # assigned
        coordinator = broker("DOWN", "logical")
        for now, state in enumerate(["INIT", "CONNECT", "DOWN", "INIT"] * 10):
            member._watch_brokers([broker(state), coordinator], float(now))
            assert member._stranded_since is None, "a broker that is down is still there"
            assert not member.joined.is_set(), "/readyz: not ready while no broker answers"
        member._watch_brokers([broker("UP"), coordinator], 41.0)
        assert member.joined.is_set(), "ready again once a broker answers"
        assert len(log.events("kafka.unreachable")) == 1 and len(log.events("kafka.reachable")) == 1
    finally:
        log.restore()


def test_a_client_left_without_any_broker_is_stranded(member: Any) -> None:
    member._watch_brokers([broker("INIT", "logical")], 5.0)
    assert member._stranded_since == 5.0
    member._watch_brokers([broker("INIT", "logical")], 7.0)
    assert member._stranded_since == 5.0, "counted from when it was first seen"
    member._watch_brokers([broker("CONNECT")], 8.0)
    assert member._stranded_since is None


def test_a_member_not_yet_ready_is_not_made_ready_by_a_broker(member: Any) -> None:
    member._watch_brokers([broker("UP")], 1.0)
    assert not member.joined.is_set(), "ready means joined: the broker answering is not enough"
