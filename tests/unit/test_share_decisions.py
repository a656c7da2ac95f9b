"""The share-mode decisions (consumer_service/share_decisions.py) against a model of the
broker's share-group rules: a record comes back when its lock ends or it is released, and is
dropped without a word after `share.delivery.count.limit` deliveries. Whatever the handler does
(succeed, fail, be slow, kill the process), every job must end accepted or dead-lettered before
the broker gives up on it; a dead letter that fails (the DLQ does not take it, the member is
killed while it goes out) never costs the job unless it fails on two deliveries, the last one
by a crash."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from consumer_service.share_decisions import (
    GroupLimits,
    Verdict,
    after_attempt,
    after_publish,
    before_start,
    on_delivery,
    parking,
)
from jobpipe.delays import release, tiers_of
from jobpipe.retry import RetryPolicy

Outcome = tuple[str, float]  # ("ok" | "fail" | "crash", seconds the attempt took)

outcomes = st.lists(st.tuples(st.sampled_from(["ok", "fail", "crash"]),
                              st.floats(0, 40, allow_nan=False)), max_size=60)
# what publishing a dead letter does: the DLQ takes it, answers an error after that long, or
# the member is killed while it goes out
dead_letter_outcomes = st.lists(st.tuples(st.sampled_from(["ok", "fail", "crash"]),
                                          st.floats(0, 40, allow_nan=False)), max_size=30)


class Played:
    """One record's deliveries, as played by deliver_until_settled."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # handler calls on each delivery that ran it
        self.dead_letter_failures: list[tuple[int, str]] = []  # (delivery, "fail"/"crash") that cost it


def publish_dead_letter(limits: GroupLimits, policy: RetryPolicy, delivery: int, now: float, *,
                        tries: Iterator[Outcome], played: Played) -> bool:
    """Publish as the member decides: True once the DLQ holds the job; False when the record
    goes back to the broker (released, or its member killed)."""
    failures = 0
    while True:
        kind, took = next(tries, ("ok", 0.0))
        if kind == "crash":
            played.dead_letter_failures.append((delivery, "crash"))
            return False
        now += took
        if kind == "ok":
            return True
        failures += 1
        retry_at = now + policy.delay_s(min(failures, 20))
        verdict = after_publish(False, retry_at, limits.lock_ends(0.0), limits.is_last(delivery),
                                stopping=False)
        if verdict is Verdict.RELEASE:
            assert not limits.is_last(delivery), "released on its last delivery, the broker drops it"
            played.dead_letter_failures.append((delivery, "fail"))
            return False
        assert verdict is Verdict.PUBLISH
        assert limits.is_last(delivery) or retry_at < limits.lock_ends(0.0), "tried again inside the lock"
        now = retry_at


def deliver_until_settled(limits: GroupLimits, policy: RetryPolicy, script: list[Outcome],
                          dead_letters: list[Outcome] | None = None,
                          played: Played | None = None) -> tuple[str, int, list[int]]:
    """Play one record through the broker's deliveries, as the member decides: start only by
    `start_by` (expecting an attempt to last as long as the one before), retry while that
    allows, else release. Returns how it ended ("accepted", "dead_lettered" or "dropped" by the
    broker), the delivery it ended on, and the handler calls made on each delivery."""
    attempts = iter(script)
    tries = iter(dead_letters or [])
    played = played or Played()
    calls = played.calls
    expected = 0.0
    for delivery in range(1, limits.delivery_limit + 1):
        verdict, why = on_delivery(True, delivery, limits.dead_letter_delivery)
        if verdict is Verdict.DEAD_LETTER:
            assert why and str(delivery) in why
            if publish_dead_letter(limits, policy, delivery, 0.0, tries=tries, played=played):
                return "dead_lettered", delivery, calls
            continue
        calls.append(0)
        now = 0.0
        if before_start(now, limits.start_by(0.0, expected), stopping=False) is Verdict.RELEASE:
            continue  # released unstarted: the next delivery
        while True:
            kind, took = next(attempts, ("ok", 0.0))
            calls[-1] += 1
            if kind == "crash":  # the process dies: the lock ends and the broker redelivers
                break
            now += took
            expected = took
            if limits.expired(0.0, now):  # ended after its lock: the ACCEPT is refused, it comes back
                break
            retry_at = now + policy.delay_s(calls[-1])
            start_by = limits.start_by(0.0, expected)
            verdict = after_attempt(kind == "ok", policy.gives_up_after(calls[-1]), retry_at, start_by,
                                    stopping=False)
            if verdict is Verdict.ACCEPT:
                return "accepted", delivery, calls
            if verdict is Verdict.DEAD_LETTER:
                if publish_dead_letter(limits, policy, delivery, now, tries=tries, played=played):
                    return "dead_lettered", delivery, calls
                break
            if verdict is Verdict.RELEASE:
                break
            assert verdict is Verdict.RUN and retry_at < start_by <= limits.lock_ends(0.0)
            assert retry_at + expected < limits.lock_s, "a retry of the usual length ends inside the lock"
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
    assert len(calls) < delivery_limit, "the broker's last delivery never runs the handler"


@given(group=st.tuples(st.integers(2, 10), st.floats(1, 60)),
       retries=st.tuples(st.integers(1, 10), st.floats(0.01, 20)), script=outcomes,
       dead_letters=dead_letter_outcomes)
def test_a_failed_dead_letter_never_costs_the_job_unless_it_fails_on_two_deliveries_the_last_by_a_crash(
        group: tuple[int, float], retries: tuple[int, float], script: list[Outcome],
        dead_letters: list[Outcome]) -> None:
    """Issue 22, defect 4: with the DLQ refusing or slow, or the member stopped or killed while a
    dead letter goes out, the job is dead-lettered on a later try or delivery. Only a member
    killed on the broker's last delivery, after the dead letter failed on the delivery before,
    loses it (a limit of 2 leaves no delivery to spare: one crash there)."""
    (delivery_limit, lock_s), (max_attempts, backoff_s) = group, retries
    limits = GroupLimits(lock_s=lock_s, delivery_limit=delivery_limit)
    policy = RetryPolicy(initial_s=backoff_s, max_s=backoff_s * 8, max_attempts=max_attempts)
    played = Played()
    ending, _, _ = deliver_until_settled(limits, policy, script, dead_letters, played)
    if ending == "dropped":
        failures = played.dead_letter_failures
        assert failures[-1] == (delivery_limit, "crash"), failures
        assert len(failures) >= (2 if delivery_limit >= 3 else 1), failures
    assert all(n <= max_attempts for n in played.calls)


@given(script=outcomes)
def test_a_job_that_succeeds_inside_its_lock_is_accepted_on_its_first_delivery(script: list[Outcome]) -> None:
    ok = [("ok", took * 0.7) for _, took in script] or [("ok", 0.0)]  # under 28 s: the lock is 30 s
    assert deliver_until_settled(GroupLimits(), RetryPolicy(), ok)[:2] == ("accepted", 1)


def test_a_handler_that_kills_the_process_every_time_ends_dead_lettered() -> None:
    crashes = [("crash", 0.0)] * 20
    ending, delivery, calls = deliver_until_settled(GroupLimits(delivery_limit=5),
                                                    RetryPolicy(max_attempts=2), crashes)
    assert (ending, delivery, calls) == ("dead_lettered", 4, [1, 1, 1])


@given(gives_up=st.booleans(), retry_at=st.floats(0, 100), start_by=st.floats(0, 100), stopping=st.booleans())
def test_a_success_is_accepted_whatever_else_holds(gives_up: bool, retry_at: float, start_by: float,
                                                   stopping: bool) -> None:
    """The member's loop accepts a run's successes without asking (share_worker's
    `_after_attempts`): that holds only while a success is accepted whatever else is true
    (stopping, the lock's share spent, the retry policy giving up)."""
    assert after_attempt(True, gives_up, retry_at, start_by, stopping) is Verdict.ACCEPT


@given(gives_up=st.booleans(), now=st.floats(0, 100), delay=st.floats(0, 100), stopping=st.booleans())
def test_a_failed_attempt_is_retried_here_only_inside_the_lock_and_never_while_stopping(
        gives_up: bool, now: float, delay: float, stopping: bool) -> None:
    start_by = GroupLimits(lock_s=30).start_by(0.0, expected_s=1.0)
    verdict = after_attempt(False, gives_up, now + delay, start_by, stopping)
    if gives_up:
        assert verdict is Verdict.DEAD_LETTER
    elif verdict is Verdict.RUN:
        assert now + delay < start_by and not stopping
    else:
        assert verdict is Verdict.RELEASE


def test_a_record_that_is_not_a_job_is_dead_lettered_and_accepted_only_once_the_dlq_holds_it() -> None:
    assert on_delivery(False, 1, 4)[0] is Verdict.DEAD_LETTER
    assert after_publish(True, 0.0, 20.0, last=False, stopping=False) is Verdict.ACCEPT


@given(retry_at=st.floats(0, 100), last=st.booleans(), stopping=st.booleans())
def test_a_failed_dead_letter_goes_again_inside_the_lock_and_is_never_released_on_the_last_delivery(
        retry_at: float, last: bool, stopping: bool) -> None:
    verdict = after_publish(False, retry_at, 20.0, last, stopping)
    if last:
        assert verdict is Verdict.PUBLISH
    else:
        assert verdict is (Verdict.PUBLISH if retry_at < 20.0 and not stopping else Verdict.RELEASE)


@given(lock_s=st.floats(1, 60), expected_s=st.floats(0, 100), polled_at=st.floats(0, 1000))
def test_a_job_starts_early_enough_to_end_inside_its_lock(lock_s: float, expected_s: float,
                                                         polled_at: float) -> None:
    limits = GroupLimits(lock_s=lock_s)
    start_by = limits.start_by(polled_at, expected_s)
    assert start_by <= limits.lock_ends(polled_at) < polled_at + lock_s
    assert start_by + min(expected_s, lock_s * 2 / 3) <= polled_at + lock_s + 1e-6
    assert start_by >= polled_at + lock_s / 3 - 1e-6, "a poll's first job can always start"
    assert not limits.expired(polled_at, start_by) or start_by < polled_at


@given(now=st.floats(0, 100), stopping=st.booleans())
def test_a_job_starts_only_before_its_start_by(now: float, stopping: bool) -> None:
    verdict = before_start(now, 20.0, stopping)
    assert verdict is (Verdict.RUN if now < 20.0 and not stopping else Verdict.RELEASE)


def test_the_dead_letter_delivery_leaves_one_to_spare_and_the_lock_leaves_slack() -> None:
    assert GroupLimits(lock_s=30).lock_ends(100.0) == 120.0
    assert GroupLimits(delivery_limit=5).dead_letter_delivery == 4
    assert GroupLimits(delivery_limit=2).dead_letter_delivery == 2  # no room for a spare delivery
    assert GroupLimits(delivery_limit=5).is_last(5) and not GroupLimits(delivery_limit=5).is_last(4)
    assert GroupLimits(lock_s=30).start_by(0.0, expected_s=5.0) == 20.0
    assert GroupLimits(lock_s=30).start_by(0.0, expected_s=25.0) == 10.0  # at least a third


TIERS = tiers_of("jobs")


def test_a_job_not_due_is_parked_even_for_a_second_and_a_due_one_runs() -> None:
    """A share member holds nothing (its lock would end): a wait under the smallest tier is
    parked there too, released at its due time rather than after the tier's 5 s."""
    assert parking(None, 100.0, TIERS) is None
    assert parking(100.0, 100.0, TIERS) is None and parking(99.0, 100.0, TIERS) is None
    short = parking(101.0, 100.0, TIERS)
    assert short is not None and (short.tier.name, short.release_at) == ("5s", 101.0)
    six = parking(106.0, 100.0, TIERS)  # 5 s in the tier, then 1 s more (below)
    assert six is not None and (six.tier.name, six.release_at) == ("5s", 105.0)
    hour = parking(100.0 + 7200, 100.0, TIERS)
    assert hour is not None and (hour.tier.name, hour.release_at) == ("1h", 3700.0)


@given(now=st.floats(0, 4e9), wait=st.floats(-100, 3 * 86400))
def test_a_parked_job_comes_back_at_its_due_time_never_before_and_never_holds_a_record(
        now: float, wait: float) -> None:
    """The whole path of a share-mode job, with the mover taking each copy at its release time:
    parked (parking), moved down the tiers (jobpipe.delays.release), back on the jobs topic,
    parked again while not due. It is never in a tier longer than the tier's time, never
    released after its due time, and it runs at its due time (never before), in a few hops."""
    due = now + wait
    hops = 0
    while (park := parking(due, now, TIERS)) is not None:  # a share member has it
        while park is not None:  # in a tier; the mover takes it at its release time
            assert now < park.release_at <= due
            assert park.release_at - now <= park.tier.seconds + 1e-6
            now = park.release_at
            hops += 1
            park = release(now, due, TIERS)
    assert now == due if wait > 0 else hops == 0
    # at most: the hours, then 5 x 10 min, 9 x 1 min, 11 x 5 s and the last seconds
    assert hops <= wait / 3600 + 5 + 9 + 11 + 2
