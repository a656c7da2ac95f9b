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
- `consumer_group_lag_updated_timestamp_seconds{group}`: when the broker last answered.

While the broker does not answer, the first two are not exported (their last values would look
current on a dashboard); the timestamp stays, and JobpipeLagUnknown fires on its age.

Run with the consumer image: `python -m consumer_service.lag_exporter` (same settings as the
consumer: KAFKA_*, JOBS_TOPIC, CONSUMER_GROUP, METRICS_PORT).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from confluent_kafka import KafkaException
from prometheus_client import Gauge

from consumer_service.settings import ConsumerSettings
from jobpipe.errors import ExitCode
from jobpipe.group_offsets import GroupReader, NoSuchTopic
from jobpipe.kafka_clients import wait_for_broker
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
    """Reads the group's lag and members into the gauges above (jobpipe.group_offsets: the lag
    `topic-admin describe` shows)."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self.group, self.topic = settings.consumer_group, settings.jobs_topic
        # Not a member: it never joins, so reading the group's offsets changes nothing.
        self._reader = GroupReader(settings, self.group, f"lag-exporter-{socket.gethostname()}",
                                   REQUEST_TIMEOUT_S)
        self._partitions: set[int] = set()

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

    def close(self) -> None:
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
