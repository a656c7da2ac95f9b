"""Submitting jobs from an application: `JobClient` (threads) and `AsyncJobClient` (asyncio).

Why it exists: without it, an application had to hand-craft the wire format and a producer
configuration. A client has the services' settings (KAFKA_*, JOBS_TOPIC, KAFKA_WAIT_TIMEOUT_S
from the environment, or keyword arguments named like them in lower case), the same start-up
checks (every librdkafka property, the wait for the broker, the WRITE permission on the jobs
topic) and the producer's guarantees (acks=all, idempotence). `submit` returns the job's id
once the broker acknowledged the job, or raises: nothing is dropped silently.

    with JobClient() as client:
        job_id = client.submit({"width": 640}, type="resize", key="image-42")
        futures = [client.submit_async(p, type="resize") for p in payloads]  # no wait per job
        size = client.submit_for_result({"width": 640}, type="resize").result(timeout=30)

`submit_for_result` (with RESULTS_TOPIC set) waits for the handler's return value, read from
RESULTS_TOPIC (jobpipe.result_waiter); `submit_and_wait` is the one-call form.

Errors: ConfigError (a bad setting, before anything is sent), KafkaUnreachable / KafkaRefused
(no broker within KAFKA_WAIT_TIMEOUT_S, or it refuses this client), InvalidJob (a payload that
is not JSON, or an empty type/key/id: refused before anything is sent), SubmitFailed (the
broker refused the job, or did not acknowledge it within KAFKA_WAIT_TIMEOUT_S; the reason is
the broker's). The context manager flushes (waits for every acknowledgement) on exit.

Delivery reports are served by whoever needs them, one thread at a time (`_serve`): a thread
waiting for a result, a flush or a batch polls librdkafka itself, and a submitting thread
serves what has come every REPORT_EVERY jobs, as the producer service does. A report thread
polling beside a submitting one cost a third of the rate in GIL hand-overs (300k jobs: 286k/s
served inline, 201k/s from a second thread). AsyncJobClient, whose event loop must never
wait in librdkafka, has a report thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Self

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import ValidationError

from jobpipe.access import Need, check_access
from jobpipe.client_check import check_client_configs
from jobpipe.errors import ConfigError, DeliveryFailed, KafkaUnreachable
from jobpipe.job import InvalidJob, Job
from jobpipe.kafka_clients import kafka_reason, producer_config, wait_for_broker
from jobpipe.result_waiter import JobFailed, ResultFuture, ResultTimeout, ResultWaiter, value_of  # noqa: F401
from jobpipe.results import Result
from jobpipe.settings import ClientRole, KafkaSettings, ResultsSettings, describe_validation_error

Headers = Mapping[str, str | bytes | None] | None
Delay = float | timedelta | None  # submit's delay=: seconds, or a timedelta
POLL_S = 0.1  # the longest one poll waits (a waiter then checks its deadline, the report thread `close`)
FULL_WAIT_S = 0.01  # how long a submit waits for room when librdkafka's local queue is full
REPORT_EVERY = 1000  # jobs submitted between serving the reports that have come


class ClientSettings(KafkaSettings, ResultsSettings):
    """What a client reads from the environment: the Kafka connection, JOBS_TOPIC and
    RESULTS_TOPIC (where `submit_for_result` waits)."""

    kafka_client_roles: ClassVar[tuple[ClientRole, ...]] = ("producer", "admin")  # admin: the wait


class SubmitFailed(DeliveryFailed):
    """The broker did not acknowledge a job: it refused it (the reason is the broker's), or no
    acknowledgement came within the delivery timeout."""

    def __init__(self, job_id: str, reason: str, failed: dict[str, str] | None = None) -> None:
        super().__init__(f"job {job_id} was not acknowledged: {reason}")
        self.job_id = job_id
        self.reason = reason
        self.failed = failed if failed is not None else {job_id: reason}  # every failed job's reason


class TopicMissing(KafkaUnreachable):
    """JOBS_TOPIC does not exist (or this client may not see it)."""


def client_settings(**fields: Any) -> ClientSettings:
    """Settings from the environment, `fields` (named like the variables, in lower case) winning;
    ConfigError naming the variable on a bad value."""
    try:
        return ClientSettings(**fields)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


def encode_job(payload: Any, job_type: str | None, key: str | None, job_id: str | None, *,
               delay: Delay = None, at: datetime | None = None) -> Job:
    """The job to send, or InvalidJob before anything is sent."""
    if not (_fine(job_type) and _fine(key) and _fine(job_id)):
        for name, value in (("type", job_type), ("key", key), ("id", job_id)):
            if not _fine(value):
                raise InvalidJob(f"job {name} must be a non-empty string, got {value!r}")
    not_before = None if delay is None and at is None else not_before_of(delay, at, datetime.now(UTC))
    return Job.create(payload, type=job_type, key=key, id=job_id, not_before=not_before)


def not_before_of(delay: Delay, at: datetime | None, now: datetime) -> datetime | None:
    """A job's `not_before` from submit's `delay=` (seconds, or a timedelta, from `now`) or
    `at=` (a time-zone aware datetime); InvalidJob if they are wrong."""
    if delay is not None and at is not None:
        raise InvalidJob("give delay= or at=, not both")
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
            raise InvalidJob(f"at= must be a time-zone aware datetime, got {at!r}")
        return at
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool) and math.isfinite(delay):
        seconds = float(delay)
    else:
        raise InvalidJob(f"delay= must be seconds (a number) or a timedelta, got {delay!r}")
    if seconds < 0:
        raise InvalidJob(f"delay= must not be negative, got {delay!r}")
    try:
        return now + timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidJob(f"delay= is too long (past the year 9999), got {delay!r}") from None


def _fine(value: object) -> bool:
    """An optional type, key or id: absent, or a non-empty string."""
    return value is None or (isinstance(value, str) and value != "")


class JobClient:
    """Submits jobs to JOBS_TOPIC. Safe to share between threads; close it (or use `with`)."""

    def __init__(self, settings: KafkaSettings | None = None, *, linger_ms: float = 5.0,
                 client_id: str = "jobs-client", report_thread: bool = False, **fields: Any) -> None:
        """`settings`: given, or read from the environment with `fields` winning (for example
        `kafka_bootstrap_servers="kafka:9092"`, `jobs_topic="jobs"`, `kafka_wait_timeout_s=5`).
        `linger_ms`: how long librdkafka lets a batch fill (5: throughput; 0: the lowest
        latency of one job at a time). `report_thread`: serve delivery reports on a thread of
        their own as they come (futures settle without anyone waiting). Waits for the broker
        (KAFKA_WAIT_TIMEOUT_S)."""
        if settings is not None and fields:
            raise TypeError("give either settings or keyword settings, not both")
        self.settings = settings if settings is not None else client_settings(**fields)
        check_client_configs(self.settings)  # the start-up checks the services make
        wait_for_broker(self.settings)
        check_access(self.settings, [Need("WRITE", "topic", self.settings.jobs_topic, "JOBS_TOPIC")])
        config = producer_config(self.settings, client_id, linger_ms=linger_ms)
        # A job not acknowledged within the wait for the broker fails (librdkafka's default: 5 min).
        config.setdefault("message.timeout.ms", max(1, int(self.settings.kafka_wait_timeout_s * 1000)))
        self.topic = self.settings.jobs_topic
        self._producer = Producer(config)
        self._check_topic()
        self._closed = threading.Event()
        self._polling = threading.Lock()  # held by the one thread that polls librdkafka
        # Notified once per batch of reports served (not per job): what waiters who are not
        # polling themselves wait on.
        self._settled = threading.Condition()
        self._after_reports: list[Callable[[], None]] = []  # AsyncJobClient's hand-over to its loop
        self._unserved = 0  # jobs submitted since reports were last served (approximate: no lock)
        self._reports: threading.Thread | None = None
        self._client_id = client_id
        self._results: ResultWaiter | None = None  # made by the first submit_for_result
        self._results_made = threading.Lock()
        if report_thread:
            self._reports = threading.Thread(target=self._serve_reports, name="jobs-client-reports",
                                             daemon=True)
            self._reports.start()

    # ---- submitting -------------------------------------------------------------------------

    def submit(self, payload: Any = None, *, type: str | None = None,  # noqa: A002 (the job's field)
               key: str | None = None, id: str | None = None,  # noqa: A002
               headers: Headers = None, timeout: float | None = None, delay: Delay = None,
               at: datetime | None = None) -> str:
        """Send one job and wait for its acknowledgement; return its id. `timeout`: give up
        waiting (TimeoutError; the job may still be delivered) before the delivery timeout.
        `delay` (seconds or a timedelta) or `at` (an aware datetime): the job's `not_before`,
        no consumer starts it earlier (docs/delays.md)."""
        return self.submit_async(payload, type=type, key=key, id=id, headers=headers, delay=delay,
                                 at=at).result(timeout)

    def submit_async(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                     key: str | None = None, id: str | None = None,  # noqa: A002
                     headers: Headers = None, delay: Delay = None, at: datetime | None = None) -> JobFuture:
        """Send one job without waiting: the future's result is its id once acknowledged, or
        SubmitFailed. InvalidJob (nothing sent) is raised here. `delay`, `at`: as `submit`."""
        job = encode_job(payload, type, key, id, delay=delay, at=at)
        future = JobFuture(job.id, self)
        self.send(job, headers, future)
        return future  # (the hot path: every line here costs a job about 0.1 us)

    def submit_for_result(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                          key: str | None = None, id: str | None = None,  # noqa: A002
                          headers: Headers = None, delay: Delay = None,
                          at: datetime | None = None) -> ResultFuture:
        """Send one job and wait for nothing yet: the future's `result(timeout)` is the
        handler's return value, read from RESULTS_TOPIC (JobFailed if the job was
        dead-lettered, SubmitFailed if it was not acknowledged, ResultTimeout). ConfigError
        if RESULTS_TOPIC is not set. `delay`, `at`: as `submit`; a `result(timeout)` waits
        through the delay too, so give a timeout longer than it."""
        job = encode_job(payload, type, key, id, delay=delay, at=at)
        future = ResultFuture(job.id, self.result_waiter(), JobFuture(job.id, self))
        future._waiter.expect(job.id, future._settle)  # before the job is sent: see ResultWaiter
        try:
            self.send(job, headers, future._submitted)
        except BaseException:
            future._waiter.forget(job.id)
            raise
        return future

    def submit_and_wait(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                        key: str | None = None, id: str | None = None,  # noqa: A002
                        headers: Headers = None, timeout: float | None = None, delay: Delay = None,
                        at: datetime | None = None) -> Any:
        """`submit_for_result(...).result(timeout)`: the handler's return value (`timeout`
        includes the delay)."""
        return self.submit_for_result(payload, type=type, key=key, id=id, headers=headers, delay=delay,
                                      at=at).result(timeout)

    def result_waiter(self) -> ResultWaiter:
        """The reader of RESULTS_TOPIC, made on first use; ConfigError if it is not set."""
        if self._results is None:
            with self._results_made:
                if self._results is None:
                    topic = getattr(self.settings, "results_topic", None)
                    if topic is None:
                        raise ConfigError("RESULTS_TOPIC is not set: waiting for a job's result reads "
                                          "it (set it here and on the consumer)")
                    self._results = ResultWaiter(self.settings, topic, f"{self._client_id}-results")
        return self._results

    def submit_many(self, payloads: Iterable[Any], *, type: str | None = None,  # noqa: A002
                    headers: Headers = None) -> list[str]:
        """Send a job for each payload (no key) and wait for all; return their ids in order.
        SubmitFailed (the first failure's reason; `.failed` maps every failed id to its
        reason) if any was not acknowledged; every other job was."""
        batch = _Batch()
        ids = [self.send(encode_job(payload, type, None, None), headers, batch.delivered)
               for payload in payloads]
        self.wait_for(lambda: batch.count >= len(ids), None)
        failed = batch.failed
        if failed:
            first = next(iter(failed))
            raise SubmitFailed(first, f"{failed[first]} ({len(failed)} of {len(ids)} jobs failed)", failed)
        return ids

    def send(self, job: Job, headers: Headers, delivered: Callable[[KafkaError | None, Message], None],
             *, wait_for_room: bool = True) -> str:
        """Hand `job` to librdkafka; `delivered` is called with its report (by the thread that
        serves it). While librdkafka's local queue is full, serves reports until there is room,
        or raises BufferError if not `wait_for_room`. Returns the job's id."""
        if self._closed.is_set():
            raise RuntimeError("the job client is closed")
        try:
            value = job.to_bytes()
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as error:
            raise InvalidJob(f"the payload is not JSON-serialisable: {error}") from None
        if not headers:  # the common case, without the loop (about 0.3 us a job)
            try:
                self._producer.produce(self.topic, value, job.key, on_delivery=delivered)
            except (BufferError, KafkaException):
                pass
            else:
                self._unserved += 1
                if self._unserved >= REPORT_EVERY and self._reports is None:
                    self._serve(0)
                return job.id
        header_map = dict(headers) if headers else None
        while True:
            try:
                self._producer.produce(self.topic, value, job.key, headers=header_map,
                                       on_delivery=delivered)
            except BufferError:  # full: serving reports makes room
                if not wait_for_room:
                    raise
                if self._closed.is_set():
                    raise SubmitFailed(job.id, "the client was closed while waiting for room") from None
                if not self._serve(FULL_WAIT_S):  # another thread serves them: give it time
                    time.sleep(FULL_WAIT_S)
                continue
            except KafkaException as error:
                raise SubmitFailed(job.id, kafka_reason(error)) from None
            self._unserved += 1
            if self._unserved >= REPORT_EVERY and self._reports is None:
                self._serve(0)
            return job.id

    # ---- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> int:
        """Wait for the report of every job sent so far (at most `timeout` seconds); return
        how many are still unreported."""
        self.wait_for(lambda: not len(self._producer), timeout)
        return len(self._producer)

    def close(self) -> None:
        """Flush, then stop. Every job sent before has its outcome (a result or SubmitFailed):
        librdkafka reports each within message.timeout.ms."""
        if self._closed.is_set():
            return
        self.flush()
        self._closed.set()
        if self._reports is not None:
            self._reports.join()
        if self._results is not None:
            self._results.close()

    def wait_for(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Serve reports (or wait while another thread does) until `done()`, at most `timeout`
        seconds; return done()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0:
                return done()
            if self._reports is None and self._serve(left):
                continue
            with self._settled:  # another thread polls: it notifies after each batch
                self._settled.wait_for(done, left)
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __len__(self) -> int:
        """Jobs sent and not yet acknowledged (nor failed)."""
        return len(self._producer)

    def _check_topic(self) -> None:
        """TopicMissing when JOBS_TOPIC does not exist (librdkafka would hold every job until
        its delivery timeout and then fail it)."""
        try:
            metadata = self._producer.list_topics(self.topic, timeout=self.settings.kafka_wait_timeout_s)
        except KafkaException as error:
            raise KafkaUnreachable(f"Kafka at {self.settings.kafka_bootstrap_servers} did not describe "
                                   f"topic {self.topic!r}: {kafka_reason(error)}") from None
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            reason = found.error.str() if found is not None and found.error is not None else "not listed"
            raise TopicMissing(f"topic {self.topic!r} (JOBS_TOPIC) cannot be used at "
                               f"{self.settings.kafka_bootstrap_servers}: {reason} "
                               "(create it with `topic-admin ensure`)")

    def _serve(self, timeout: float) -> bool:
        """Poll librdkafka for up to `timeout` s unless another thread is polling (False then):
        the reports that came settle their jobs, then the waiters are woken once."""
        if not self._polling.acquire(blocking=False):
            return False
        try:
            self._unserved = 0
            served = self._producer.poll(timeout)
        finally:
            self._polling.release()
        if served:
            with self._settled:
                self._settled.notify_all()
            for hand_over in self._after_reports:
                hand_over()
        return True

    def _serve_reports(self) -> None:
        """The report thread (`report_thread=True`): serves reports as they come until closed."""
        while not self._closed.is_set():
            if not self._serve(POLL_S):
                time.sleep(0.001)  # someone else is polling right now


class JobFuture(msgspec.Struct, gc=False):
    """The outcome of one `submit_async`: `result()` is the job's id once acknowledged, or
    raises SubmitFailed. Light, as a million of them may be waiting: no lock of its own (the
    client's one condition is notified once per batch of reports), and not tracked by the
    garbage collector (a Struct with gc=False; it holds no cycle): 300k futures kept in a
    list made the collector's passes a fifth of the submitting thread's time (py-spy)."""

    id: str
    _client: Any  # the JobClient, which serves the reports a waiter needs
    _done: bool = False
    _error: SubmitFailed | None = None

    def __call__(self, error: KafkaError | None, _message: Message) -> None:
        """The job's delivery report (librdkafka holds the future itself as the callback: a
        bound method per job would be an object the garbage collector tracks)."""
        if error is not None:
            self._error = SubmitFailed(self.id, error.str())
        self._done = True

    def done(self) -> bool:
        """Whether the job's report came (serving those that have, if no thread is)."""
        if not self._done and self._client._reports is None:
            self._client._serve(0)
        return self._done

    def exception(self, timeout: float | None = None) -> SubmitFailed | None:
        """SubmitFailed if the job was not acknowledged, None if it was; TimeoutError if its
        report did not come within `timeout` seconds."""
        if not self._done and not self._client.wait_for(lambda: self._done, timeout):
            raise TimeoutError(f"job {self.id}: no acknowledgement within {timeout:g} s")
        return self._error

    def result(self, timeout: float | None = None) -> str:
        """The job's id once acknowledged; raises SubmitFailed, or TimeoutError (the job may
        still be delivered) after `timeout` seconds."""
        if self._done and self._error is None:
            return self.id
        error = self.exception(timeout)
        if error is not None:
            raise error
        return self.id

    def __repr__(self) -> str:
        state = "pending" if not self._done else "failed" if self._error else "acknowledged"
        return f"JobFuture({self.id!r}, {state})"

class _Batch:
    """The outcomes of `submit_many`'s jobs: counted (on the report thread), failures by id."""

    def __init__(self) -> None:
        self.count = 0
        self.failed: dict[str, str] = {}

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed[_job_id(message)] = error.str()
        self.count += 1  # only the thread that polls (one at a time) runs this


def _job_id(message: Message) -> str:
    try:
        return Job.from_bytes(message.value()).id
    except InvalidJob:
        return "?"


class AsyncJobClient:
    """`JobClient` for asyncio: `await client.submit(...)`; never blocks the event loop (the
    wait for the broker and the final flush run on a thread). The reports of a poll reach the
    event loop it was opened on in one hand-over (call_soon_threadsafe), not one per job."""

    def __init__(self, settings: KafkaSettings | None = None, *, linger_ms: float = 5.0,
                 client_id: str = "jobs-client", **fields: Any) -> None:
        self._arguments: dict[str, Any] = {"settings": settings, "linger_ms": linger_ms,
                                           "client_id": client_id, **fields}
        self._client: JobClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reported: list[tuple[asyncio.Future[str], str, KafkaError | None]] = []  # report thread

    async def open(self) -> Self:
        """Check the settings and wait for the broker (on a thread)."""
        if self._client is None:
            self._loop = asyncio.get_running_loop()
            client = await asyncio.to_thread(lambda: JobClient(**self._arguments, report_thread=True))
            client._after_reports.append(self._hand_over)
            self._client = client
        return self

    async def submit(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                     key: str | None = None, id: str | None = None,  # noqa: A002
                     headers: Headers = None, delay: Delay = None, at: datetime | None = None) -> str:
        """Send one job; return its id once acknowledged, or raise SubmitFailed. `delay`, `at`:
        the job's `not_before`, as JobClient.submit."""
        return await (await self.submit_async(payload, type=type, key=key, id=id, headers=headers,
                                              delay=delay, at=at))

    async def submit_async(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                           key: str | None = None, id: str | None = None,  # noqa: A002
                           headers: Headers = None, delay: Delay = None,
                           at: datetime | None = None) -> asyncio.Future[str]:
        """Send one job without waiting for it: await the returned future for its id."""
        return await self._send(self._open_client(), encode_job(payload, type, key, id, delay=delay, at=at),
                                headers)

    async def _send(self, client: JobClient, job: Job, headers: Headers) -> asyncio.Future[str]:
        """Hand `job` to librdkafka (waiting on the loop while its queue is full): a future of its id."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        job_id = job.id

        def delivered(error: KafkaError | None, _message: Message) -> None:  # the report thread
            self._reported.append((future, job_id, error))

        while True:
            try:
                client.send(job, headers, delivered, wait_for_room=False)
                return future
            except BufferError:
                await asyncio.sleep(FULL_WAIT_S)

    async def submit_for_result(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                                key: str | None = None, id: str | None = None,  # noqa: A002
                                headers: Headers = None, delay: Delay = None,
                                at: datetime | None = None) -> AsyncResultFuture:
        """Send one job: `await future.result(timeout)` is the handler's return value (see
        JobClient.submit_for_result; `delay`, `at` as `submit`, and the wait includes the
        delay). The first call reads RESULTS_TOPIC's metadata on a thread."""
        client = self._open_client()
        loop = asyncio.get_running_loop()
        job = encode_job(payload, type, key, id, delay=delay, at=at)  # InvalidJob before any wait
        waiter = await asyncio.to_thread(client.result_waiter) if client._results is None else client._results
        future = AsyncResultFuture(job.id, waiter, loop)
        # Registering may read the partition's end offset from the broker: on a thread.
        await asyncio.to_thread(waiter.expect, job.id, future._settle)
        try:
            future._submitted = await self._send(client, job, headers)
        except BaseException:
            waiter.forget(job.id)
            raise
        return future

    async def submit_and_wait(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                              key: str | None = None, id: str | None = None,  # noqa: A002
                              headers: Headers = None, timeout: float | None = None, delay: Delay = None,
                              at: datetime | None = None) -> Any:
        """`await (await submit_for_result(...)).result(timeout)`."""
        future = await self.submit_for_result(payload, type=type, key=key, id=id, headers=headers,
                                              delay=delay, at=at)
        return await future.result(timeout)

    async def submit_many(self, payloads: Iterable[Any], *, type: str | None = None,  # noqa: A002
                          headers: Headers = None) -> list[str]:
        """Send a job for each payload and wait for all; their ids in order, or the first
        SubmitFailed (after every job has its outcome)."""
        futures = [await self.submit_async(payload, type=type, headers=headers) for payload in payloads]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [str(result) for result in results]

    async def close(self) -> None:
        """Flush and stop (on a thread)."""
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    def _open_client(self) -> JobClient:
        if self._client is None:
            raise RuntimeError("open the AsyncJobClient first: `async with AsyncJobClient() as client`")
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("an AsyncJobClient is used on the event loop that opened it")
        return self._client

    def _hand_over(self) -> None:
        """After a poll (report thread): the reports it served, to the event loop at once."""
        if self._reported and self._loop is not None:
            batch, self._reported = self._reported, []
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                self._loop.call_soon_threadsafe(_settle, batch)


def _settle(batch: list[tuple[asyncio.Future[str], str, KafkaError | None]]) -> None:
    for future, job_id, error in batch:
        if future.done():  # cancelled by the caller: the job was still sent
            continue
        if error is None:
            future.set_result(job_id)
        else:
            future.set_exception(SubmitFailed(job_id, error.str()))


class AsyncResultFuture:
    """`ResultFuture` for asyncio: `await future.result(timeout)`."""

    def __init__(self, job_id: str, waiter: ResultWaiter, loop: asyncio.AbstractEventLoop) -> None:
        self.id = job_id
        self._waiter = waiter
        self._loop = loop
        self._came: asyncio.Future[Result] = loop.create_future()
        self._submitted: asyncio.Future[str] | None = None

    def _settle(self, result: Result) -> None:  # the waiter's thread
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(_set_once, self._came, result)

    async def outcome(self, timeout: float | None = None) -> Result:
        """The whole result record; SubmitFailed, or ResultTimeout after `timeout` seconds."""
        async def both() -> Result:
            if self._submitted is not None:
                await self._submitted
            return await asyncio.shield(self._came)
        with self._waiter.waiting_for(self.id, timeout):
            return await asyncio.wait_for(both(), timeout)

    async def result(self, timeout: float | None = None) -> Any:
        """The handler's return value; JobFailed, SubmitFailed or ResultTimeout."""
        return value_of(await self.outcome(timeout))


def _set_once(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)
