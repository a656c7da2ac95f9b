"""The consumer's settings (environment variables), on top of the shared ones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from jobpipe.settings import HandlerSettings, KafkaSettings, ResultsSettings


class ConsumerSettings(KafkaSettings, HandlerSettings, ResultsSettings):
    consumer_group: str = Field("worker-group", min_length=1, description="Consumer group id.")
    consumer_mode: Literal["group", "share"] = Field(
        "group", description="`group`: a consumer group (partitions spread over members, order kept); "
                             "`share`: a share group (KIP-932: every member reads every partition, "
                             "jobs acknowledged one by one, no order).")
    consumer_workers: int = Field(
        1, ge=1, le=64, description="Group members in this process, one thread each.")
    consumer_concurrency: int = Field(
        1, ge=1, le=4096,
        description="Handler calls in flight per group member: threads for a plain handler, "
                    "tasks on one event loop for an `async def` one.")
    ordering: Literal["key", "partition", "none"] = Field(
        "key", description="What runs one after another: `key` (jobs with the same key, in "
                           "offset order), `partition` (a partition's jobs), or `none`.")
    max_in_flight: int = Field(
        1000, ge=1, le=1_000_000,
        description="Jobs fetched and not finished per group member; beyond it fetching pauses.")
    dlq_topic: str = Field("jobs.dlq", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
                           description="Where jobs go after MAX_ATTEMPTS, and messages that are not jobs.")
    delay_hold_max_ms: int = Field(
        10_000, ge=0, le=3_600_000,
        description="A waiting job (a delayed job, or a retry's back-off) due within this many ms is "
                    "held in memory, holding back its ordering unit; a longer wait is parked in the "
                    "delay tiers and lets the partition move on.")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="`at_least_once`: results, dead letters and offsets published one by one "
                    "(a crash can publish a job's result twice); `exactly_once`: they go in one "
                    "Kafka transaction per member per commit interval, so a read_committed reader "
                    "sees one result per job whatever happens to members.")
    static_membership: bool = Field(
        False, description="Set group.instance.id from the host name, so a restarted replica "
                           "gets its partitions back without a group-wide rebalance.")

    @field_validator("ordering", "consumer_mode", mode="before")
    @classmethod
    def _lower_choices(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("processing_guarantee", mode="before")
    @classmethod
    def _guarantee_spelling(cls, value: object) -> object:
        """`exactly-once`, `EXACTLY_ONCE` and `exactly_once` are one value."""
        return value.lower().replace("-", "_") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_once_needs_a_group(self) -> ConsumerSettings:
        if self.consumer_mode == "share" and self.processing_guarantee == "exactly_once":
            raise ValueError("PROCESSING_GUARANTEE=exactly_once does not go with CONSUMER_MODE=share: "
                             "a share group has no transactional acknowledgement (use CONSUMER_MODE=group)")
        if self.consumer_mode == "share" and self.results_topic is not None:
            raise ValueError("RESULTS_TOPIC does not go with CONSUMER_MODE=share: the share worker "
                             "publishes no results, so a client waiting for one would time out "
                             "(use CONSUMER_MODE=group)")
        return self

    @model_validator(mode="after")
    def _share_mode_alone(self) -> ConsumerSettings:
        if self.consumer_mode == "share" and self.static_membership:
            raise ValueError("CONSUMER_MODE=share does not go with STATIC_MEMBERSHIP=true: a share "
                             "group has no partition assignment to keep")
        return self

    @model_validator(mode="after")
    def _room_for_the_concurrency(self) -> ConsumerSettings:
        if self.max_in_flight < self.consumer_concurrency:
            raise ValueError(
                f"MAX_IN_FLIGHT ({self.max_in_flight}) must not be below "
                f"CONSUMER_CONCURRENCY ({self.consumer_concurrency}): jobs in flight are held")
        return self
