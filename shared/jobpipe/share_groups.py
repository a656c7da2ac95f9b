"""Whether the cluster serves share groups (KIP-932, CONSUMER_MODE=share), what to tell the
user when it does not, and how a share group is configured (its group configs).

Why it exists: share groups are a cluster feature (`share.version`). Kafka 4.2 and later turn it
on for a new cluster, but a cluster formatted by an older release (or with the feature set to 0)
answers a share consumer's first heartbeat with UNSUPPORTED_VERSION, which librdkafka makes a
fatal error. The consumer and `topic-admin ensure` both turn that into one line that says how to
enable them; librdkafka has no admin call that asks the question directly.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, ShareConsumer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from jobpipe.errors import KafkaRefused
from jobpipe.kafka_clients import connection_config
from jobpipe.settings import KafkaSettings

PROBE_TOPIC = "__jobpipe.share-check"  # never created: the probe must not acquire any record
PROBE_S = 5.0  # the refusal comes with the first heartbeat: about 1 s after start here, on 2 cores


# A share group's configs that say how its records are delivered.
SHARE_CONFIGS = ("share.auto.offset.reset", "share.record.lock.duration.ms", "share.delivery.count.limit",
                 "share.isolation.level", "share.session.timeout.ms")


def share_configs(admin: AdminClient, group: str, timeout_s: float) -> dict[str, str]:
    """The group's SHARE_CONFIGS that have a value (its own, else the broker's defaults).
    Raises KafkaException when the broker does not answer or refuses (DESCRIBE_CONFIGS)."""
    resource = ConfigResource(ResourceType.GROUP, group)
    configs = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result()
    return {name: entry.value for name, entry in sorted(configs.items())
            if name in SHARE_CONFIGS and entry.value is not None}


def refusal(group: str) -> KafkaRefused:
    return KafkaRefused(
        f"CONSUMER_MODE=share: the cluster does not serve share groups (group {group}); enable "
        "them with `kafka-features.sh --bootstrap-server <broker> upgrade --feature share.version=1` "
        "(Kafka 4.1 or later), or set CONSUMER_MODE=group")


def is_refusal(error: KafkaError) -> bool:
    """A share consumer's error that means the cluster has share groups turned off."""
    return error.code() == KafkaError.UNSUPPORTED_VERSION


def check_share_groups(settings: KafkaSettings, group: str, client_id: str) -> None:
    """Raise `refusal(group)` when the cluster refuses share groups. A member of `group`
    subscribed to a topic that does not exist heartbeats once and leaves, without a record."""
    consumer = ShareConsumer(connection_config(settings, client_id) | {"group.id": group})
    try:
        consumer.subscribe([PROBE_TOPIC])
        deadline = time.monotonic() + PROBE_S
        while time.monotonic() < deadline:
            consumer.poll(0.25)
    except KafkaException as error:
        if is_refusal(error.args[0]):
            raise refusal(group) from None
        raise
    finally:
        consumer.close()
