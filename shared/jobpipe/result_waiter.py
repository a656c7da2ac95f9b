"""A client's wait for its jobs' results: RESULTS_TOPIC read one partition at a time.

Why it exists: `JobClient.submit_for_result` hands back the handler's return value with no
database in between: the consumer publishes each job's result to RESULTS_TOPIC keyed by the
job's id (jobpipe.results), and this reader waits for it. It joins no consumer group: a
waiter is registered before its job is sent, and the partition the result will land in
(`partition_for`, the producer's murmur2 placement) is assigned from its end offset at that
moment, so the result, published after the job, cannot be missed, and nothing older is read.
A partition is read only while some job waits on it (it is let go IDLE_S after the last one
is settled), so a client costs the traffic of the partitions its pending jobs hash to, not
the whole topic: more partitions spread the waiters. Records are read `read_committed`: under
PROCESSING_GUARANTEE=exactly_once a result appears once its transaction committed, and an
aborted transaction's result never does. A result that comes twice (at-least-once: a job
re-run after a crash) settles its waiter once.

One thread polls (started with the first waiter); waiters are settled from it: a
`threading.Event` for the threaded client, a callback that hands over to the event loop for
the asyncio one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition

from jobpipe.errors import KafkaUnreachable
from jobpipe.kafka_clients import connection_config, extra_config, kafka_reason
from jobpipe.logs import event
from jobpipe.results import Result, partition_for
from jobpipe.settings import KafkaSettings

POLL_S = 0.1  # the longest one poll waits (then the thread checks for closing and idle partitions)
IDLE_S = 5.0  # a partition no job has waited on for this long is let go
FETCH = 500


class ResultTimeout(TimeoutError):
    """No result came for a job within the wait's timeout."""

    def __init__(self, job_id: str, timeout: float | None, topic: str) -> None:
        super().__init__(f"job {job_id}: no result on {topic} (RESULTS_TOPIC) within {timeout:g} s; "
                         "is a consumer running with the same RESULTS_TOPIC?")
        self.job_id = job_id


class JobFailed(Exception):
    """The job was dead-lettered: its failure result says why (`error`, `attempts`)."""

    def __init__(self, result: Result) -> None:
        super().__init__(f"job {result.id} failed after {result.attempts} attempt(s): {result.error}")
        self.job_id = result.id
        self.error = result.error
        self.attempts = result.attempts
        self.result = result


Settle = Callable[[Result], None]


def value_of(outcome: Result) -> Any:
    """A result's value, or JobFailed for a failure result."""
    if not outcome.ok:
        raise JobFailed(outcome)
    return outcome.value


class ResultWaiter:
    """Reads RESULTS_TOPIC for the jobs registered with `expect`. Thread-safe."""

    def __init__(self, settings: KafkaSettings, topic: str, client_id: str) -> None:
        config = connection_config(settings, client_id) | {
            "group.id": f"jobpipe-result-waiter-{uuid.uuid4().hex}",  # never joined: assign() only
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,  # a waiting caller's latency, not throughput
        } | extra_config(settings, "consumer")
        self.topic = topic
        self._timeout_s = settings.kafka_wait_timeout_s
        self._consumer = Consumer(config)
        self._partitions = self._partition_count()
        self._lock = threading.Lock()
        self._waiting: dict[int, dict[str, Settle]] = {}  # partition -> job id -> who to tell
        self._idle_since: dict[int, float] = {}  # assigned partitions no job waits on
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def _partition_count(self) -> int:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=self._timeout_s)
        except KafkaException as error:
            raise KafkaUnreachable(f"could not describe {self.topic!r} (RESULTS_TOPIC): "
                                   f"{kafka_reason(error)}") from None
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            reason = found.error.str() if found is not None and found.error is not None else "not listed"
            raise KafkaUnreachable(f"topic {self.topic!r} (RESULTS_TOPIC) cannot be used: {reason} "
                                   "(create it with `topic-admin ensure` and RESULTS_TOPIC set)")
        return len(found.partitions)

    def partition_of(self, job_id: str) -> int:
        return partition_for(job_id, self._partitions)

    def expect(self, job_id: str, settle: Settle) -> None:
        """Call `settle` with the job's result when it comes. Must be called before the job is
        sent: the partition is read from its end as it is now."""
        if self._closed.is_set():
            raise RuntimeError("the result waiter is closed")
        partition = self.partition_of(job_id)
        with self._lock:
            waiting = self._waiting.get(partition)
            if waiting is None:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=self._timeout_s, cached=False)
                self._consumer.incremental_assign([TopicPartition(self.topic, partition, high)])
                waiting = self._waiting[partition] = {}
            self._idle_since.pop(partition, None)
            waiting[job_id] = settle
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="result-waiter", daemon=True)
                self._thread.start()

    def forget(self, job_id: str) -> None:
        """Stop waiting for `job_id` (its caller gave up)."""
        partition = self.partition_of(job_id)
        with self._lock:
            waiting = self._waiting.get(partition)
            if waiting is not None and waiting.pop(job_id, None) is not None and not waiting:
                self._idle_since[partition] = time.monotonic()

    @contextmanager
    def waiting_for(self, job_id: str, timeout: float | None) -> Iterator[None]:
        """A caller's wait for `job_id`: given up (`forget`) if it ends in an error; a
        TimeoutError becomes ResultTimeout."""
        try:
            yield
        except TimeoutError:
            self.forget(job_id)
            raise ResultTimeout(job_id, timeout, self.topic) from None
        except BaseException:
            self.forget(job_id)
            raise

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        self._consumer.close()

    def _serve(self) -> None:
        """Wait for the first record only (consume() with a timeout waits for a whole batch or
        the timeout: every result would be up to POLL_S late), then take what else has come."""
        consumer = self._consumer
        while not self._closed.is_set():
            first = consumer.poll(POLL_S)
            if first is not None:
                self._deliver([first, *consumer.consume(FETCH - 1, 0)])
            self._let_go_idle(time.monotonic())

    def _deliver(self, messages: list[Any]) -> None:
        settled: list[tuple[Settle, Result]] = []
        with self._lock:
            for message in messages:
                if message.error() is not None:
                    continue  # a transient fetch error: librdkafka retries
                waiting = self._waiting.get(message.partition())
                key = message.key()
                if not waiting or key is None:
                    continue
                settle = waiting.get(key.decode(errors="replace"))
                if settle is None:
                    continue  # another client's job, or a result delivered twice
                try:
                    result = Result.from_bytes(message.value())
                except (msgspec.DecodeError, msgspec.ValidationError) as error:
                    event("result.unreadable", f"a record on {self.topic} is not a result: {error}",
                          level="WARNING", partition=message.partition(), offset=message.offset())
                    continue
                del waiting[result.id]
                if not waiting:
                    self._idle_since[message.partition()] = time.monotonic()
                settled.append((settle, result))
        for settle, result in settled:
            settle(result)

    def _let_go_idle(self, now: float) -> None:
        with self._lock:
            idle = [partition for partition, since in self._idle_since.items()
                    if now - since >= IDLE_S and not self._waiting.get(partition)]
            if not idle:
                return
            self._consumer.incremental_unassign([TopicPartition(self.topic, p) for p in idle])
            for partition in idle:
                del self._idle_since[partition]
                self._waiting.pop(partition, None)


class ResultFuture:
    """A job submitted with `JobClient.submit_for_result`: `result(timeout)` is the handler's
    return value. `id` is the job's id."""

    def __init__(self, job_id: str, waiter: ResultWaiter, submitted: Any) -> None:
        self.id = job_id
        self._waiter = waiter
        self._submitted = submitted  # the job's JobFuture: its acknowledgement
        self._outcome: Result | None = None
        self._came = threading.Event()
        self.settled_at: float | None = None  # time.monotonic() when the result was read

    def _settle(self, result: Result) -> None:  # the waiter's thread
        self.settled_at = time.monotonic()
        self._outcome = result
        self._came.set()

    def done(self) -> bool:
        return self._came.is_set()

    def outcome(self, timeout: float | None = None) -> Result:
        """The job's whole result record (ok or not). Raises SubmitFailed if the job was not
        acknowledged, ResultTimeout if no result came within `timeout` seconds (the wait is
        given up then: the result, should it come later, is not read for this job)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._waiter.waiting_for(self.id, timeout):
            self._submitted.result(timeout)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._came.wait(left):
                raise TimeoutError
        assert self._outcome is not None
        return self._outcome

    def result(self, timeout: float | None = None) -> Any:
        """The handler's return value; JobFailed if the job was dead-lettered; SubmitFailed if
        it was never acknowledged; ResultTimeout after `timeout` seconds."""
        return value_of(self.outcome(timeout))

    def __repr__(self) -> str:
        state = "pending" if self._outcome is None else "ok" if self._outcome.ok else "failed"
        return f"ResultFuture({self.id!r}, {state})"
