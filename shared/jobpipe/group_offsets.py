"""A consumer group's place in a topic, as the broker sees it.

Why it exists: three things show a group's lag (`topic-admin describe`, `topic-admin offsets`
and the lag exporter), and each used to read and compute it its own way (the exporter clamped
at 0, `describe` trusted a committed offset outside the log, `offsets` did not). One reader and
one `PartitionState` here make lag mean the same everywhere: the jobs between where the group's
next consumer starts and the partition's end.

Reading changes nothing in the group (no member joins); `PartitionState` and `GroupState` are
plain values, so what is computed from them is pure.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from jobpipe.kafka_clients import admin_config, connection_config, extra_config
from jobpipe.settings import KafkaSettings


@dataclass(frozen=True)
class PartitionState:
    """One partition of a topic, and the group's committed offset on it (None: none)."""

    partition: int
    start: int  # the log start offset: the first job still in the partition
    end: int  # the end offset: where the next job will be written
    committed: int | None

    @property
    def position(self) -> int:
        """Where the group's next consumer starts: the committed offset, or, when there is
        none or it is out of range, the start (the consumers' auto.offset.reset=earliest)."""
        if self.committed is None or not self.start <= self.committed <= self.end:
            return self.start
        return self.committed

    @property
    def lag(self) -> int:
        return self.end - self.position


@dataclass(frozen=True)
class Member:
    """A member of a consumer group and the partitions of one topic it owns."""

    member_id: str  # the broker's id of the member: tells two members of one host apart
    client_id: str
    host: str
    partitions: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        return {"member_id": self.member_id, "client_id": self.client_id, "host": self.host,
                "partitions": list(self.partitions)}


@dataclass(frozen=True)
class GroupState:
    """What the broker says of a consumer group: its state and members."""

    group: str
    state: str  # the group's state in lower case (stable, empty, dead, ...); "unknown": no such group
    members: tuple[Member, ...]

    @property
    def known(self) -> bool:
        """The coordinator knows the group (it has members, or had some and kept its offsets)."""
        return self.state not in ("dead", "unknown") or bool(self.members)


class NoSuchTopic(LookupError):
    """The topic does not exist (or its metadata carries an error)."""


COORDINATOR_NOT_READY = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                         KafkaError.COORDINATOR_LOAD_IN_PROGRESS)


class GroupReader:
    """Reads one group's offsets and description; every request waits at most `timeout_s`.

    Offsets are read with a consumer that never subscribes (its group.id is the group, so
    `committed` answers for it, but it never joins), as the lag exporter always has: the
    AdminClient's list_offsets crashed the process (SIGSEGV, confluent-kafka 2.16) when called
    again after a partition had no leader for a moment, which a loop such as `describe --watch`
    or the exporter meets whenever the broker restarts."""

    def __init__(self, settings: KafkaSettings, group: str, client_id: str, timeout_s: float) -> None:
        self.group = group
        self.timeout_s = timeout_s
        self._consumer = Consumer(connection_config(settings, client_id) | extra_config(settings, "consumer")
                                  | {"group.id": group, "enable.auto.commit": False})
        self._admin = AdminClient(admin_config(settings, client_id))

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions, in order; NoSuchTopic if it does not exist."""
        found = self._consumer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        if found is None or found.error is not None:
            raise NoSuchTopic(topic)
        return sorted(found.partitions)

    def states(self, topic: str, partitions: Sequence[int], *,
               committed: bool = True) -> list[PartitionState]:
        """Start, end and (`committed`) the group's committed offset of each partition."""
        done = self.committed(topic, partitions) if committed else {}
        states = []
        for partition in partitions:
            start, end = self._consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                              timeout=self.timeout_s, cached=False)
            states.append(PartitionState(partition=partition, start=start, end=end,
                                         committed=done.get(partition)))
        return states

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The group's committed offset per partition (only those it committed)."""
        if not partitions:
            return {}
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                found = self._consumer.committed([TopicPartition(topic, p) for p in partitions],
                                                 timeout=self.timeout_s)
                return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
            except KafkaException as error:  # a coordinator not up yet, as in `describe`: asked again
                code = error.args[0].code() if error.args and isinstance(error.args[0], KafkaError) else None
                if code not in COORDINATOR_NOT_READY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def at_time(self, topic: str, partitions: Sequence[int], millis: int) -> dict[int, int]:
        """Per partition, the first offset whose timestamp is at or after `millis` (-1: none)."""
        found = self._consumer.offsets_for_times([TopicPartition(topic, p, millis) for p in partitions],
                                                 timeout=self.timeout_s)
        return {tp.partition: tp.offset for tp in found}

    def record_at(self, topic: str, partition: int, offset: int, wait_s: float) -> Message | None:
        """The record at `offset` (or the first one after it) of a partition, or None if none
        came within `wait_s` (at most the timeout; the reader is assigned to the partition for
        the read, never subscribed)."""
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        try:
            deadline = time.monotonic() + min(wait_s, self.timeout_s)
            while (left := deadline - time.monotonic()) > 0:
                message = self._consumer.poll(min(left, 1.0))
                if message is not None and message.error() is None:
                    return message
            return None
        finally:
            self._consumer.unassign()

    def describe(self, topic: str) -> GroupState:
        """The group's state and its members with their partitions of `topic`."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            asked = self._admin.describe_consumer_groups([self.group], request_timeout=self.timeout_s)
            try:
                found = asked[self.group].result()
                break
            except KafkaException as error:
                code = error.args[0].code() if error.args and isinstance(error.args[0], KafkaError) else None
                if code == KafkaError.GROUP_ID_NOT_FOUND:
                    return GroupState(self.group, "unknown", ())
                # A cluster whose group coordinator is not up yet (its offsets topic being created
                # at the first group request, more slowly with more topics): asked again, bounded.
                if code not in COORDINATOR_NOT_READY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        members = tuple(Member(member_id=m.member_id, client_id=m.client_id, host=m.host,
                               partitions=_owned(m.assignment.topic_partitions, topic))
                        for m in found.members)
        state = found.state.name.lower() if isinstance(found.state, ConsumerGroupState) else "unknown"
        return GroupState(self.group, state, members)

    def close(self) -> None:
        self._consumer.close()


def _owned(assigned: Sequence[TopicPartition] | None, topic: str) -> tuple[int, ...]:
    return tuple(sorted(tp.partition for tp in assigned or [] if tp.topic == topic))
