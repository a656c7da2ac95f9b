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

Errors: ConfigError (a bad setting, before anything is sent), KafkaUnreachable / KafkaRefused
(no broker within KAFKA_WAIT_TIMEOUT_S, or it refuses this client), InvalidJob (a payload that
is not JSON, or an empty type/key/id: refused before anything is sent), SubmitFailed (the
broker refused the job, or did not acknowledge it within KAFKA_WAIT_TIMEOUT_S; the reason is
the broker's). One thread serves librdkafka's delivery reports and completes each job's
future; the context manager flushes (waits for every acknowledgement) on exit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, ClassVar, Self

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import ValidationError

from jobpipe.access import Need, check_access
from jobpipe.errors import ConfigError, DeliveryFailed, KafkaUnreachable
from jobpipe.job import InvalidJob, Job
from jobpipe.kafka_clients import kafka_reason, producer_config, wait_for_broker
from jobpipe.settings import ClientRole, KafkaSettings, describe_validation_error

Headers = Mapping[str, str | bytes | None] | None
POLL_S = 0.1  # the longest the report thread sleeps: how soon it notices `close`
FULL_WAIT_S = 0.01  # how long a submit waits for room when librdkafka's local queue is full


class ClientSettings(KafkaSettings):
    """What a client reads from the environment: the Kafka connection and JOBS_TOPIC."""

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


def encode_job(payload: Any, job_type: str | None, key: str | None, job_id: str | None) -> Job:
    """The job to send, or InvalidJob before anything is sent."""
    for name, value in (("type", job_type), ("key", key), ("id", job_id)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidJob(f"job {name} must be a non-empty string, got {value!r}")
    return Job.create(payload, type=job_type, key=key, id=job_id)


class JobClient:
    """Submits jobs to JOBS_TOPIC. Safe to share between threads; close it (or use `with`)."""

    def __init__(self, settings: KafkaSettings | None = None, *, linger_ms: float = 5.0,
                 client_id: str = "jobs-client", **fields: Any) -> None:
        """`settings`: given, or read from the environment with `fields` winning (for example
        `kafka_bootstrap_servers="kafka:9092"`, `jobs_topic="jobs"`, `kafka_wait_timeout_s=5`).
        `linger_ms`: how long librdkafka lets a batch fill (5: throughput; 0: the lowest
        latency of one job at a time). Waits for the broker (KAFKA_WAIT_TIMEOUT_S)."""
        if settings is not None and fields:
            raise TypeError("give either settings or keyword settings, not both")
        self.settings = settings if settings is not None else client_settings(**fields)
        self.settings.check_at_start()
        wait_for_broker(self.settings)
        check_access(self.settings, [Need("WRITE", "topic", self.settings.jobs_topic, "JOBS_TOPIC")])
        config = producer_config(self.settings, client_id, linger_ms=linger_ms)
        # A job not acknowledged within the wait for the broker fails (librdkafka's default: 5 min).
        config.setdefault("message.timeout.ms", max(1, int(self.settings.kafka_wait_timeout_s * 1000)))
        self.topic = self.settings.jobs_topic
        self._producer = Producer(config)
        self._check_topic()
        self._closed = threading.Event()
        self._reports = threading.Thread(target=self._serve_reports, name="jobs-client-reports", daemon=True)
        self._reports.start()

    # ---- submitting -------------------------------------------------------------------------

    def submit(self, payload: Any = None, *, type: str | None = None,  # noqa: A002 (the job's field)
               key: str | None = None, id: str | None = None,  # noqa: A002
               headers: Headers = None, timeout: float | None = None) -> str:
        """Send one job and wait for its acknowledgement; return its id. `timeout`: give up
        waiting (TimeoutError; the job may still be delivered) before the delivery timeout."""
        return self.submit_async(payload, type=type, key=key, id=id, headers=headers).result(timeout)

    def submit_async(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                     key: str | None = None, id: str | None = None,  # noqa: A002
                     headers: Headers = None) -> Future[str]:
        """Send one job without waiting: the future's result is its id once acknowledged, or
        SubmitFailed. InvalidJob (nothing sent) is raised here."""
        job = encode_job(payload, type, key, id)
        future: Future[str] = Future()
        job_id = job.id

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                future.set_result(job_id)
            else:
                future.set_exception(SubmitFailed(job_id, error.str()))

        self.send(job, headers, delivered)
        return future

    def submit_many(self, payloads: Iterable[Any], *, type: str | None = None,  # noqa: A002
                    headers: Headers = None) -> list[str]:
        """Send a job for each payload (no key) and wait for all; return their ids in order.
        SubmitFailed (the first failure's reason; `.failed` maps every failed id to its
        reason) if any was not acknowledged; every other job was."""
        batch = _Batch()
        ids = [self.send(encode_job(payload, type, None, None), headers, batch.delivered)
               for payload in payloads]
        failed = batch.wait(len(ids))
        if failed:
            first = next(iter(failed))
            raise SubmitFailed(first, f"{failed[first]} ({len(failed)} of {len(ids)} jobs failed)", failed)
        return ids

    def send(self, job: Job, headers: Headers, delivered: Callable[[KafkaError | None, Message], None],
             *, wait_for_room: bool = True) -> str:
        """Hand `job` to librdkafka; `delivered` is called with its report (on the report
        thread). While librdkafka's local queue is full, waits for room, or raises BufferError
        if not `wait_for_room`. Returns the job's id."""
        if self._closed.is_set():
            raise RuntimeError("the job client is closed")
        try:
            value = job.to_bytes()
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as error:
            raise InvalidJob(f"the payload is not JSON-serialisable: {error}") from None
        header_map = dict(headers) if headers else None
        while True:
            try:
                self._producer.produce(self.topic, value, job.key, headers=header_map,
                                       on_delivery=delivered)
                return job.id
            except BufferError:  # full: the report thread makes room
                if not wait_for_room:
                    raise
                if self._closed.wait(FULL_WAIT_S):
                    raise SubmitFailed(job.id, "the client was closed while waiting for room") from None
            except KafkaException as error:
                raise SubmitFailed(job.id, kafka_reason(error)) from None

    # ---- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> int:
        """Wait for the acknowledgement of every job sent so far (at most `timeout` seconds);
        return how many are still unacknowledged."""
        remaining = self._producer.flush(-1 if timeout is None else timeout)
        return int(remaining)

    def close(self) -> None:
        """Flush, then stop. Every job sent before has its outcome (a result or SubmitFailed)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._reports.join()
        self._producer.flush()  # bounded: every job is reported within message.timeout.ms

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

    def _serve_reports(self) -> None:
        poll, closed = self._producer.poll, self._closed.is_set
        while not closed():
            poll(POLL_S)


class _Batch:
    """The outcomes of `submit_many`'s jobs: counted, failures by id, one wake-up at the end."""

    def __init__(self) -> None:
        self._done = 0
        self._expected: int | None = None
        self._failed: dict[str, str] = {}
        self._finished = threading.Condition()

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        with self._finished:
            self._done += 1
            if error is not None:
                self._failed[_job_id(message)] = error.str()
            if self._done == self._expected:
                self._finished.notify_all()

    def wait(self, expected: int) -> dict[str, str]:
        with self._finished:
            self._expected = expected
            self._finished.wait_for(lambda: self._done >= expected)
        return self._failed


def _job_id(message: Message) -> str:
    try:
        return Job.from_bytes(message.value()).id
    except InvalidJob:
        return "?"


class AsyncJobClient:
    """`JobClient` for asyncio: `await client.submit(...)`; never blocks the event loop (the
    wait for the broker and the final flush run on a thread)."""

    def __init__(self, settings: KafkaSettings | None = None, *, linger_ms: float = 5.0,
                 client_id: str = "jobs-client", **fields: Any) -> None:
        self._arguments: dict[str, Any] = {"settings": settings, "linger_ms": linger_ms,
                                           "client_id": client_id, **fields}
        self._client: JobClient | None = None

    async def open(self) -> Self:
        """Check the settings and wait for the broker (on a thread)."""
        if self._client is None:
            self._client = await asyncio.to_thread(lambda: JobClient(**self._arguments))
        return self

    async def submit(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                     key: str | None = None, id: str | None = None,  # noqa: A002
                     headers: Headers = None) -> str:
        """Send one job; return its id once acknowledged, or raise SubmitFailed."""
        return await (await self.submit_async(payload, type=type, key=key, id=id, headers=headers))

    async def submit_async(self, payload: Any = None, *, type: str | None = None,  # noqa: A002
                           key: str | None = None, id: str | None = None,  # noqa: A002
                           headers: Headers = None) -> asyncio.Future[str]:
        """Send one job without waiting for it: await the returned future for its id."""
        client = self._open_client()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        job = encode_job(payload, type, key, id)
        job_id = job.id

        def delivered(error: KafkaError | None, _message: Message) -> None:  # the report thread
            loop.call_soon_threadsafe(_settle, future, job_id, error)

        while True:
            try:
                client.send(job, headers, delivered, wait_for_room=False)
                return future
            except BufferError:
                await asyncio.sleep(FULL_WAIT_S)

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
        return self._client


def _settle(future: asyncio.Future[str], job_id: str, error: KafkaError | None) -> None:
    if future.done():  # cancelled by the caller: the job was still sent
        return
    if error is None:
        future.set_result(job_id)
    else:
        future.set_exception(SubmitFailed(job_id, error.str()))
