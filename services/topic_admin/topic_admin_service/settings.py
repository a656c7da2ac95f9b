"""topic-admin's settings (environment variables); the command itself comes from argv."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from jobpipe.settings import KafkaSettings, ResultsSettings


class TopicAdminSettings(KafkaSettings, ResultsSettings):
    jobs_partitions: int = Field(3, ge=1, le=10_000,
                                 description="Partitions of JOBS_TOPIC and DLQ_TOPIC (grown, never shrunk).")
    replication_factor: int = Field(1, ge=1, le=100,
                                    description="Replicas of each partition when a topic is created.")
    dlq_topic: str = Field("jobs.dlq", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
                           description="Dead-letter topic, created beside JOBS_TOPIC.")
    consumer_group: str = Field("worker-group", min_length=1,
                                description="Group whose committed offsets and lag `describe` shows.")
    consumer_mode: Literal["group", "share"] = Field(
        "group", description="`share`: `ensure` also sets the share group's "
                             "share.auto.offset.reset=earliest, so it reads what was produced before it.")
