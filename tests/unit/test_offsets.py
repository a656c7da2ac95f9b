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
    assert not tracker.finish(TP0, 0)


def test_the_watermark_is_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        assert tracker.add(TP0, offset)
    assert tracker.committable(TP0) == 0  # nothing finished: the first fetched offset
    assert not tracker.finish(TP0, 2)  # above an unfinished one: the watermark stays
    assert not tracker.finish(TP0, 3)
    assert tracker.committable(TP0) == 0
    assert tracker.advanced() == []
    assert tracker.finish(TP0, 0)
    assert tracker.committable(TP0) == 1
    assert tracker.finish(TP0, 1)  # trims past the finished 2 and 3
    assert tracker.committable(TP0) == 4
    assert tracker.finish(TP0, 4)
    assert tracker.committable(TP0) == 5, "all finished: the next offset to read"
    assert tracker.advanced() == [(TP0, 5)]
    assert tracker.advanced() == [], "reported once"
    assert tracker.unfinished(TP0) == 0


def test_gaps_in_offsets_are_fine() -> None:
    """Compacted topics and transaction markers leave holes in a partition's offsets."""
    tracker = OffsetTracker()
    for offset in (3, 7, 8, 20):
        tracker.add(TP0, offset)
    assert tracker.committable(TP0) == 3
    tracker.finish(TP0, 8)
    tracker.finish(TP0, 3)
    assert tracker.committable(TP0) == 7
    tracker.finish(TP0, 7)
    assert tracker.committable(TP0) == 20
    tracker.finish(TP0, 20)
    assert tracker.committable(TP0) == 21


def test_partitions_are_independent_and_advanced_names_each_moved_one() -> None:
    tracker = OffsetTracker()
    tracker.add(TP0, 10)
    tracker.add(TP1, 0)
    tracker.add(TP1, 1)
    tracker.finish(TP1, 0)
    assert tracker.advanced() == [(TP1, 1)]
    tracker.finish(TP0, 10)
    tracker.finish(TP1, 1)
    assert sorted(tracker.advanced()) == [(TP0, 11), (TP1, 2)]
    assert sorted(tracker.partitions) == [TP0, TP1]


def test_a_duplicate_or_a_finished_offset_is_not_work() -> None:
    tracker = OffsetTracker()
    assert tracker.add(TP0, 0)
    assert tracker.add(TP0, 1)
    assert not tracker.add(TP0, 0), "held already"
    tracker.finish(TP0, 1)
    assert not tracker.add(TP0, 1), "finished above an unfinished offset"
    assert not tracker.finish(TP0, 1), "finishing twice changes nothing"
    assert tracker.committable(TP0) == 0


def test_released_offsets_are_fetched_again_and_nothing_else_is() -> None:
    """A rewind: the caller drops held messages, seeks back, and fetches them again."""
    part = PartitionOffsets()
    for offset in range(6):
        part.add(offset)
    part.finish(1)
    part.finish(3)
    assert part.release(2)
    assert part.release(4)
    assert not part.release(3), "a finished offset cannot be released"
    assert part.committable() == 0
    part.finish(0)
    assert part.committable() == 2, "a released offset holds the watermark"
    # The seek goes back to 2: 2 and 4 are work again; 3 (finished) and 5 (held) are not.
    assert [part.add(offset) for offset in range(2, 7)] == [True, False, True, False, True]
    for offset in (2, 4, 5, 6):
        part.finish(offset)
    assert part.committable() == 7
    assert part.unfinished == 0


def test_finished_offsets_stay_skipped_while_a_replay_catches_up() -> None:
    """Re-fetching after a rewind can finish every released job before the fetch passes
    the offsets that were done before the rewind: those are still not work."""
    part = PartitionOffsets()
    for offset in range(4):
        part.add(offset)
    part.release(0)
    for offset in (1, 2, 3):
        part.finish(offset)
    assert part.add(0)
    part.finish(0)  # nothing unfinished now, and the re-fetch is still below 4
    assert not part.add(1)
    assert not part.add(3)
    assert part.add(4), "past the old end: new work"
    assert part.committable() == 4


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
    tracker.add(TP0, 5)
    tracker.finish(TP0, 5)
    tracker.drop(TP0)
    assert tracker.committable(TP0) is None
    assert tracker.advanced() == [], "a dropped partition's watermark is not stored"
    assert tracker.add(TP0, 3), "a new owner starts afresh"


class TrackerAgainstAModel(RuleBasedStateMachine):
    """Random fetches (with gaps), finishes, releases and re-fetches against a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.part = PartitionOffsets()
        self.fetched: list[int] = []  # every offset fetched, ascending
        self.state: dict[int, str] = {}  # offset -> held / released / done
        self.replaying = False

    def unfinished(self) -> list[int]:
        return [offset for offset, state in self.state.items() if state != "done"]

    @rule(gap=st.integers(0, 3))
    def fetch_new(self, gap: int) -> None:
        offset = (self.fetched[-1] + 1 if self.fetched else 0) + gap
        assert self.part.add(offset)
        self.fetched.append(offset)
        self.state[offset] = "held"
        self.replaying = False

    @precondition(lambda self: self.fetched)
    @rule(data=st.data())
    def fetch_again(self, data: st.DataObject) -> None:
        """An offset already seen: work only if it was released."""
        offset = data.draw(st.sampled_from(self.fetched))
        restart = not self.unfinished() and not self.replaying
        accepted = self.part.add(offset)
        if restart:  # the broker moved the position back: the partition starts over
            assert accepted
            self.fetched = [offset]
            self.state = {offset: "held"}
        else:
            assert accepted == (self.state.get(offset) == "released")
            if accepted:
                self.state[offset] = "held"

    @precondition(lambda self: any(state == "held" for state in self.state.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(o for o, s in self.state.items() if s == "held")))
        lowest = min(self.unfinished())
        assert self.part.finish(offset) == (offset == lowest)
        self.state[offset] = "done"

    @precondition(lambda self: any(state == "held" for state in self.state.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(o for o, s in self.state.items() if s == "held")))
        assert self.part.release(offset)
        self.state[offset] = "released"
        self.replaying = True

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
