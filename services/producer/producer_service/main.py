"""Entry point of the `producer` console script.

PRODUCER_WORKERS workers each send their own sequence of jobs, keyed `p{worker}-m{seq}`, at
PRODUCE_RATE each, through one idempotent librdkafka producer. One thread makes and sends the
jobs of all workers in turn (one thread per worker only fought over the GIL: 2 threads sent
21k jobs/s, 1 thread 31k, on the benchmark machine of issue 6) and serves the delivery
reports as it goes, which log `job.produced` with partition and offset once the broker has
acknowledged the job; the main thread waits for it (free for the signal handler).
On completion or SIGTERM the producer flushes; any job not acknowledged makes it exit 1.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from jobpipe import metrics
from jobpipe.errors import ExitCode
from jobpipe.job import Job
from jobpipe.kafka_clients import producer_config, wait_for_broker
from jobpipe.logs import enabled, event
from jobpipe.service import Outcome, Probes, run_service
from producer_service.settings import ProducerSettings


class JobProducer:
    """Publishes every worker's jobs from one sending thread through one librdkafka producer."""

    def __init__(self, settings: ProducerSettings, stop: threading.Event) -> None:
        self._settings = settings
        self._stop = stop
        self._producer = Producer(producer_config(settings, "producer", main_client=True,
                                                  partitioner=settings.partitioner))
        # The counts have one writer at a time, so no lock: the sending thread, then (after it
        # ended) the main thread's final flush.
        self.sent = self.produced = self.failed = 0
        self._log_jobs = enabled("INFO")
        self._worker_error: BaseException | None = None

    def run(self) -> Outcome:
        sender = threading.Thread(target=self._work, name="producer-send", daemon=True)
        sender.start()
        while sender.is_alive():  # the main thread stays free for the signal handler
            sender.join(0.1)
        self._flush()
        counts = {"sent": self.sent, "produced": self.produced, "failed": self.failed}
        if self._worker_error is not None:
            raise self._worker_error
        return Outcome(ExitCode.FAILURE if self.failed else ExitCode.OK, counts)

    def _work(self) -> None:
        """Round `seq` sends job `seq` of every worker; at PRODUCE_RATE, round n is due n/rate
        seconds after the start, so each worker sends PRODUCE_RATE jobs per second.

        This thread also serves the delivery reports (after each send, and while it waits
        for the next round), so acknowledgements keep pace with sending; served from another
        thread they lagged behind it by up to the whole local queue (100k jobs, 250 MB)."""
        total = self._settings.messages_per_worker
        workers = range(1, self._settings.producer_workers + 1)
        interval = 1 / self._settings.produce_rate if self._settings.produce_rate else 0.0
        started = time.monotonic()
        seq = 0
        try:
            while (total == 0 or seq < total) and not self._stop.is_set():
                if interval and not self._serve_reports_until(started + seq * interval):
                    break
                for worker in workers:
                    self._send(Job.new(worker, seq))
                    self.sent += 1
                seq += 1
        except KafkaException as error:
            self._worker_error = error
            self._stop.set()

    def _serve_reports_until(self, due: float) -> bool:
        """Serve delivery reports until `due`; False if asked to stop meanwhile."""
        while (left := due - time.monotonic()) > 0:
            if self._stop.is_set():
                return False
            # poll() counts whole milliseconds: under 1 ms it would not wait at all, and this
            # loop would spin (a whole core at PRODUCE_RATE=1000, which stalled the broker and
            # the consumer beside it: p99 latency 38 ms instead of about 10).
            self._producer.poll(min(max(left, 0.001), 0.1))
        return not self._stop.is_set()

    def _send(self, job: Job) -> None:
        while True:
            try:
                self._producer.produce(self._settings.jobs_topic, key=job.key, value=job.to_bytes(),
                                       on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports to make room
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        """One delivery report. What it logs comes from the message itself (its JSON is read
        only when logged), so nothing per job is kept while the job is in flight."""
        key = (message.key() or b"").decode(errors="replace")
        if error is not None:
            self.failed += 1
            metrics.JOBS_PRODUCE_FAILED.inc()
            job = _logged_fields(message)
            event("job.failed", f"producer {job.get('producer')} could not deliver {key}: {error.str()}",
                  level="ERROR", id=job.get("id"), key=key, error=error.str())
            return
        self.produced += 1
        metrics.JOBS_PRODUCED.inc()
        if self._log_jobs:
            job = _logged_fields(message)
            event("job.produced",
                  f"producer {job.get('producer')} produced {key} to partition {message.partition()} "
                  f"offset {message.offset()}",
                  id=job.get("id"), key=key, producer=job.get("producer"), seq=job.get("seq"),
                  partition=message.partition(), offset=message.offset())

    def _flush(self) -> None:
        """Wait for every report; after SIGTERM only up to SHUTDOWN_TIMEOUT_S, then give up
        on what is left (counted as failed)."""
        timeout = self._settings.shutdown_timeout_s if self._stop.is_set() else None
        left = self._producer.flush(timeout) if timeout is not None else self._producer.flush()
        if left:
            event("producer.flush_timeout", f"{left} job(s) not acknowledged in time; giving up",
                  level="ERROR", undelivered=left)
            self._producer.purge()
            self._producer.flush(1.0)


def _logged_fields(message: Message) -> dict[str, Any]:
    """id, producer and seq of the job in `message` (which this producer made, so valid JSON)."""
    fields: dict[str, Any] = json.loads(message.value() or b"{}")
    return fields


def produce(settings: ProducerSettings, stop: threading.Event, probes: Probes) -> Outcome:
    wait_for_broker(settings, stop)
    probes.ready.set()
    return JobProducer(settings, stop).run()


def main() -> None:
    run_service("producer", ProducerSettings, produce)
