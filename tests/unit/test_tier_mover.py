"""The delay tiers' mover (consumer_service.tier_mover) turn by turn against stand-ins for
librdkafka: a tier partition whose head is not released is paused and sought back to it (no
copy, nothing held), a released head goes on (a lower tier or the jobs topic), and a tier
offset is stored only once its copy is acknowledged."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from consumer_service import tier_mover, transactions
from jobpipe.delays import DUE_HEADER, RELEASE_HEADER, TIER_HEADER, epoch_ms
from tests.unit.consumer_stand_ins import TOPIC, FakeProducer, member_parts

TIER = f"{TOPIC}.delay.1m"
NOW = 1_000_000.0


class FakeTierConsumer:
    """One tier partition's log, its position, pauses and seeks, and the stored offsets."""

    def __init__(self, _config: dict[str, Any]) -> None:
        self.log: list[Message] = []
        self.position = 0
        self.paused = False
        self.seeks: list[int] = []
        self.stored: list[int] = []

    def subscribe(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def poll(self, _timeout: float = -1) -> Message | None:
        taken = self.consume(1)
        return taken[0] if taken else None

    def consume(self, num_messages: int = 1, _timeout: float = -1) -> list[Message]:
        if self.paused:
            return []
        out = self.log[self.position:self.position + num_messages]
        self.position += len(out)
        return out

    def pause(self, _tps: list[TopicPartition]) -> None:
        self.paused = True

    def resume(self, _tps: list[TopicPartition]) -> None:
        self.paused = False

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append(tp.offset)
        self.position = tp.offset

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.stored += [tp.offset for tp in offsets]

    def commit(self, asynchronous: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mover(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[tier_mover.TierMover, Clock]]:
    monkeypatch.setattr(tier_mover, "Consumer", FakeTierConsumer)
    monkeypatch.setattr(tier_mover, "Producer", FakeProducer)
    settings, _handler = member_parts(lambda _job: None)
    clock = Clock()
    made = tier_mover.TierMover(settings, 1, threading.Event(), clock=clock)
    made._on_assign(None, [TopicPartition(TIER, 0)])  # type: ignore[arg-type]
    yield made, clock


def parked(offset: int, due: float, release: float) -> Message:
    return Message(topic=TIER, partition=0, offset=offset, key=b"k", value=b"{}",
                   headers=[("h", b"kept"), (DUE_HEADER, epoch_ms(due)), (RELEASE_HEADER, epoch_ms(release)),
                            (TIER_HEADER, b"1m")])


def parts(mover: tier_mover.TierMover) -> tuple[FakeTierConsumer, FakeProducer]:
    return mover._consumer, mover._producer  # type: ignore[return-value]


def test_a_head_not_released_pauses_its_partition_and_seeks_back_to_it(
        mover: tuple[tier_mover.TierMover, Clock]) -> None:
    made, clock = mover
    kafka, producer = parts(made)
    kafka.log = [parked(0, NOW + 200, NOW + 60), parked(1, NOW + 300, NOW + 61)]
    made._turn()
    assert (kafka.paused, kafka.seeks, producer.pending, kafka.stored) == (True, [0], [], [])
    clock.now = NOW + 59.9
    made._turn()
    assert kafka.paused, "nothing leaves its tier early"
    clock.now = NOW + 60.0
    producer.hold = True
    made._turn()  # resumed: the head goes on, the next one is not released yet
    assert [m.topic() for _, m in producer.pending] == [f"{TOPIC}.delay.1m"]
    assert kafka.paused and kafka.seeks == [0, 1]
    assert kafka.stored == [], "stored only once the copy is acknowledged"
    producer.hold = False
    producer.poll(0)
    made._report()
    assert kafka.stored == [1]
    (copy,) = producer.published
    headers = dict(copy.headers())
    assert headers["h"] == b"kept" and headers[DUE_HEADER] == epoch_ms(NOW + 200)
    assert headers[RELEASE_HEADER] == epoch_ms(NOW + 120), "another minute in the 1 min tier"


def test_a_released_job_near_its_time_goes_back_to_the_jobs_topic_with_its_due_time(
        mover: tuple[tier_mover.TierMover, Clock]) -> None:
    made, _clock = mover
    kafka, producer = parts(made)
    kafka.log = [parked(0, NOW + 4, NOW - 1)]
    made._turn()
    producer.poll(0)
    made._report()
    (copy,) = producer.published
    assert (copy.topic(), copy.key()) == (TOPIC, b"k")
    headers = dict(copy.headers())
    assert headers[DUE_HEADER] == epoch_ms(NOW + 4) and RELEASE_HEADER not in headers
    assert kafka.stored == [1]


def test_a_refused_copy_is_read_again_and_its_offset_not_stored(
        mover: tuple[tier_mover.TierMover, Clock]) -> None:
    made, clock = mover
    kafka, producer = parts(made)
    kafka.log = [parked(0, NOW, NOW - 1), parked(1, NOW, NOW - 1)]
    producer.failures = 1
    made._turn()
    producer.poll(0)
    made._report()
    assert kafka.stored == [] and kafka.paused and kafka.seeks == [0]
    clock.now = NOW + tier_mover.RETRY_S
    made._turn()
    producer.poll(0)
    made._report()
    assert kafka.stored == [2]
    assert len(producer.published) == 3, "the second record went twice (at-least-once), the first once"


@pytest.mark.parametrize(("guarantee", "transactional"), [("at_least_once", False), ("exactly_once", True)])
def test_a_mover_makes_only_the_producer_its_guarantee_uses(monkeypatch: pytest.MonkeyPatch,
                                                            guarantee: str, transactional: bool) -> None:
    """Each librdkafka client is connections and threads: under exactly_once the mover's copies
    go through its transactional producer, so it makes that one and no plain one beside it."""
    made: list[dict[str, Any]] = []

    class CountedProducer(FakeProducer):
        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__(config)
            made.append(config)

        def init_transactions(self, _timeout: float = -1) -> None:
            return None

    monkeypatch.setattr(tier_mover, "Consumer", FakeTierConsumer)
    monkeypatch.setattr(tier_mover, "Producer", CountedProducer)
    monkeypatch.setattr(transactions, "Producer", CountedProducer)
    settings, _handler = member_parts(lambda _job: None, processing_guarantee=guarantee)
    tier_mover.TierMover(settings, 1, threading.Event(), clock=Clock())
    assert ["transactional.id" in config for config in made] == [transactional]
