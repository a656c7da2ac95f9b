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

from inmemory_service.settings import InMemorySettings
from jobpipe import metrics
from jobpipe.errors import ExitCode
from jobpipe.handlers import load_handler
from jobpipe.handling import JobHandler, Next, log_dead_lettered, log_processed, log_retry
from jobpipe.job import Job
from jobpipe.logs import enabled, event
from jobpipe.service import Outcome, Probes, run_service

WAKE_S = 0.2  # blocked queue calls wake this often to notice a stop


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
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=settings.queue_capacity)
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
            thread.join()
        for _ in consumers:  # one end-of-work marker per consumer, after every job
            self._put(None)
        deadline = None
        for thread in consumers:
            while thread.is_alive():
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self._settings.shutdown_timeout_s * 0.8
                if deadline is not None and time.monotonic() >= deadline:
                    self._abort.set()
                    break
                thread.join(WAKE_S)
        tally = Tally.total(self._producer_tallies + self._consumer_tallies)
        done = tally.processed + tally.dead_lettered
        counts = vars(tally) | {"abandoned": tally.produced - done}
        return Outcome(ExitCode.OK if done == tally.produced else ExitCode.FAILURE, counts)

    def _put(self, job: Job | None) -> bool:
        while not self._abort.is_set():
            try:
                self._queue.put(job, timeout=WAKE_S)
            except queue.Full:
                if job is not None and self._stop.is_set():
                    return False
                continue
            return True
        return False

    def _produce(self, number: int) -> None:
        total = self._settings.jobs_per_producer
        tally = self._producer_tallies[number - 1]
        seq = 0
        while (total == 0 or seq < total) and not self._stop.is_set():
            job = Job.new(number, seq)
            if not self._put(job):
                break
            tally.produced += 1
            metrics.JOBS_PRODUCED.inc()
            if self._log_jobs:
                event("job.produced", f"producer {number} queued {job.key}",
                      id=job.id, key=job.key, producer=number, seq=seq)
            seq += 1

    def _consume(self, number: int) -> None:
        name = f"consumer {number}"
        while not self._abort.is_set():
            try:
                job = self._queue.get(timeout=WAKE_S)
            except queue.Empty:
                continue
            if job is None:
                return
            self._work(job, name, self._consumer_tallies[number - 1])

    def _work(self, job: Job, name: str, tally: Tally) -> None:
        attempt_number = 1
        while True:
            attempt = self._handler.attempt(job, attempt_number)
            step = self._handler.next_step(attempt)
            if step is Next.DONE:
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
