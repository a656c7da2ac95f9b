"""The producer's settings (environment variables), on top of the shared Kafka settings."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from jobpipe.settings import ClientRole, KafkaSettings

Partitioner = Literal["murmur2_random", "murmur2", "fnv1a_random", "fnv1a", "consistent_random",
                      "consistent", "random"]


class ProducerSettings(KafkaSettings):
    kafka_client_roles: ClassVar[tuple[ClientRole, ...]] = ("producer", "admin")  # admin: the broker wait

    producer_workers: int = Field(
        2, ge=1, le=256,
        description="Producer workers, each sending its own keys p{n}-m0, p{n}-m1, ... (the seed's 2).")
    messages_per_worker: int = Field(
        10, ge=0, le=1_000_000_000, description="Jobs each worker sends; 0 = until stopped.")
    produce_rate: float = Field(
        0.0, ge=0, le=1_000_000, description="Jobs per second per worker; 0 = as fast as possible.")
    partitioner: Partitioner = Field(
        "murmur2_random",
        description="librdkafka partitioner: `murmur2_random` places keys like the Java client; "
                    "`fnv1a_random` like the seed's kafka-go Hash balancer.")
    producer_linger_ms: float = Field(
        5.0, ge=0, le=900_000,
        description="librdkafka linger.ms: how long a batch waits to fill before it is sent. "
                    "5 suits throughput; 0 gives the lowest latency (docs/performance.md).")
