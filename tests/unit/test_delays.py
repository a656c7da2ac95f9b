"""The delay decisions (jobpipe.delays), without Kafka: where a waiting job waits, and that it
never starts early, hops down the tiers and never waits in a tier longer than its wait."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from jobpipe.delays import (
    DUE_HEADER,
    Hold,
    Park,
    RunNow,
    decide,
    due_of,
    epoch_ms,
    header_time,
    release,
    tiers_of,
)

TIERS = tiers_of("jobs")
HOLD_MAX_S = 10.0


def test_the_tiers_are_named_from_the_jobs_topic() -> None:
    assert [tier.topic for tier in tiers_of("orders")] == [
        "orders.delay.5s", "orders.delay.1m", "orders.delay.10m", "orders.delay.1h"]


def test_a_due_job_runs_a_short_wait_is_held_a_long_one_parked() -> None:
    assert decide(100.0, 100.0, TIERS, HOLD_MAX_S) == RunNow()
    assert decide(100.0, 99.0, TIERS, HOLD_MAX_S) == RunNow()
    assert decide(100.0, 108.0, TIERS, HOLD_MAX_S) == Hold(108.0)
    assert decide(100.0, 100.0 + 90, TIERS, HOLD_MAX_S) == Park(TIERS[1], 160.0)
    assert decide(100.0, 100.0 + 7200, TIERS, HOLD_MAX_S) == Park(TIERS[3], 3700.0)


def test_a_wait_shorter_than_every_tier_is_held_whatever_the_threshold() -> None:
    assert decide(0.0, 4.0, TIERS, 0.0) == Hold(4.0)
    assert decide(0.0, 6.0, TIERS, 0.0) == Park(TIERS[0], 5.0)


def test_the_due_time_comes_from_the_header_first_then_not_before() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert due_of(None, {}) is None
    assert due_of(at, {}) == at.timestamp()
    assert due_of(at, {DUE_HEADER: b"1000"}) == 1.0
    assert due_of(at, {DUE_HEADER: b"junk"}) == at.timestamp()


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_a_time_header_is_never_read_earlier_than_written(value: float) -> None:
    read = header_time(epoch_ms(value))
    assert read is not None and read >= value and read - value < 0.002


@given(wait=st.floats(min_value=-100, max_value=5 * 86400, allow_nan=False),
       hold_max=st.floats(min_value=0, max_value=120),
       late=st.lists(st.floats(min_value=0, max_value=30), min_size=300, max_size=300))
def test_a_job_never_starts_early_hops_down_and_never_outwaits_its_wait_in_a_tier(
        wait: float, hold_max: float, late: list[float]) -> None:
    """Follow one job from its first consumer through every tier it is parked in (each release
    comes some time after it was due: a consumer's lateness) until it starts."""
    now = 1_000_000.0
    due = now + wait
    decision = decide(now, due, TIERS, hold_max)
    tiers_seen: list[int] = []
    for lateness in late:
        if isinstance(decision, RunNow):
            assert now >= due, "started before its time"
            return
        if isinstance(decision, Hold):
            assert decision.until == due
            assert due - now <= max(hold_max, TIERS[0].seconds), "held in memory past the threshold"
            if tiers_seen:
                assert due - now < TIERS[0].seconds, "back from the tiers with a tier's time left"
            now = due + lateness  # held until due, then run (a run never starts before `until`)
            decision = decide(now, due, TIERS, hold_max)
            continue
        assert isinstance(decision, Park)
        assert decision.release_at <= due, "parked longer than its remaining wait"
        assert abs(decision.release_at - now - decision.tier.seconds) < 1e-6
        assert not tiers_seen or decision.tier.seconds <= tiers_seen[-1], "it hopped up a tier"
        tiers_seen.append(decision.tier.seconds)
        now = decision.release_at + lateness  # the tier's partition resumes at the head's release time
        onward = release(now, due, TIERS)
        decision = onward if onward is not None else decide(now, due, TIERS, hold_max)  # the jobs topic
    raise AssertionError(f"still waiting after {len(late)} steps (tiers {tiers_seen})")
