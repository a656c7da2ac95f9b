"""Entry point of the `inmemory` console script: the pipeline without a broker.

PRODUCERS threads put jobs on a queue of QUEUE_CAPACITY (blocking while it is full, which
is the backpressure); CONSUMERS threads run the same HANDLER with the same retry policy
as the Kafka consumer. Jobs that exhaust MAX_ATTEMPTS are dead-lettered to the log. On
completion, or on SIGTERM after the producers stop, the consumers drain the queue, then
the service exits: 0 when every job made was processed or dead-lettered.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from inmemory_service.bounded_queue import BoundedQueue
from inmemory_service.settings import InMemorySettings
from jobpipe import metrics
from jobpipe.errors import ExitCode
from jobpipe.handlers import load_handler
from jobpipe.handling import JobHandler, Next, log_dead_lettered, log_processed, log_retry
from jobpipe.job import Job
from jobpipe.logs import enabled, event
from jobpipe.service import Outcome, Probes, run_service

WAKE_S = 0.2  # blocked queue calls wake this often to notice a stop
METRICS_BATCH = 100  # jobs_produced is updated once per this many jobs (a lock each time)


@dataclass
class Tally:
    """One thread's counts: each thread writes only its own, so no lock (a lock per job cost
    more than the queue, issue 6); they are summed at the end."""

    produced: int = 0
    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0

    @classmethod
    def total(cls, tallies: list[Tally]) -> Tally:
        return cls(**{name: sum(getattr(t, name) for t in tallies) for name in vars(cls())})


class InMemoryPipeline:
    def __init__(self, settings: InMemorySettings, handler: JobHandler, stop: threading.Event) -> None:
        self._settings = settings
        self._handler = handler
        self._stop = stop  # SIGTERM: producers stop making jobs
        self._abort = threading.Event()  # shutdown budget spent: consumers stop waiting
        self._deadline: float | None = None  # when the budget is spent, once stopping
        self._queue: BoundedQueue[Job | None] = BoundedQueue(settings.queue_capacity)
        metrics.QUEUE_DEPTH.set_function(self._queue.qsize)  # read when scraped, not per job
        self._log_jobs = enabled("INFO")
        self._producer_tallies = [Tally() for _ in range(settings.producers)]
        self._consumer_tallies = [Tally() for _ in range(settings.consumers)]

    def run(self) -> Outcome:
        producers = [threading.Thread(target=self._produce, args=(n,), name=f"producer-{n}", daemon=True)
                     for n in range(1, self._settings.producers + 1)]
        consumers = [threading.Thread(target=self._consume, args=(n,), name=f"consumer-{n}", daemon=True)
                     for n in range(1, self._settings.consumers + 1)]
        for thread in producers + consumers:
            thread.start()
        for thread in producers:
            self._join(thread)
        for _ in consumers:  # one end-of-work marker per consumer, after every job
            self._put_end_marker()
        for thread in consumers:
            self._join(thread)
        tally = Tally.total(self._producer_tallies + self._consumer_tallies)
        done = tally.processed + tally.dead_lettered
        counts = vars(tally) | {"abandoned": tally.produced - done}
        return Outcome(ExitCode.OK if done == tally.produced else ExitCode.FAILURE, counts)

    def _out_of_time(self) -> bool:
        """After SIGTERM, True once the shutdown budget is spent (then consumers stop waiting).

        The budget starts when the signal is seen, wherever the main thread is waiting (for
        producers blocked on a full queue, to queue the end markers, or for consumers)."""
        if self._abort.is_set():
            return True
        if not self._stop.is_set():
            return False
        now = time.monotonic()
        if self._deadline is None:  # a fifth of the budget is left for the exit itself
            self._deadline = self._settings.work_deadline(now)
        if now >= self._deadline:
            self._abort.set()
        return self._abort.is_set()

    def _join(self, thread: threading.Thread) -> None:
        while thread.is_alive() and not self._out_of_time():
            thread.join(WAKE_S)

    def _put_end_marker(self) -> None:
        """Queue one consumer's end-of-work marker; give up once the shutdown budget is spent."""
        while not self._out_of_time():
            try:
                self._queue.put(None, timeout=WAKE_S)
            except queue.Full:
                continue
            return

    def _produce(self, number: int) -> None:
        """Make and queue jobs until done or stopped. A put blocks while the queue is full and
        has no timeout (one cost 5-10 % of a job): the consumers make room, or, if they cannot
        within the shutdown budget, the main thread ends the process without this daemon."""
        total = self._settings.jobs_per_producer
        tally = self._producer_tallies[number - 1]
        put = self._queue.put
        seq = unreported = 0
        while (total == 0 or seq < total) and not self._stop.is_set():
            job = Job.new(number, seq)
            tally.produced += 1  # before the put: a consumer may finish it before this line runs
            put(job)
            unreported += 1
            if unreported == METRICS_BATCH:
                metrics.JOBS_PRODUCED.inc(unreported)
                unreported = 0
            if self._log_jobs:
                event("job.produced", f"producer {number} queued {job.key}",
                      id=job.id, key=job.key, producer=number, seq=seq)
            seq += 1
        metrics.JOBS_PRODUCED.inc(unreported)

    def _consume(self, number: int) -> None:
        """Work through jobs until this consumer's end marker (a get has no timeout, like a put)."""
        name = f"consumer {number}"
        tally = self._consumer_tallies[number - 1]
        get = self._queue.get
        while (job := get()) is not None:
            self._work(job, name, tally)

    def _work(self, job: Job, name: str, tally: Tally) -> None:
        attempt_number = 1
        while True:
            attempt = self._handler.attempt(job, attempt_number)
            step = self._handler.next_step(attempt)
            if step is Next.DONE:
                if self._log_jobs:
                    log_processed(attempt, name)
                tally.processed += 1
                return
            if step is Next.DEAD_LETTER:
                log_dead_lettered(job.key, job.id, reason=attempt.error_text, attempts=attempt.number,
                                  consumer=name, destination="log")
                tally.dead_lettered += 1
                return
            delay = self._handler.policy.delay_s(attempt.number)
            log_retry(attempt, delay, name)
            tally.retried += 1
            if self._abort.wait(delay):
                return
            attempt_number += 1


def run_pipeline(settings: InMemorySettings, stop: threading.Event, probes: Probes) -> Outcome:
    handler = JobHandler(load_handler(settings.handler), settings.retry_policy(settings.max_attempts))
    probes.ready.set()
    return InMemoryPipeline(settings, handler, stop).run()


def main() -> None:
    run_service("inmemory", InMemorySettings, run_pipeline)
