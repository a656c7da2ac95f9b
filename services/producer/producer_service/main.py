"""Entry point of the `producer` console script.

PRODUCER_WORKERS threads each build jobs keyed `p{worker}-m{seq}` and hand them to one
idempotent librdkafka producer; the main thread serves delivery reports, which log
`job.produced` with partition and offset once the broker has acknowledged the job.
On completion or SIGTERM the producer flushes; any job not acknowledged makes it exit 1.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from jobpipe import metrics
from jobpipe.errors import ExitCode
from jobpipe.job import Job
from jobpipe.kafka_clients import producer_config, wait_for_broker
from jobpipe.logs import event
from jobpipe.service import Outcome, Probes, run_service
from producer_service.settings import ProducerSettings


class JobProducer:
    """Publishes jobs from worker threads through one shared librdkafka producer."""

    def __init__(self, settings: ProducerSettings, stop: threading.Event) -> None:
        self._settings = settings
        self._stop = stop
        self._producer = Producer(producer_config(settings, "producer", main_client=True,
                                                  partitioner=settings.partitioner))
        self._lock = threading.Lock()
        self.sent = self.produced = self.failed = 0
        self._worker_error: BaseException | None = None

    def run(self) -> Outcome:
        workers = [threading.Thread(target=self._work, args=(number,), name=f"producer-{number}",
                                    daemon=True)
                   for number in range(1, self._settings.producer_workers + 1)]
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            self._producer.poll(0.1)
        self._flush()
        counts = {"sent": self.sent, "produced": self.produced, "failed": self.failed}
        if self._worker_error is not None:
            raise self._worker_error
        return Outcome(ExitCode.FAILURE if self.failed else ExitCode.OK, counts)

    def _work(self, worker: int) -> None:
        total = self._settings.messages_per_worker
        interval = 1 / self._settings.produce_rate if self._settings.produce_rate else 0.0
        started = time.monotonic()
        seq = 0
        try:
            while (total == 0 or seq < total) and not self._stop.is_set():
                if interval and self._stop.wait(max(0.0, started + seq * interval - time.monotonic())):
                    break
                self._send(Job.new(worker, seq))
                seq += 1
        except KafkaException as error:
            self._worker_error = error
            self._stop.set()

    def _send(self, job: Job) -> None:
        def delivered(error: KafkaError | None, message: Message) -> None:
            self._on_delivery(job, error, message)

        while True:
            try:
                self._producer.produce(self._settings.jobs_topic, key=job.key, value=job.to_bytes(),
                                       on_delivery=delivered)
                break
            except BufferError:  # local queue full: serve delivery reports to make room
                self._producer.poll(0.1)
        with self._lock:
            self.sent += 1

    def _on_delivery(self, job: Job, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            with self._lock:
                self.failed += 1
            metrics.JOBS_PRODUCE_FAILED.inc()
            event("job.failed", f"producer {job.producer} could not deliver {job.key}: {error.str()}",
                  level="ERROR", id=job.id, key=job.key, error=error.str())
            return
        with self._lock:
            self.produced += 1
        metrics.JOBS_PRODUCED.inc()
        event("job.produced",
              f"producer {job.producer} produced {job.key} to partition {message.partition()} "
              f"offset {message.offset()}",
              id=job.id, key=job.key, producer=job.producer, seq=job.seq,
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


def produce(settings: ProducerSettings, stop: threading.Event, probes: Probes) -> Outcome:
    wait_for_broker(settings, stop)
    probes.ready.set()
    return JobProducer(settings, stop).run()


def main() -> None:
    run_service("producer", ProducerSettings, produce)
