"""Samples the broker in the background: the jobs topic's offsets, the group's committed offsets
and members, the dead-letter topic's end offsets (the same GroupReader `topic-admin describe`
and the lag exporter read them with).

Pages read the last samples and never wait for the broker, so the console keeps answering
while the broker is away; `Status.broker_error` says since when and why (the banner).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException

from console_service.rates import Sample, progress_times
from console_service.settings import ConsoleSettings
from jobpipe.group_offsets import GroupReader, GroupState, NoSuchTopic
from jobpipe.kafka_clients import kafka_reason
from jobpipe.logs import event

COORDINATOR_ERRORS = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                      KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
HISTORY = 150  # samples kept: 5 minutes at the default 2 s

def request_timeout_s(refresh_s: float) -> float:
    """How long one request of a sample may wait: two refreshes, within 1 to 5 s (a broker
    that went away shows within seconds, and a stop never waits long for an answer)."""
    return min(5.0, max(1.0, 2 * refresh_s))


@dataclass(frozen=True)
class Status:
    """A snapshot for the pages: the samples, and the broker's state."""

    history: tuple[Sample, ...]
    progress: dict[int, datetime]  # per jobs partition: when its committed offset last moved
    broker_error: str | None  # why the last sample failed (None: it worked)
    failing_since: datetime | None
    missing: tuple[str, ...]  # topics that do not exist

    @property
    def latest(self) -> Sample | None:
        return self.history[-1] if self.history else None


class Sampler:
    def __init__(self, settings: ConsoleSettings, reader: GroupReader | None = None) -> None:
        self._settings = settings
        self._reader = reader
        self._lock = threading.Lock()
        self._history: deque[Sample] = deque(maxlen=HISTORY)
        self._progress: dict[int, datetime] = {}
        self._error: str | None = None  # why the last sample failed (None: it worked, or none yet)
        self._failing_since: datetime | None = None
        self._missing: tuple[str, ...] = ()
        self._away = False  # a failure was logged, and no sample has worked since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-sampler", daemon=True)
        self.sampled = threading.Event()  # set by each successful sample (tests wait on it)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(request_timeout_s(self._settings.console_refresh_s) * 4)
        if self._reader is not None:
            self._reader.close()

    def status(self) -> Status:
        with self._lock:
            return Status(tuple(self._history), dict(self._progress), self._error, self._failing_since,
                          self._missing)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.sample_once()
            self._stop.wait(max(0.0, self._settings.console_refresh_s - (time.monotonic() - began)))

    def sample_once(self) -> None:
        try:
            if self._reader is None:
                self._reader = GroupReader(self._settings, self._settings.consumer_group, "console",
                                           request_timeout_s(self._settings.console_refresh_s))
            sample, missing = self._take(self._reader)
        except (KafkaException, RuntimeError) as error:
            self._failed(kafka_reason(error) if isinstance(error, KafkaException) else str(error))
            return
        with self._lock:
            before = self._history[-1] if self._history else None
            self._progress = progress_times(self._progress, before, sample)
            self._history.append(sample)
            back = self._away
            self._away = False
            self._error, self._failing_since, self._missing = None, None, missing
        if back:
            event("console.broker_back", "Kafka answers again", level="INFO")
        self.sampled.set()

    def _take(self, reader: GroupReader) -> tuple[Sample, tuple[str, ...]]:
        settings = self._settings
        missing = []
        try:
            partitions = reader.partitions(settings.jobs_topic)
        except NoSuchTopic:
            partitions, missing = [], [settings.jobs_topic]
        share = settings.consumer_mode == "share"
        jobs = reader.states(settings.jobs_topic, partitions, committed=False) if partitions else []
        if partitions and not share:
            done = self._committed(reader, partitions)
            jobs = [replace(state, committed=done.get(state.partition)) for state in jobs]
        try:
            dlq_partitions = reader.partitions(settings.dlq_topic)
            dlq_end: int | None = sum(s.end for s in reader.states(settings.dlq_topic, dlq_partitions,
                                                                     committed=False))
        except NoSuchTopic:
            dlq_end, missing = None, [*missing, settings.dlq_topic]
        group = self._describe(reader) if not share else None
        return Sample(at=time.monotonic(), wall=datetime.now(UTC), jobs=tuple(jobs), dlq_end=dlq_end,
                      group_state=group.state if group else "share",
                      members=group.members if group else ()), tuple(missing)

    def _committed(self, reader: GroupReader, partitions: list[int]) -> dict[int, int]:
        """The group's committed offsets; none while its coordinator is being found (a group
        that does not exist yet, or moves after a broker restart): the broker itself answers."""
        try:
            return reader.committed(self._settings.jobs_topic, partitions)
        except KafkaException as error:
            if _about_the_coordinator(error):
                return {}
            raise

    def _describe(self, reader: GroupReader) -> GroupState:
        try:
            return reader.describe(self._settings.jobs_topic)
        except KafkaException as error:
            if _about_the_coordinator(error):
                return GroupState(self._settings.consumer_group, "unknown", ())
            raise

    def _failed(self, reason: str) -> None:
        with self._lock:
            first = not self._away
            self._away = True
            self._error = reason
            if self._failing_since is None:
                self._failing_since = datetime.now(UTC)
        if first:
            event("console.broker_away", f"Kafka does not answer: {reason}; pages show the last samples",
                  level="WARNING", error=reason)


def _about_the_coordinator(error: KafkaException) -> bool:
    first = error.args[0] if error.args else None
    return isinstance(first, KafkaError) and first.code() in COORDINATOR_ERRORS
