"""The consumer group's lag as the broker sees it, for Prometheus (compose profile `monitoring`).

Each consumer replica reports `consumer_lag` for the partitions it owns, from librdkafka's
statistics; when every replica is stopped, stuck outside the group or crashed, nobody does,
and that is exactly when lag matters. This process is not a member of the group: every
INTERVAL_S it reads the group's committed offsets and the partitions' end offsets from the
broker (as `topic-admin describe` does) and serves

- `consumer_group_lag{group,topic,partition}`: the jobs between where the group's next
  consumer starts (its committed offset, or the earliest one where it has committed nothing)
  and the partition's end (jobpipe.group_offsets, as `topic-admin describe` shows it);
- `consumer_group_members{group}`: members of the group;
- `consumer_group_lag_updated_timestamp_seconds{group}`: when the broker last answered;
- `jobs_dead_letters_waiting{topic,partition}`: dead letters in DLQ_TOPIC's partition not yet
  re-driven: its end offset minus its start offset (every offset of the DLQ is a dead letter:
  it is written without transactions), minus the offsets between the two that the redrive
  ledger (`<DLQ_TOPIC>.redriven`, jobpipe.redrive_ledger) lists as moved by a committed
  `topic-admin redrive`. A letter re-driven and dead-lettered again is a new one, waiting.

While the broker does not answer, the lag, member and waiting series are not exported (their
last values would look current on a dashboard); the timestamp stays, and JobpipeLagUnknown fires
on its age.

Run with the consumer image: `python -m consumer_service.lag_exporter` (same settings as the
consumer: KAFKA_*, JOBS_TOPIC, CONSUMER_GROUP, METRICS_PORT).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

from consumer_service.settings import ConsumerSettings
from jobpipe.errors import ExitCode
from jobpipe.group_offsets import GroupReader, NoSuchTopic
from jobpipe.kafka_clients import admin_config, connection_config, extra_config, wait_for_broker
from jobpipe.logs import event
from jobpipe.redrive_ledger import Range, dead_letters_waiting, ledger_topic, merged, read_ledger_record
from jobpipe.service import Outcome, Probes, run_service

INTERVAL_S = 5.0
REQUEST_TIMEOUT_S = 4.0

GROUP_LAG = Gauge("consumer_group_lag", "Jobs in the partition not yet committed by the group "
                  "(end offset minus committed offset), read from the broker.",
                  ["group", "topic", "partition"])
GROUP_MEMBERS = Gauge("consumer_group_members", "Members of the consumer group.", ["group"])
UPDATED = Gauge("consumer_group_lag_updated_timestamp_seconds",
                "When the broker last answered the lag exporter (Unix time).", ["group"])
DEAD_LETTERS_WAITING = Gauge(
    "jobs_dead_letters_waiting", "Dead letters in the DLQ partition not yet re-driven (its end minus "
    "start offset, minus the offsets the redrive ledger lists), read from the broker.",
    ["topic", "partition"])


class DeadLetterBacklog:
    """Reads how many dead letters wait in DLQ_TOPIC into `jobs_dead_letters_waiting`: the DLQ's
    offsets from the broker (jobpipe.group_offsets) and the redrive ledger, followed as it grows
    (read_committed: only what committed re-drives wrote)."""

    def __init__(self, settings: ConsumerSettings, reader: GroupReader, client_id: str) -> None:
        self.dlq, self.ledger = settings.dlq_topic, ledger_topic(settings.dlq_topic)
        self._reader = reader
        self._admin = AdminClient(admin_config(settings, client_id))
        self._consumer = Consumer(connection_config(settings, client_id) | extra_config(settings, "consumer")
                                  | {"group.id": f"{client_id}-ledger", "enable.auto.commit": False,
                                     "isolation.level": "read_committed", "enable.partition.eof": True,
                                     "auto.offset.reset": "earliest"})
        self._topic_id = ""
        self._assigned: list[int] = []
        self._at_end: set[int] = set()  # ledger partitions read to their end since their last record
        self._redriven: dict[int, list[Range]] = {}
        self._partitions: set[int] = set()

    def read(self) -> None:
        try:
            partitions = self._reader.partitions(self.dlq)
        except NoSuchTopic:
            self.forget()
            return
        topic_id = self._dlq_topic_id()
        if topic_id != self._topic_id:  # a new DLQ (or the first look): the ledger is read again
            self._topic_id, self._redriven, self._assigned, self._at_end = topic_id, {}, [], set()
            self._consumer.unassign()
        if not self._follow_ledger():
            return  # the ledger is not read to its end yet: nothing exported is better than too much
        states = self._reader.states(self.dlq, partitions, committed=False)
        for state in states:
            waiting = dead_letters_waiting(state.start, state.end, self._redriven.get(state.partition, ()))
            DEAD_LETTERS_WAITING.labels(self.dlq, str(state.partition)).set(waiting)
        for gone in self._partitions - set(partitions):
            DEAD_LETTERS_WAITING.remove(self.dlq, str(gone))
        self._partitions = set(partitions)

    def _dlq_topic_id(self) -> str:
        asked = self._admin.describe_topics(TopicCollection([self.dlq]), request_timeout=REQUEST_TIMEOUT_S)
        return str(asked[self.dlq].result().topic_id)

    def _follow_ledger(self) -> bool:
        """Read what the ledger gained since the last call; True once it is read to its end."""
        try:
            partitions = self._reader.partitions(self.ledger)
        except NoSuchTopic:
            return True  # nothing was ever re-driven
        new = [p for p in partitions if p not in self._assigned]
        if new:
            self._consumer.incremental_assign([TopicPartition(self.ledger, p, OFFSET_BEGINNING) for p in new])
            self._assigned = partitions
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            wait = 0.1 if self._at_end >= set(partitions) else 0.5
            for message in self._consumer.consume(500, timeout=wait):
                error = message.error()
                partition = message.partition() or 0
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        self._at_end.add(partition)
                    elif error.fatal():
                        raise KafkaException(error)
                    continue
                self._at_end.discard(partition)
                value = message.value()
                for dlq_partition, runs in read_ledger_record(
                        value.encode() if isinstance(value, str) else value, self._topic_id).items():
                    self._redriven[dlq_partition] = merged([*self._redriven.get(dlq_partition, []), *runs])
            if self._at_end >= set(partitions):
                return True
            if time.monotonic() >= deadline:
                return False

    def forget(self) -> None:
        for partition in self._partitions:
            DEAD_LETTERS_WAITING.remove(self.dlq, str(partition))
        self._partitions = set()

    def close(self) -> None:
        self._consumer.close()


class LagReader:
    """Reads the group's lag and members into the gauges above (jobpipe.group_offsets: the lag
    `topic-admin describe` shows)."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self.group, self.topic = settings.consumer_group, settings.jobs_topic
        client_id = f"lag-exporter-{socket.gethostname()}"
        # Not a member: it never joins, so reading the group's offsets changes nothing.
        self._reader = GroupReader(settings, self.group, client_id, REQUEST_TIMEOUT_S)
        self._partitions: set[int] = set()
        self.backlog = DeadLetterBacklog(settings, self._reader, client_id)

    def read(self) -> None:
        try:
            partitions = self._reader.partitions(self.topic)
        except NoSuchTopic:
            partitions = []
        states = self._reader.states(self.topic, partitions)
        found = self._reader.describe(self.topic)
        for state in states:
            GROUP_LAG.labels(self.group, self.topic, str(state.partition)).set(state.lag)
        for gone in self._partitions - set(partitions):
            GROUP_LAG.remove(self.group, self.topic, str(gone))
        self._partitions = set(partitions)
        GROUP_MEMBERS.labels(self.group).set(len(found.members))
        self.backlog.read()
        UPDATED.labels(self.group).set(time.time())

    def forget(self) -> None:
        """The broker does not answer: the last lag and member count are not current any more,
        so they are not served as if they were (their series go until the next answer;
        `consumer_group_lag_updated_timestamp_seconds` stays and says when that was)."""
        for partition in self._partitions:
            GROUP_LAG.remove(self.group, self.topic, str(partition))
        self._partitions = set()
        with contextlib.suppress(KeyError):
            GROUP_MEMBERS.remove(self.group)
        self.backlog.forget()

    def close(self) -> None:
        self.backlog.close()
        self._reader.close()


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
                reader.forget()
                probes.ready.clear()
                if not failing:
                    event("lag.read_failed", f"could not read {reader.group}'s lag: {error}; not "
                          "exporting it until the broker answers", level="WARNING", error=str(error))
                failing = True
            stop.wait(INTERVAL_S)
    finally:
        reader.close()
    return Outcome(ExitCode.OK)


def main() -> None:
    run_service("lag-exporter", ConsumerSettings, export)


if __name__ == "__main__":
    main()
