"""The share-mode decisions (consumer_service/share_decisions.py) against a model of the
broker's share-group rules: a record comes back when its lock ends or it is released, and is
dropped without a word after `share.delivery.count.limit` deliveries. Whatever the handler does
(succeed, fail, be slow, kill the process), every job must end accepted or dead-lettered before
the broker gives up on it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer_service.share_decisions import (
    GroupLimits,
    Verdict,
    after_attempt,
    after_dead_letter,
    before_start,
    on_delivery,
)
from jobpipe.retry import RetryPolicy

Outcome = tuple[str, float]  # ("ok" | "fail" | "crash", seconds the attempt took)

outcomes = st.lists(st.tuples(st.sampled_from(["ok", "fail", "crash"]),
                              st.floats(0, 40, allow_nan=False)), max_size=60)


def deliver_until_settled(limits: GroupLimits, policy: RetryPolicy,
                          script: list[Outcome]) -> tuple[str, int, list[int]]:
    """Play one record through the broker's deliveries. Returns how it ended ("accepted",
    "dead_lettered" or "dropped" by the broker), the delivery it ended on, and the handler calls
    made on each delivery."""
    attempts = iter(script)
    last = limits.last_delivery(policy.max_attempts)
    calls: list[int] = []
    for delivery in range(1, limits.delivery_limit + 1):
        verdict, why = on_delivery(True, delivery, last)
        if verdict is Verdict.DEAD_LETTER:
            assert why and str(delivery) in why
            return "dead_lettered", delivery, calls
        calls.append(0)
        now = 0.0
        lock_ends = limits.lock_ends(now)
        while True:
            kind, took = next(attempts, ("ok", 0.0))
            calls[-1] += 1
            if kind == "crash":  # the process dies: the lock ends and the broker redelivers
                break
            now += took
            retry_at = now + policy.delay_s(calls[-1])
            verdict = after_attempt(kind == "ok", policy.gives_up_after(calls[-1]), retry_at, lock_ends,
                                    stopping=False)
            if verdict is Verdict.ACCEPT:
                return "accepted", delivery, calls
            if verdict is Verdict.DEAD_LETTER:
                return "dead_lettered", delivery, calls
            if verdict is Verdict.RELEASE:
                break
            assert verdict is Verdict.RUN and retry_at < lock_ends
            now = retry_at
    return "dropped", limits.delivery_limit, calls


@given(delivery_limit=st.integers(2, 10), lock_s=st.floats(1, 60), max_attempts=st.integers(1, 10),
       backoff_s=st.floats(0.01, 20), script=outcomes)
def test_no_job_is_left_for_the_broker_to_drop(delivery_limit: int, lock_s: float, max_attempts: int,
                                                backoff_s: float, script: list[Outcome]) -> None:
    limits = GroupLimits(lock_s=lock_s, delivery_limit=delivery_limit)
    policy = RetryPolicy(initial_s=backoff_s, max_s=backoff_s * 8, max_attempts=max_attempts)
    ending, delivery, calls = deliver_until_settled(limits, policy, script)
    assert ending != "dropped"
    assert delivery <= delivery_limit
    assert all(n <= max_attempts for n in calls), "never more than MAX_ATTEMPTS calls per delivery"
    assert len(calls) <= max_attempts, "never more than MAX_ATTEMPTS deliveries run the handler"


@given(script=outcomes)
def test_a_job_that_only_succeeds_is_accepted_on_its_first_delivery(script: list[Outcome]) -> None:
    ok = [("ok", took) for _, took in script] or [("ok", 0.0)]
    assert deliver_until_settled(GroupLimits(), RetryPolicy(), ok)[:2] == ("accepted", 1)


def test_a_handler_that_kills_the_process_every_time_ends_dead_lettered() -> None:
    crashes = [("crash", 0.0)] * 20
    ending, delivery, calls = deliver_until_settled(GroupLimits(delivery_limit=5),
                                                    RetryPolicy(max_attempts=2), crashes)
    assert (ending, delivery, calls) == ("dead_lettered", 3, [1, 1])


@given(gives_up=st.booleans(), now=st.floats(0, 100), delay=st.floats(0, 100), stopping=st.booleans())
def test_a_failed_attempt_is_retried_here_only_inside_the_lock_and_never_while_stopping(
        gives_up: bool, now: float, delay: float, stopping: bool) -> None:
    lock_ends = GroupLimits(lock_s=30).lock_ends(0.0)
    verdict = after_attempt(False, gives_up, now + delay, lock_ends, stopping)
    if gives_up:
        assert verdict is Verdict.DEAD_LETTER
    elif verdict is Verdict.RUN:
        assert now + delay < lock_ends and not stopping
    else:
        assert verdict is Verdict.RELEASE


def test_a_record_that_is_not_a_job_is_dead_lettered_and_accepted_only_once_the_dlq_holds_it() -> None:
    assert on_delivery(False, 1, 4)[0] is Verdict.DEAD_LETTER
    assert after_dead_letter(published=True) is Verdict.ACCEPT
    assert after_dead_letter(published=False) is Verdict.RELEASE


def test_the_lock_a_member_gives_itself_leaves_slack_before_the_brokers() -> None:
    assert GroupLimits(lock_s=30).lock_ends(100.0) == 120.0
    assert GroupLimits(delivery_limit=5).last_delivery(max_attempts=10) == 5
    assert GroupLimits(delivery_limit=5).last_delivery(max_attempts=2) == 3


@given(now=st.floats(0, 100), stopping=st.booleans())
def test_a_job_starts_only_inside_its_share_of_the_lock(now: float, stopping: bool) -> None:
    lock_ends = GroupLimits(lock_s=30).lock_ends(0.0)
    verdict = before_start(now, lock_ends, stopping)
    assert verdict is (Verdict.RUN if now < lock_ends and not stopping else Verdict.RELEASE)
