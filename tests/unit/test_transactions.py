"""What may go into an exactly-once transaction (consumer_service.transactions.plan): a job's
records only with an offset commit past the job. Checked against the real watermark
(consumer_service.offsets) with jobs finishing in any order and commits at any moment."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer_service import transactions
from consumer_service.offsets import TP, OffsetTracker
from consumer_service.transactions import HeldRecords, OutRecord, plan
from tests.unit.consumer_stand_ins import member_parts

TPS: list[TP] = [("jobs", 0), ("jobs", 1), ("jobs", 2)]


def record(tp: TP, offset: int) -> OutRecord:
    return OutRecord("results", f"{tp[1]}:{offset}", b"{}")


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[TP, int], list[tuple[str, TP, int]]]:
    """Jobs per partition, and a history: each job finishes once, in any order, with commits
    interleaved anywhere."""
    sizes = {tp: draw(st.integers(0, 12)) for tp in TPS}
    finishes = [("finish", tp, offset) for tp, size in sizes.items() for offset in range(size)]
    order = draw(st.permutations(finishes))
    history: list[tuple[str, TP, int]] = []
    for step in order:
        history.append(step)
        if draw(st.booleans()):
            history.append(("commit", TPS[0], 0))
    return sizes, history


@settings(max_examples=150, deadline=None)  # a loaded machine took 453 ms for one case
@given(histories())
def test_a_transaction_writes_exactly_the_records_of_the_jobs_below_its_offsets(
        case: tuple[dict[TP, int], list[tuple[str, TP, int]]]) -> None:
    sizes, history = case
    tracker = OffsetTracker()
    for tp, size in sizes.items():
        for offset in range(size):
            tracker.partition(tp).add(offset)
    held = HeldRecords()
    committed: dict[TP, int] = {}
    written: list[OutRecord] = []

    def commit() -> None:
        marks = {tp: mark for tp in TPS if (mark := tracker.committable(tp)) is not None}
        work = plan(held, marks, committed)
        for tp, offset in work.offsets.items():
            assert offset >= committed.get(tp, 0), "offsets never go back"
        for out in work.records:
            tp_number, offset = map(int, str(out.key).split(":"))
            tp = ("jobs", tp_number)
            assert offset < work.offsets[tp], "a record goes only with an offset past its job"
        written.extend(work.records)
        committed.update(work.offsets)
        # What a read_committed reader sees is what a crash now leaves: exactly the records of
        # the jobs below the committed offsets; the next owner re-runs the rest, for the first time.
        assert sorted(str(r.key) for r in written) == sorted(
            f"{tp[1]}:{offset}" for tp, mark in committed.items() for offset in range(mark))

    for step, tp, offset in history:
        if step == "commit":
            commit()
        else:
            held.hold(tp, offset, [record(tp, offset)])
            tracker.partition(tp).finish(offset)
    commit()
    assert len(written) == sum(sizes.values()), "once all jobs are done, every record is written"
    assert len(held) == 0


def test_a_record_above_an_unfinished_job_waits_for_it() -> None:
    held = HeldRecords()
    tp = TPS[0]
    held.hold(tp, 5, [record(tp, 5)])
    assert plan(held, {tp: 3}, {}).records == [], "job 3 (below 5) is still running"
    assert plan(held, {tp: 6}, {tp: 3}).records == [record(tp, 5)]


def test_a_partition_that_went_drops_its_held_records() -> None:
    held = HeldRecords()
    held.hold(TPS[1], 0, [record(TPS[1], 0), record(TPS[1], 0)])
    assert held.drop([TPS[1]]) == 2
    assert plan(held, {TPS[1]: 1}, {}).records == []


class StandInProducer:
    """A transactional producer whose commit fails while `refuse` is set (an abortable error)."""

    refuse = False

    def __init__(self, _config: object) -> None:
        self.written: list[object] = []

    def init_transactions(self, _timeout: float) -> None: ...
    def begin_transaction(self) -> None: ...
    def abort_transaction(self, _timeout: float) -> None: ...
    def flush(self, _timeout: float) -> int:
        return 0

    def produce(self, topic: str, value: object, key: object, headers: object = None) -> None:
        self.written.append(key)

    def send_offsets_to_transaction(self, offsets: object, metadata: object, timeout: float) -> None: ...

    def commit_transaction(self, _timeout: float) -> None:
        if StandInProducer.refuse:
            raise KafkaException(KafkaError(KafkaError._STATE, "aborted by the stand-in",
                                            txn_requires_abort=True))


class StandInConsumer:
    def consumer_group_metadata(self) -> object:
        return object()


def test_what_a_job_counts_is_done_once_its_transaction_commits_never_for_an_aborted_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs_dead_lettered_total and job.dead_lettered (and job.parked) under exactly_once: a
    dead letter is counted when it is visible, not when it is held; an aborted one is not."""
    monkeypatch.setattr(transactions, "Producer", StandInProducer)
    settings, _ = member_parts(lambda job: None, processing_guarantee="exactly_once")
    member = transactions.Transactions(settings, "test-tx", 1, "consumer 1@test")
    done: list[int] = []
    tp = TPS[0]
    for offset in range(3):
        member.hold(tp, offset, [record(tp, offset)], lambda offset=offset: done.append(offset))
    assert member.commit(StandInConsumer(), {tp: 1}).ok  # type: ignore[arg-type]
    assert done == [0], "only the job below the committed offset"
    StandInProducer.refuse = True
    try:
        aborted = member.commit(StandInConsumer(), {tp: 3})  # type: ignore[arg-type]
    finally:
        StandInProducer.refuse = False
    assert not aborted.ok and aborted.aborted == {tp}
    assert done == [0], "an aborted transaction's jobs are not counted (they are run again)"
    member.hold(tp, 1, [record(tp, 1)], lambda: done.append(1))  # run again after the rewind
    assert member.commit(StandInConsumer(), {tp: 2}).ok  # type: ignore[arg-type]
    assert done == [0, 1]
