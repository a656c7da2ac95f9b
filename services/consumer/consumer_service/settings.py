"""The consumer's settings (environment variables), on top of the shared ones."""

from __future__ import annotations

from pydantic import Field

from jobpipe.settings import HandlerSettings, KafkaSettings


class ConsumerSettings(KafkaSettings, HandlerSettings):
    consumer_group: str = Field("worker-group", min_length=1, description="Consumer group id.")
    consumer_workers: int = Field(
        1, ge=1, le=64, description="Group members in this process, one thread each.")
    dlq_topic: str = Field("jobs.dlq", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
                           description="Where jobs go after MAX_ATTEMPTS, and messages that are not jobs.")
    static_membership: bool = Field(
        False, description="Set group.instance.id from the host name, so a restarted replica "
                           "gets its partitions back without a group-wide rebalance.")
