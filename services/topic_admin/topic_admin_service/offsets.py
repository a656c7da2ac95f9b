"""`topic-admin offsets`: read a group's committed offsets on a topic, and move them.

The plan itself is pure (offset_plan.py). Moving is refused while the group has active
members, as Kafka's own kafka-consumer-groups does: a member's next commit would overwrite
the move, and the broker refuses offset commits from outside a live group anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from jobpipe.logs import event
from topic_admin_service.errors import Refused
from topic_admin_service.offset_plan import Move, PartitionState
from topic_admin_service.topics import REQUEST_TIMEOUT_S, _kafka_code
from topic_admin_service.when import to_millis

# What the broker answers when an offset commit comes from outside a group that has members.
ACTIVE_GROUP_ERRORS = (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
                       KafkaError.ILLEGAL_GENERATION, KafkaError.FENCED_INSTANCE_ID)


@dataclass
class GroupOffsets:
    group: str
    topic: str
    states: list[PartitionState]
    members: list[str] = field(default_factory=list)  # client ids of the active members
    exists: bool = True


def active_members_refusal(group: str, members: Sequence[str]) -> Refused:
    shown = ", ".join(members[:3]) + (", ..." if len(members) > 3 else "")
    return Refused(f"CONSUMER_GROUP={group!r} has {len(members)} active member(s) ({shown}); offsets move "
                   f"only while the group is empty: stop its consumers, then run this again")


class OffsetAdmin:
    def __init__(self, admin: AdminClient) -> None:
        self._admin = admin

    def read(self, group: str, topic: str, partitions: Sequence[int]) -> GroupOffsets:
        """The group's committed offsets on `topic` (all partitions, or the ones chosen)."""
        metadata = self._admin.list_topics(timeout=REQUEST_TIMEOUT_S).topics
        if topic not in metadata or metadata[topic].error is not None:
            raise Refused(f"--topic {topic!r}: no such topic")
        existing = sorted(metadata[topic].partitions)
        unknown = sorted(set(partitions) - set(existing))
        if unknown:
            raise Refused(f"--partition {','.join(map(str, unknown))}: {topic} has partitions "
                          f"{existing[0]}..{existing[-1]}")
        chosen = sorted(set(partitions)) if partitions else existing
        tps = [TopicPartition(topic, p) for p in chosen]
        starts = self._offsets(tps, OffsetSpec.earliest())
        ends = self._offsets(tps, OffsetSpec.latest())
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in chosen])
        listed = self._admin.list_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[group]
        committed = {tp.partition: tp.offset for tp in listed.result().topic_partitions or []
                     if tp.offset >= 0}
        members, state = self._members(group)
        exists = bool(committed) or bool(members) or state not in (ConsumerGroupState.DEAD, None)
        states = [PartitionState(partition=p, start=starts[p], end=ends[p], committed=committed.get(p))
                  for p in chosen]
        return GroupOffsets(group=group, topic=topic, states=states, members=members, exists=exists)

    def at_time(self, topic: str, partitions: Sequence[int], moment: datetime) -> dict[int, int]:
        """Per partition, the first offset at or after `moment` (-1: none that late)."""
        return self._offsets([TopicPartition(topic, p) for p in partitions],
                             OffsetSpec.for_timestamp(to_millis(moment)))

    def apply(self, group: str, topic: str, moves: Sequence[Move]) -> None:
        """Commit the new offsets for the group (refused by the broker if it has members)."""
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, m.partition, m.new)
                                                       for m in moves])
        future = self._admin.alter_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[group]
        try:
            result = future.result()
        except KafkaException as error:
            if _kafka_code(error) in ACTIVE_GROUP_ERRORS:
                members, _state = self._members(group)
                raise active_members_refusal(group, members or ["joining now"]) from None
            raise
        for tp in result.topic_partitions or []:
            if tp.error is not None:
                if tp.error.code() in ACTIVE_GROUP_ERRORS:
                    members, _state = self._members(group)
                    raise active_members_refusal(group, members or ["joining now"])
                raise KafkaException(tp.error)
        event("offsets.moved", f"moved the offsets of group {group} on {topic}: "
              + ", ".join(f"{m.partition}: {m.current} -> {m.new}" for m in moves),
              group=group, topic=topic, moves=[m.as_dict() for m in moves])

    def _offsets(self, tps: list[TopicPartition], spec: OffsetSpec) -> dict[int, int]:
        futures = self._admin.list_offsets({tp: spec for tp in tps}, request_timeout=REQUEST_TIMEOUT_S)
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def _members(self, group: str) -> tuple[list[str], ConsumerGroupState | None]:
        future = self._admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT_S)[group]
        try:
            found = future.result()
        except KafkaException as error:
            if _kafka_code(error) == KafkaError.GROUP_ID_NOT_FOUND:
                return [], None
            raise
        return [f"{m.client_id}@{m.host}" for m in found.members], found.state
