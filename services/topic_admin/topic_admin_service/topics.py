"""The topic operations: ensure (create or grow, never delete), reset, describe.

All are idempotent except `reset`, which deletes and re-creates on purpose (the seed's
fresh start) and only runs when asked for by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)
from tenacity import Retrying, retry_if_exception_type, stop_after_delay

from jobpipe.delays import RELEASE_HEADER, header_time, tiers_of
from jobpipe.group_offsets import GroupReader
from jobpipe.logs import event
from jobpipe.share_groups import check_share_groups, share_configs
from topic_admin_service.settings import TopicAdminSettings

REQUEST_TIMEOUT_S = 30.0
HEAD_WAIT_S = 2.0  # describe: the longest it waits to read a delay tier partition's head


def _kafka_code(error: BaseException) -> int | None:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return int(error.args[0].code())
    return None


class StillDeleting(Exception):
    """A deleted topic is not gone yet, so it cannot be created again yet."""


class TopicAdmin:
    def __init__(self, admin: AdminClient, settings: TopicAdminSettings,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """`timeout_s`: the longest `describe` waits for each answer of the broker."""
        self._admin = admin
        self._settings = settings
        self._timeout_s = timeout_s
        self._reader: GroupReader | None = None  # made by the first describe, kept for --watch
        self._tier_reader: GroupReader | None = None  # the delay movers' group (the same)
        self.tier_topics = [tier.topic for tier in tiers_of(settings.jobs_topic)]
        self.topics = [settings.jobs_topic, settings.dlq_topic, *self.tier_topics]
        if settings.results_topic is not None:  # created, grown and reset beside the others
            self.topics.append(settings.results_topic)

    # ---- ensure / reset ---------------------------------------------------------------------

    def ensure(self) -> dict[str, str]:
        """Create missing topics, grow ones with too few partitions; return what was done."""
        wanted = self._settings.jobs_partitions
        existing = self._admin.list_topics(timeout=REQUEST_TIMEOUT_S).topics
        actions: dict[str, str] = {}
        missing = [name for name in self.topics if name not in existing]
        if missing:
            actions |= self._create(missing)
        for name in self.topics:
            if name not in existing:
                continue
            have = len(existing[name].partitions)
            if have < wanted:
                futures = self._admin.create_partitions([NewPartitions(name, wanted)],
                                                        request_timeout=REQUEST_TIMEOUT_S)
                futures[name].result()
                actions[name] = "grown"
                event("topic.grown", f"grew {name} from {have} to {wanted} partitions",
                      topic=name, partitions_before=have, partitions=wanted)
            else:
                actions[name] = "unchanged"
                note = "" if have == wanted else f" (more than JOBS_PARTITIONS={wanted}; never shrunk)"
                event("topic.unchanged", f"{name} has {have} partitions{note}",
                      topic=name, partitions=have)
        if self._settings.consumer_mode == "share":
            actions[f"group {self._settings.consumer_group}"] = self._share_group_reads_from_start()
        return actions

    def _share_group_reads_from_start(self) -> str:
        """A share group starts at the latest offset by default: jobs produced before its first
        member joined would never be delivered. Set `share.auto.offset.reset=earliest` (a group
        config, KIP-932) once, before the consumers join. A cluster without share groups: exit 3,
        saying how to enable them."""
        group = self._settings.consumer_group
        check_share_groups(self._settings, group, "topic-admin-share-check")
        entry = ConfigEntry("share.auto.offset.reset", "earliest",
                            incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
        for future in self._admin.incremental_alter_configs([resource],
                                                            request_timeout=REQUEST_TIMEOUT_S).values():
            future.result()
        event("share_group.configured", f"share group {group} reads from the earliest offset",
              group=group, config={"share.auto.offset.reset": "earliest"})
        return "configured"

    def _create(self, names: list[str]) -> dict[str, str]:
        rf = self._settings.replication_factor
        new = [NewTopic(name, num_partitions=self._settings.jobs_partitions, replication_factor=rf)
               for name in names]
        actions = {}
        for name, future in self._admin.create_topics(new, request_timeout=REQUEST_TIMEOUT_S).items():
            try:
                future.result()
            except KafkaException as error:
                if _kafka_code(error) != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                actions[name] = "unchanged"  # another topic-admin created it meanwhile
                continue
            actions[name] = "created"
            event("topic.created",
                  f"created {name} with {self._settings.jobs_partitions} partitions, replication {rf}",
                  topic=name, partitions=self._settings.jobs_partitions, replication_factor=rf)
        return actions

    def reset(self) -> dict[str, str]:
        """Delete both topics (all their jobs!) and create them again, empty."""
        existing = self._admin.list_topics(timeout=REQUEST_TIMEOUT_S).topics
        doomed = [name for name in self.topics if name in existing]
        if doomed:
            for name, future in self._admin.delete_topics(doomed, request_timeout=REQUEST_TIMEOUT_S).items():
                future.result()
                event("topic.deleted", f"deleted {name}", level="WARNING", topic=name)
        # Deletion completes asynchronously: creating too early is refused as "already exists"
        # (or "marked for deletion"). Retry with the retry policy until all are created anew.
        created: set[str] = set()
        retrying = Retrying(stop=stop_after_delay(REQUEST_TIMEOUT_S),
                            wait=self._settings.retry_policy().tenacity_wait, reraise=True,
                            retry=retry_if_exception_type((StillDeleting, KafkaException)))
        for attempt in retrying:
            with attempt:
                pending = [name for name in self.topics if name not in created]
                created |= {n for n, action in self._create(pending).items() if action == "created"}
                if created != set(self.topics):
                    raise StillDeleting(f"{sorted(set(self.topics) - created)} still being deleted")
        return {name: "reset" for name in self.topics}

    # ---- describe ---------------------------------------------------------------------------

    def describe(self) -> Description:
        group = self._settings.consumer_group
        share = self._settings.consumer_mode == "share"
        if self._reader is None:
            self._reader = GroupReader(self._settings, group, "topic-admin", self._timeout_s)
        reader = self._reader
        # A share group has no committed offsets and no consumer-group members to list (and
        # librdkafka has no share-group admin call): show its configs, never a made-up lag.
        found = None if share else reader.describe(self._settings.jobs_topic)
        description = Description(group=group, members=[m.as_dict() for m in found.members] if found else [],
                                  mode=self._settings.consumer_mode,
                                  share_configs=share_configs(self._admin, group, self._timeout_s)
                                  if share else {})
        metadata = self._admin.list_topics(timeout=self._timeout_s).topics
        committed_somewhere = False
        for name in self.topics:
            if name not in metadata or metadata[name].error is not None:
                description.missing.append(name)
                continue
            if name in self.tier_topics:
                continue  # shown as tiers (`_tiers`), not partition by partition
            partitions = metadata[name].partitions
            is_jobs = name == self._settings.jobs_topic and not share
            states = reader.states(name, sorted(partitions), committed=is_jobs)
            committed_somewhere |= any(state.committed is not None for state in states)
            rows = [PartitionInfo(partition=s.partition, leader=partitions[s.partition].leader,
                                  replicas=list(partitions[s.partition].replicas),
                                  isr=list(partitions[s.partition].isrs), start_offset=s.start,
                                  end_offset=s.end, committed=s.committed,
                                  lag=s.lag if is_jobs else None)
                    for s in states]
            description.topics.append(TopicInfo(name=name, partitions=rows))
        if found is not None:
            description.group_state = found.state
            description.group_exists = found.known or committed_somewhere
        if not share:
            description.tiers = self._tiers(metadata)
        return description

    def _tiers(self, metadata: dict[str, Any]) -> list[TierInfo]:
        """Each delay tier: the jobs waiting there (not yet moved on by the movers' group) and
        when the first of them is released (the head of each partition, read)."""
        if self._tier_reader is None:
            group = f"{self._settings.consumer_group}.delays"  # consumer_service.tier_mover.mover_group
            self._tier_reader = GroupReader(self._settings, group, "topic-admin-delays", self._timeout_s)
        reader = self._tier_reader
        tiers = []
        for tier in tiers_of(self._settings.jobs_topic):
            if tier.topic not in metadata or metadata[tier.topic].error is not None:
                continue
            waiting = 0
            heads: list[float] = []
            for state in reader.states(tier.topic, sorted(metadata[tier.topic].partitions)):
                if state.lag:
                    waiting += state.lag
                    head = reader.record_at(tier.topic, state.partition, state.position, HEAD_WAIT_S)
                    released = header_time(dict(head.headers() or []).get(RELEASE_HEADER)) if head else None
                    if released is not None:
                        heads.append(released)
            tiers.append(TierInfo(tier=tier.name, topic=tier.topic, seconds=tier.seconds, waiting=waiting,
                                  next_due=datetime.fromtimestamp(min(heads), UTC).isoformat(
                                      timespec="seconds") if heads else None))
        return tiers


@dataclass
class PartitionInfo:
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]
    start_offset: int
    end_offset: int
    committed: int | None
    lag: int | None


@dataclass
class TopicInfo:
    name: str
    partitions: list[PartitionInfo]


@dataclass
class TierInfo:
    """A delay tier in `describe`: jobs waiting in it, and when its first one is released."""

    tier: str
    topic: str
    seconds: int
    waiting: int
    next_due: str | None  # RFC 3339; None: nothing waiting (or its head not read in time)


@dataclass
class Description:
    group: str
    members: list[dict[str, Any]]
    topics: list[TopicInfo] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mode: str = "group"  # CONSUMER_MODE
    group_exists: bool = True  # False: no members and no committed offsets (a typo?)
    group_state: str = ""  # the broker's state of the group (group mode), e.g. stable, empty
    share_configs: dict[str, str] = field(default_factory=dict)  # mode share: the group's configs
    tiers: list[TierInfo] = field(default_factory=list)  # the delay tiers (group mode)

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for t in self.topics for p in t.partitions)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_lag": self.total_lag}

