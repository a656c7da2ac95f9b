"""The consumer group's lag as the broker sees it, for Prometheus (compose profile `monitoring`).

Each consumer replica reports `consumer_lag` for the partitions it owns, from librdkafka's
statistics; when every replica is stopped, stuck outside the group or crashed, nobody does,
and that is exactly when lag matters. This process is not a member of the group: every
INTERVAL_S it reads the group's committed offsets and the partitions' end offsets from the
broker (as `topic-admin describe` does) and serves

- `consumer_group_lag{group,topic,partition}`: end offset minus committed offset (minus the
  earliest offset where the group has committed nothing yet);
- `consumer_group_members{group}`: members of the group;
- `consumer_group_lag_updated_timestamp_seconds{group}`: when the broker last answered.

Run with the consumer image: `python -m consumer_service.lag_exporter` (same settings as the
consumer: KAFKA_*, JOBS_TOPIC, CONSUMER_GROUP, METRICS_PORT).
"""

from __future__ import annotations

import socket
import threading
import time

from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

from consumer_service.settings import ConsumerSettings
from jobpipe.errors import ExitCode
from jobpipe.kafka_clients import admin_config, connection_config, extra_config, wait_for_broker
from jobpipe.logs import event
from jobpipe.service import Outcome, Probes, run_service

INTERVAL_S = 5.0
REQUEST_TIMEOUT_S = 4.0

GROUP_LAG = Gauge("consumer_group_lag", "Jobs in the partition not yet committed by the group "
                  "(end offset minus committed offset), read from the broker.",
                  ["group", "topic", "partition"])
GROUP_MEMBERS = Gauge("consumer_group_members", "Members of the consumer group.", ["group"])
UPDATED = Gauge("consumer_group_lag_updated_timestamp_seconds",
                "When the broker last answered the lag exporter (Unix time).", ["group"])


class LagReader:
    def __init__(self, settings: ConsumerSettings) -> None:
        self.group, self.topic = settings.consumer_group, settings.jobs_topic
        client_id = f"lag-exporter-{socket.gethostname()}"
        # Not a member: it never subscribes, so reading the group's offsets changes nothing.
        self._consumer = Consumer(connection_config(settings, client_id) | extra_config(settings, "consumer")
                                  | {"group.id": self.group, "enable.auto.commit": False})
        self._admin = AdminClient(admin_config(settings, client_id))
        self._partitions: set[int] = set()

    def read(self) -> None:
        metadata = self._consumer.list_topics(self.topic, timeout=REQUEST_TIMEOUT_S)
        topic = metadata.topics.get(self.topic)
        partitions = sorted(topic.partitions) if topic is not None and topic.error is None else []
        committed = self._consumer.committed([TopicPartition(self.topic, p) for p in partitions],
                                             timeout=REQUEST_TIMEOUT_S)
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S, cached=False)
            done = tp.offset if tp.offset >= 0 else low
            GROUP_LAG.labels(self.group, self.topic, str(tp.partition)).set(max(0, high - done))
        for gone in self._partitions - set(partitions):
            GROUP_LAG.remove(self.group, self.topic, str(gone))
        self._partitions = set(partitions)
        described = self._admin.describe_consumer_groups([self.group], request_timeout=REQUEST_TIMEOUT_S)
        try:
            group = described[self.group].result(timeout=REQUEST_TIMEOUT_S * 2)
        except KafkaException as error:  # no consumer has joined yet: a group of no members
            if error.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                raise
            members = 0
        else:
            empty = group.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)
            members = 0 if empty else len(group.members)
        GROUP_MEMBERS.labels(self.group).set(members)
        UPDATED.labels(self.group).set(time.time())

    def close(self) -> None:
        self._consumer.close()


def export(settings: ConsumerSettings, stop: threading.Event, probes: Probes) -> Outcome:
    wait_for_broker(settings, stop)
    reader = LagReader(settings)
    heartbeat = [time.monotonic()]
    probes.alive = lambda: time.monotonic() - heartbeat[0] < 60 + INTERVAL_S
    failing = False
    try:
        while not stop.is_set():
            heartbeat[0] = time.monotonic()
            try:
                reader.read()
                probes.ready.set()
                if failing:
                    event("lag.read", f"reading {reader.group}'s lag again")
                failing = False
            except (KafkaException, KeyError, TimeoutError) as error:  # broker away: try again
                if not failing:
                    event("lag.read_failed", f"could not read {reader.group}'s lag: {error}",
                          level="WARNING", error=str(error))
                failing = True
                probes.ready.clear()
            stop.wait(INTERVAL_S)
    finally:
        reader.close()
    return Outcome(ExitCode.OK)


def main() -> None:
    run_service("lag-exporter", ConsumerSettings, export)


if __name__ == "__main__":
    main()
