"""What one exactly-once move of the delay tiers may commit (consumer_service.move_batch): per
partition one past the last copy moved, never at or past a head that waits, and an aborted batch
is read again from its first move, so every record is moved by exactly one committed batch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer_service.move_batch import MoveBatch
from consumer_service.offsets import TP

TPS: list[TP] = [("jobs.delay.5s", 0), ("jobs.delay.5s", 1), ("jobs.delay.1m", 0)]


@st.composite
def turns(draw: st.DrawFn) -> tuple[dict[TP, int], list[tuple[list[tuple[TP, bool]], bool]]]:
    """Records per partition, and turns: each takes records in order from some partitions
    (each released or a waiting head), then its transaction commits or is aborted."""
    sizes = {tp: draw(st.integers(0, 15)) for tp in TPS}
    steps = st.lists(st.tuples(st.sampled_from(TPS), st.booleans()), max_size=12)
    history = [(draw(steps), draw(st.booleans())) for _ in range(draw(st.integers(1, 25)))]
    return sizes, history


@settings(max_examples=200)
@given(turns())
def test_every_record_is_moved_by_exactly_one_committed_batch_and_none_past_a_waiting_head(
        case: tuple[dict[TP, int], list[tuple[list[tuple[TP, bool]], bool]]]) -> None:
    sizes, history = case
    position = {tp: 0 for tp in TPS}  # the mover consumer's position (what it reads next)
    committed = {tp: 0 for tp in TPS}
    moved_by_commits: list[tuple[TP, int]] = []
    batch = MoveBatch()
    for steps, commits in history:
        moved: list[tuple[TP, int]] = []
        waiting: set[TP] = set()
        for tp, released in steps:
            offset = position[tp]
            if tp in waiting or offset >= sizes[tp]:
                continue  # paused (its head waits) or nothing more to read
            if not released:
                batch.wait(tp, offset)  # paused and sought back to its head
                waiting.add(tp)
                continue
            assert batch.move(tp, offset)
            moved.append((tp, offset))
            position[tp] = offset + 1
        offsets, rewind = batch.offsets(), batch.rewind()
        batch.clear()
        for tp, at in offsets.items():
            assert committed[tp] <= rewind[tp] < at <= position[tp]
        if commits:
            committed.update(offsets)
            moved_by_commits += moved
        else:
            position.update(rewind)  # read again from what the group committed
            assert all(position[tp] == committed[tp] for tp in rewind)
    assert len(moved_by_commits) == len(set(moved_by_commits)), "a record moved by two committed batches"
    assert set(moved_by_commits) == {(tp, o) for tp in TPS for o in range(committed[tp])}


def test_nothing_is_taken_at_or_past_a_waiting_head_nor_twice() -> None:
    batch, tp = MoveBatch(), TPS[0]
    assert batch.move(tp, 4) and batch.move(tp, 6)  # a gap (a transaction marker) is fine
    assert not batch.move(tp, 6) and not batch.move(tp, 5)
    batch.wait(tp, 7)
    assert not batch.move(tp, 7) and not batch.move(tp, 8)
    assert batch.offsets() == {tp: 7} and batch.rewind() == {tp: 4} and len(batch) == 1
