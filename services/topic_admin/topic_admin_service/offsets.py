"""`topic-admin offsets`: read a group's committed offsets on a topic, and move them.

The plan itself is pure (offset_plan.py). Moving is refused while the group has active
members, as Kafka's own kafka-consumer-groups does: a member's next commit would overwrite
the move, and the broker refuses offset commits from outside a live group anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from jobpipe.access import Need
from jobpipe.group_offsets import GroupReader, GroupState, NoSuchTopic, PartitionState
from jobpipe.logs import event
from topic_admin_service.errors import Refused
from topic_admin_service.offset_plan import Move
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


def offsets_needs(group: str, group_variable: str, topic: str, topic_variable: str, *,
                  execute: bool) -> list[Need]:
    """The ACLs `offsets` needs: DESCRIBE on the group and the topic to read where the group is;
    READ on both to move it (Kafka asks both of an offset commit)."""
    operation: Literal["READ", "DESCRIBE"] = "READ" if execute else "DESCRIBE"
    return [Need(operation, "group", group, group_variable), Need(operation, "topic", topic, topic_variable)]


def active_members_refusal(group: str, members: Sequence[str]) -> Refused:
    shown = ", ".join(members[:3]) + (", ..." if len(members) > 3 else "")
    return Refused(f"CONSUMER_GROUP={group!r} has {len(members)} active member(s) ({shown}); offsets move "
                   f"only while the group is empty: stop its consumers, then run this again")


class OffsetAdmin:
    def __init__(self, admin: AdminClient, reader: GroupReader) -> None:
        """`reader` reads the group's offsets (its group is the one `read` and `apply` name)."""
        self._admin = admin
        self._reader = reader

    def read(self, group: str, topic: str, partitions: Sequence[int]) -> GroupOffsets:
        """The group's committed offsets on `topic` (all partitions, or the ones chosen)."""
        try:
            existing = self._reader.partitions(topic)
        except NoSuchTopic:
            raise Refused(f"--topic {topic!r}: no such topic") from None
        unknown = sorted(set(partitions) - set(existing))
        if unknown:
            raise Refused(f"--partition {','.join(map(str, unknown))}: {topic} has partitions "
                          f"{existing[0]}..{existing[-1]}")
        chosen = sorted(set(partitions)) if partitions else existing
        states = self._reader.states(topic, chosen)
        found = self._reader.describe(topic)
        exists = found.known or any(state.committed is not None for state in states)
        return GroupOffsets(group=group, topic=topic, states=states, members=self._names(found),
                            exists=exists)

    def at_time(self, topic: str, partitions: Sequence[int], moment: datetime) -> dict[int, int]:
        """Per partition, the first offset at or after `moment` (-1: none that late)."""
        return self._reader.at_time(topic, partitions, to_millis(moment))

    def apply(self, group: str, topic: str, moves: Sequence[Move]) -> None:
        """Commit the new offsets for the group (refused by the broker if it has members)."""
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, m.partition, m.new)
                                                       for m in moves])
        future = self._admin.alter_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[group]
        try:
            result = future.result()
        except KafkaException as error:
            if _kafka_code(error) in ACTIVE_GROUP_ERRORS:
                members = self._names(self._reader.describe(topic))
                raise active_members_refusal(group, members or ["joining now"]) from None
            raise
        for tp in result.topic_partitions or []:
            if tp.error is not None:
                if tp.error.code() in ACTIVE_GROUP_ERRORS:
                    members = self._names(self._reader.describe(topic))
                    raise active_members_refusal(group, members or ["joining now"])
                raise KafkaException(tp.error)
        event("offsets.moved", f"moved the offsets of group {group} on {topic}: "
              + ", ".join(f"{m.partition}: {m.current} -> {m.new}" for m in moves),
              group=group, topic=topic, moves=[m.as_dict() for m in moves])

    @staticmethod
    def _names(found: GroupState) -> list[str]:
        return [f"{m.client_id}@{m.host}" for m in found.members]
