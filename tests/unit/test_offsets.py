"""The offset tracker: the committable watermark is the lowest unfinished offset, never past it."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from consumer_service.offsets import OffsetTracker, PartitionOffsets

TP0 = ("jobs", 0)
TP1 = ("jobs", 1)


def test_nothing_fetched_has_nothing_to_commit() -> None:
    tracker = OffsetTracker()
    assert tracker.committable(TP0) is None
    assert tracker.advanced() == []
    assert not tracker.partition(TP0).finish(0)


def test_the_watermark_is_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        assert tracker.partition(TP0).add(offset)
    assert tracker.committable(TP0) == 0  # nothing finished: the first fetched offset
    assert not tracker.partition(TP0).finish(2)  # above an unfinished one: the watermark stays
    assert not tracker.partition(TP0).finish(3)
    assert tracker.committable(TP0) == 0
    assert tracker.advanced() == []
    assert tracker.partition(TP0).finish(0)
    assert tracker.committable(TP0) == 1
    assert tracker.partition(TP0).finish(1)  # trims past the finished 2 and 3
    assert tracker.committable(TP0) == 4
    assert tracker.partition(TP0).finish(4)
    assert tracker.committable(TP0) == 5, "all finished: the next offset to read"
    assert tracker.advanced() == [(TP0, 5)]
    assert tracker.advanced() == [], "reported once"
    assert tracker.partition(TP0).unfinished == 0


def test_gaps_in_offsets_are_fine() -> None:
    """Compacted topics and transaction markers leave holes in a partition's offsets."""
    tracker = OffsetTracker()
    for offset in (3, 7, 8, 20):
        tracker.partition(TP0).add(offset)
    assert tracker.committable(TP0) == 3
    tracker.partition(TP0).finish(8)
    tracker.partition(TP0).finish(3)
    assert tracker.committable(TP0) == 7
    tracker.partition(TP0).finish(7)
    assert tracker.committable(TP0) == 20
    tracker.partition(TP0).finish(20)
    assert tracker.committable(TP0) == 21


def test_the_end_of_a_partition_moves_the_watermark_past_a_transaction_marker() -> None:
    """A transaction's commit marker (offset 3 here) is never handed over: the watermark stops
    at it, and the group's lag stays 1, until the end of the partition is reported."""
    part = OffsetTracker().partition(TP0)
    for offset in range(3):
        part.add(offset)
    assert not part.reached_end(4), "jobs are unfinished: the end changes nothing yet"
    for offset in range(3):
        part.finish(offset)
    assert part.committable() == 3
    assert part.reached_end(4)
    assert part.committable() == 4
    assert not part.reached_end(4), "reached again: nothing moves"
    assert part.add(4), "the next job after the end is taken as usual"
    assert part.committable() == 4


def test_an_end_reached_before_anything_is_fetched_is_the_watermark() -> None:
    """Assigned at a committed offset that is a marker: the end is reported at once."""
    tracker = OffsetTracker()
    assert tracker.partition(TP0).reached_end(8)
    assert tracker.advanced() == [(TP0, 8)]


def test_partitions_are_independent_and_advanced_names_each_moved_one() -> None:
    tracker = OffsetTracker()
    tracker.partition(TP0).add(10)
    tracker.partition(TP1).add(0)
    tracker.partition(TP1).add(1)
    tracker.partition(TP1).finish(0)
    assert tracker.advanced() == [(TP1, 1)]
    tracker.partition(TP0).finish(10)
    tracker.partition(TP1).finish(1)
    assert sorted(tracker.advanced()) == [(TP0, 11), (TP1, 2)]


def test_a_duplicate_or_a_finished_offset_is_not_work() -> None:
    tracker = OffsetTracker()
    assert tracker.partition(TP0).add(0)
    assert tracker.partition(TP0).add(1)
    assert not tracker.partition(TP0).add(0), "held already"
    tracker.partition(TP0).finish(1)
    assert not tracker.partition(TP0).add(1), "finished above an unfinished offset"
    assert not tracker.partition(TP0).finish(1), "finishing twice changes nothing"
    assert tracker.committable(TP0) == 0


def test_a_position_moved_back_by_the_broker_starts_the_partition_over() -> None:
    """An offset reset (or a re-created topic) with nothing in hand: process again, not skip."""
    part = PartitionOffsets()
    for offset in range(10, 13):
        part.add(offset)
        part.finish(offset)
    assert part.committable() == 13
    assert part.add(0)
    assert part.committable() == 0
    part.finish(0)
    assert part.add(1)
    assert part.committable() == 1


def test_an_offset_below_the_watermark_is_refused_while_jobs_are_in_hand() -> None:
    part = PartitionOffsets()
    part.add(10)
    part.add(11)
    part.finish(10)
    assert not part.add(3)
    assert part.committable() == 11


def test_drop_forgets_the_partition() -> None:
    tracker = OffsetTracker()
    tracker.partition(TP0).add(5)
    tracker.partition(TP0).finish(5)
    tracker.drop(TP0)
    assert tracker.committable(TP0) is None
    assert tracker.advanced() == [], "a dropped partition's watermark is not stored"
    assert tracker.partition(TP0).add(3), "a new owner starts afresh"


class TrackerAgainstAModel(RuleBasedStateMachine):
    """Random fetches (with gaps), finishes and re-fetches against a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.part = PartitionOffsets()
        self.fetched: list[int] = []  # every offset fetched, ascending
        self.state: dict[int, str] = {}  # offset -> held / done

    def unfinished(self) -> list[int]:
        return [offset for offset, state in self.state.items() if state != "done"]

    @rule(gap=st.integers(0, 3))
    def fetch_new(self, gap: int) -> None:
        offset = (self.fetched[-1] + 1 if self.fetched else 0) + gap
        assert self.part.add(offset)
        self.fetched.append(offset)
        self.state[offset] = "held"

    @precondition(lambda self: self.fetched)
    @rule(data=st.data())
    def fetch_again(self, data: st.DataObject) -> None:
        """An offset already seen: not work, unless nothing is in hand (a position moved back)."""
        offset = data.draw(st.sampled_from(self.fetched))
        restart = not self.unfinished()
        accepted = self.part.add(offset)
        assert accepted == restart
        if restart:  # the broker moved the position back: the partition starts over
            self.fetched = [offset]
            self.state = {offset: "held"}

    @precondition(lambda self: any(state == "held" for state in self.state.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(o for o, s in self.state.items() if s == "held")))
        lowest = min(self.unfinished())
        following = min((o for o in self.unfinished() if o > offset), default=None)
        # The watermark moves past it and past the finished ones above it, up to the next
        # unfinished: how many go below it is what the scheduler no longer counts at risk.
        below = [o for o in self.fetched if offset <= o and (following is None or o < following)]
        assert self.part.finish(offset) == (len(below) if offset == lowest else 0)
        self.state[offset] = "done"

    @invariant()
    def the_watermark_is_the_lowest_unfinished_offset(self) -> None:
        unfinished = self.unfinished()
        if unfinished:
            expected: int | None = min(unfinished)
        else:
            expected = self.fetched[-1] + 1 if self.fetched else None
        assert self.part.committable() == expected
        assert self.part.unfinished == len(unfinished)


TestTrackerAgainstAModel = TrackerAgainstAModel.TestCase
TestTrackerAgainstAModel.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
