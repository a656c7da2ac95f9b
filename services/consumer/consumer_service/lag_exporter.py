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
  re-driven: the letters a read_committed reader of the partition gets (under exactly_once
  the DLQ also holds transaction markers and aborted records: offsets, not letters; see
  DeadLetterBacklog), less those the redrive ledger (`<DLQ_TOPIC>.redriven`,
  jobpipe.redrive_ledger) lists as moved by a committed `topic-admin redrive`. A letter
  re-driven and dead-lettered again is a new one, waiting.

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
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

from consumer_service.offsets import TP
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
    "jobs_dead_letters_waiting", "Dead letters in the DLQ partition not yet re-driven (those a "
    "read_committed reader gets, minus those the redrive ledger lists), read from the broker.",
    ["topic", "partition"])


class DeadLetterBacklog:
    """Reads how many dead letters wait in DLQ_TOPIC into `jobs_dead_letters_waiting`: the dead
    letters themselves and the redrive ledger, both read `read_committed` and followed as they
    grow (one consumer, assigned, in no group), and the DLQ's start offsets (retention).

    Why it reads the letters instead of subtracting offsets: under exactly_once the DLQ also
    holds a transaction marker per transaction and the records of aborted ones, each an offset
    and no dead letter; only a read_committed reader tells them apart (the last stable offset
    does not: it counts markers too). Each letter is read once (the DLQ's own traffic, small
    by nature); what is kept per partition is its letters' offsets as ranges, one per
    transaction that wrote some (one in all without transactions). A principal that may not
    read the DLQ gets the offset count instead (an upper bound), and a warning saying so."""

    def __init__(self, settings: ConsumerSettings, reader: GroupReader, client_id: str) -> None:
        self.dlq, self.ledger = settings.dlq_topic, ledger_topic(settings.dlq_topic)
        self._reader = reader
        self._admin = AdminClient(admin_config(settings, client_id))
        self._consumer = Consumer(connection_config(settings, client_id) | extra_config(settings, "consumer")
                                  | {"group.id": f"{client_id}-ledger", "enable.auto.commit": False,
                                     "isolation.level": "read_committed", "enable.partition.eof": True,
                                     "auto.offset.reset": "earliest"})
        self._topic_id = ""
        self._assigned: set[TP] = set()
        self._at_end: set[TP] = set()  # partitions read to their end since their last record
        self._redriven: dict[int, list[Range]] = {}
        self._letters: dict[int, list[list[int]]] = {}  # per DLQ partition: [first, last] runs
        self._dlq_readable = True  # False: READ on the DLQ refused, offsets counted instead
        self._partitions: set[int] = set()

    def read(self) -> None:
        try:
            partitions = self._reader.partitions(self.dlq)
        except NoSuchTopic:
            self.forget()
            return
        topic_id = self._dlq_topic_id()
        if topic_id != self._topic_id:  # a new DLQ (or the first look): both are read again
            self._topic_id, self._redriven, self._letters = topic_id, {}, {}
            self._assigned, self._at_end = set(), set()
            self._consumer.unassign()
        if not self._follow(partitions):
            return  # not read to the end yet: nothing exported is better than a wrong count
        states = self._reader.states(self.dlq, partitions, committed=False)
        for state in states:
            letters = self._letters.setdefault(state.partition, [])
            while letters and letters[0][1] < state.start:
                del letters[0]  # deleted by retention
            runs = [(first, last) for first, last in letters] if self._dlq_readable \
                else [(state.start, state.end - 1)]
            waiting = dead_letters_waiting(state.start, runs, self._redriven.get(state.partition, ()))
            DEAD_LETTERS_WAITING.labels(self.dlq, str(state.partition)).set(waiting)
        for gone in self._partitions - set(partitions):
            DEAD_LETTERS_WAITING.remove(self.dlq, str(gone))
        self._partitions = set(partitions)

    def _dlq_topic_id(self) -> str:
        asked = self._admin.describe_topics(TopicCollection([self.dlq]), request_timeout=REQUEST_TIMEOUT_S)
        return str(asked[self.dlq].result().topic_id)

    def _follow(self, dlq_partitions: list[int]) -> bool:
        """Read what the DLQ and the ledger gained since the last call; True once both are read
        to their end (within REQUEST_TIMEOUT_S; a long DLQ read the first time takes a few calls)."""
        try:
            wanted = {(self.ledger, p) for p in self._reader.partitions(self.ledger)}
        except NoSuchTopic:
            wanted = set()  # nothing was ever re-driven
        if self._dlq_readable:
            wanted |= {(self.dlq, p) for p in dlq_partitions}
        if new := wanted - self._assigned:
            self._consumer.incremental_assign([TopicPartition(*tp, OFFSET_BEGINNING) for tp in sorted(new)])
            self._assigned |= new
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            for message in self._consumer.consume(500, timeout=0.1 if self._at_end >= wanted else 0.5):
                self._take(message)
            if not self._dlq_readable and any(tp[0] == self.dlq for tp in wanted):
                return self._follow(dlq_partitions)  # READ on the DLQ refused: the ledger alone
            if self._at_end >= wanted:
                return True
            if time.monotonic() >= deadline:
                return False

    def _take(self, message: Message) -> None:
        tp = (message.topic() or "", message.partition() or 0)
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._at_end.add(tp)
            elif error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED and tp[0] == self.dlq:
                self._stop_reading_dlq(error)
            elif error.fatal():
                raise KafkaException(error)
            return
        self._at_end.discard(tp)
        if tp[0] == self.dlq:
            runs, offset = self._letters.setdefault(tp[1], []), message.offset() or 0
            if runs and runs[-1][1] == offset - 1:
                runs[-1][1] = offset
            else:
                runs.append([offset, offset])
            return
        value = message.value()
        for dlq_partition, redriven in read_ledger_record(
                value.encode() if isinstance(value, str) else value, self._topic_id).items():
            self._redriven[dlq_partition] = merged([*self._redriven.get(dlq_partition, []), *redriven])

    def _stop_reading_dlq(self, error: KafkaError) -> None:
        if not self._dlq_readable:
            return
        self._dlq_readable = False
        dlq = [tp for tp in self._assigned if tp[0] == self.dlq]
        self._consumer.incremental_unassign([TopicPartition(t, p) for t, p in dlq])
        self._assigned -= set(dlq)
        self._at_end -= set(dlq)
        event("dead_letters.unreadable", f"may not read {self.dlq} (DLQ_TOPIC: {error.str()}): "
              "jobs_dead_letters_waiting counts its offsets instead, too many under exactly_once "
              "(transaction markers); grant READ on it (docs/security.md)", level="WARNING",
              topic=self.dlq, error=error.str())

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
