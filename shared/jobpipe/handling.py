"""Running a job's handler and deciding what comes next: done, retry later, or dead-letter.

Shared by the Kafka consumer and the in-memory service so both count, time, retry and log
a job's attempts identically. The caller supplies where the job came from (`origin` fields,
e.g. partition and offset) and does the transport-specific part (commit, DLQ topic).
"""

from __future__ import annotations

from enum import Enum
from inspect import isawaitable
from time import perf_counter, time
from typing import Any

import msgspec

from jobpipe import metrics
from jobpipe.executor import is_async_handler, not_awaited
from jobpipe.handlers import HandlerFn, awaited
from jobpipe.job import Job
from jobpipe.logs import enabled, event
from jobpipe.registry import UnknownJobType
from jobpipe.retry import RetryPolicy


class Next(Enum):
    DONE = "done"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class Attempt(msgspec.Struct, gc=False):
    """The outcome of one call of the handler (a Struct: made in 0.1 us, a dataclass in 0.3)."""

    job: Job
    number: int
    duration_ms: float
    error: BaseException | None = None
    value: Any = None  # what the handler returned (published as the job's result, jobpipe.results)

    @property
    def error_text(self) -> str:
        return f"{type(self.error).__name__}: {self.error}" if self.error else ""


class JobHandler:
    """Wraps the user's handler function with timing, metrics and the retry policy."""

    def __init__(self, function: HandlerFn, policy: RetryPolicy, *, end_to_end: bool = False,
                 counts_processed: bool = True) -> None:
        """`end_to_end`: also record how long after its creation each job was done (the Kafka
        consumer; in memory that is only the queue's wait, and at 0.5 us a job it was most of
        what the in-memory service added over a bare queue loop). `counts_processed`: a success
        counts in jobs_processed_total here (in memory); the Kafka consumer counts a job where
        it is done for good instead (metrics.count_processed)."""
        self.is_async = is_async_handler(function)
        self._function = function
        # `attempt` calls an `async def` handler to completion on the thread's own event loop.
        self._call: HandlerFn = awaited(function) if self.is_async else function  # type: ignore[arg-type]
        self.policy = policy
        self._end_to_end = end_to_end
        self._counts_processed = counts_processed

    def attempt(self, job: Job, number: int) -> Attempt:
        """Call the handler once; never raises for an Exception the handler raised. Counted
        and timed here, as each job is done, in the calling thread's metrics; a success also
        records how long after its creation the job was done (job_end_to_end_seconds), where
        that is measured."""
        stats = metrics.handler_stats()
        started = perf_counter()
        try:
            result = self._call(job)
            if result is not None and isawaitable(result):  # a coroutine from a plain function
                raise not_awaited(self._function, result)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # the handler contract: raising anything fails the attempt
            elapsed = perf_counter() - started
            stats.record(elapsed, ok=False)
            return Attempt(job, number, elapsed * 1000, error)
        elapsed = perf_counter() - started  # the success path inline: it is the in-memory hot path
        stats.record(elapsed, ok=True)
        if self._counts_processed:
            stats.processed += 1
        if self._end_to_end:
            stats.record_end_to_end(time() - job.created_at.timestamp())  # 0.4 us (timeit)
        return Attempt(job, number, elapsed * 1000, None, result)

    async def attempt_async(self, job: Job, number: int) -> Attempt:
        """`attempt` for an `async def` handler, awaited on the caller's event loop."""
        stats = metrics.handler_stats()
        started = perf_counter()
        try:
            value = await self._function(job)  # type: ignore[misc]
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # the handler contract, as in `attempt` (a CancelledError too)
            elapsed = perf_counter() - started
            stats.record(elapsed, ok=False)
            return Attempt(job, number, elapsed * 1000, error)
        return self._succeeded(job, number, stats, perf_counter() - started, value)

    def _succeeded(self, job: Job, number: int, stats: metrics.HandlerStats, elapsed: float,
                   value: Any) -> Attempt:
        """The success path of `attempt_async` (`attempt` has it inline)."""
        stats.record(elapsed, ok=True)
        if self._counts_processed:
            stats.processed += 1
        if self._end_to_end:
            stats.record_end_to_end(time() - job.created_at.timestamp())
        return Attempt(job, number, elapsed * 1000, None, value)

    def next_step(self, attempt: Attempt) -> Next:
        """Done, retry, or dead-letter: after MAX_ATTEMPTS, or at once for a job whose type no
        handler takes (jobpipe.registry: retrying cannot help)."""
        if attempt.error is None:
            return Next.DONE
        if self.policy.gives_up_after(attempt.number) or isinstance(attempt.error, UnknownJobType):
            return Next.DEAD_LETTER
        return Next.RETRY


def describe_origin(origin: dict[str, Any]) -> str:
    if "partition" in origin:
        return f"partition {origin['partition']} offset {origin['offset']}"
    return "the queue"


def log_processed(attempt: Attempt, consumer: str, **origin: Any) -> None:
    if not enabled("INFO"):
        return
    job = attempt.job
    event("job.processed",
          f"{consumer} processed {job.label} from {describe_origin(origin)} "
          f"(attempt {attempt.number}, {attempt.duration_ms:.1f} ms)",
          id=job.id, key=job.key, **origin, attempt=attempt.number,
          duration_ms=round(attempt.duration_ms, 3), consumer=consumer)


def log_retry(attempt: Attempt, delay_s: float, consumer: str, **origin: Any) -> None:
    metrics.JOBS_RETRIED.inc()
    job = attempt.job
    event("job.retry",
          f"{consumer} will retry {job.label} from {describe_origin(origin)} in {delay_s * 1000:.0f} ms "
          f"after attempt {attempt.number} failed: {attempt.error_text}",
          level="WARNING", id=job.id, key=job.key, **origin, attempt=attempt.number,
          delay_ms=round(delay_s * 1000, 1), error=attempt.error_text, consumer=consumer)


def log_dead_lettered(key: str | None, job_id: str | None, *, reason: str, attempts: int,
                      consumer: str, destination: str, **origin: Any) -> None:
    metrics.JOBS_DEAD_LETTERED.inc()
    event("job.dead_lettered",
          f"{consumer} dead-lettered {label_of(key, job_id)} from {describe_origin(origin)} to "
          f"{destination} after {attempts} attempt(s): {reason}",
          level="ERROR", id=job_id, key=key, **origin, attempts=attempts, error=reason,
          destination=destination, consumer=consumer)


def label_of(key: str | None, job_id: str | None) -> str:
    """A job's name in a log line when only its key and id are at hand: its key, else its id
    (as Job.label), else `<no key>` (a message that is not a job and has no key)."""
    if key:
        return key
    return f"job {job_id}" if job_id else "<no key>"
