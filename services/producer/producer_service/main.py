"""Entry point of the `producer` console script (`producer submit`: producer_service.submit).

PRODUCER_WORKERS workers each send their own sequence of jobs, keyed `p{worker}-m{seq}`, at
PRODUCE_RATE each, through one idempotent librdkafka producer. One thread makes and sends the
jobs of all workers in turn (one thread per worker only fought over the GIL: 2 threads sent
21k jobs/s, 1 thread 31k, on the benchmark machine of issue 6) and serves the delivery
reports as it goes; the main thread waits for it (free for the signal handler).

Per job there is only making the job and one produce() (issue 10). Acknowledgements are
counted in bulk: acknowledged = sent - still in librdkafka's hands - failed, read every
REPORT_EVERY jobs (and while pacing), which is also when jobs_produced is updated. Delivery
reports come back one by one only where they are used: every failure (logged, counted), and
every success when LOG_LEVEL lets `job.produced` through (it carries partition and offset);
above INFO librdkafka reports errors only.

On completion or SIGTERM the producer flushes; after SIGTERM (before or during the flush)
it waits at most the shutdown budget, then gives up on what is left. Any job not
acknowledged makes it exit 1.
"""

from __future__ import annotations

import sys
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from jobpipe import metrics
from jobpipe.access import Need, check_access
from jobpipe.errors import ExitCode
from jobpipe.job import InvalidJob, Job
from jobpipe.kafka_clients import producer_config, wait_for_broker
from jobpipe.logs import enabled, event
from jobpipe.service import Outcome, Probes, run_service
from producer_service import submit
from producer_service.settings import ProducerSettings

REPORT_EVERY = 1000  # jobs sent at full speed between serving reports and updating metrics
WAIT_S = 0.1  # longest single wait (queue full, flush), so a stop is noticed this soon
FULL_LOG_EVERY_S = 10.0  # a full local queue is logged at most this often


class JobProducer:
    """Publishes every worker's jobs from one sending thread through one librdkafka producer."""

    def __init__(self, settings: ProducerSettings, stop: threading.Event) -> None:
        self._settings = settings
        self._stop = stop
        self._log_jobs = enabled("INFO")
        config = producer_config(settings, "producer", partitioner=settings.partitioner,
                                 linger_ms=settings.producer_linger_ms) | {"on_delivery": self._on_delivery}
        if not self._log_jobs:
            config["delivery.report.only.error"] = True
        self._producer = Producer(config)
        # The counts have one writer at a time, so no lock: the sending thread, then (after it
        # ended) the main thread's final flush.
        self.sent = self.failed = 0
        self._counted = 0  # acknowledgements already added to jobs_produced
        self._full_since_logged = -FULL_LOG_EVERY_S  # when a full local queue was last logged
        self._worker_error: BaseException | None = None

    @property
    def produced(self) -> int:
        """Jobs acknowledged by the broker (and whose report, if any, has been served)."""
        return self.sent - len(self._producer) - self.failed

    def run(self) -> Outcome:
        sender = threading.Thread(target=self._work, name="producer-send", daemon=True)
        sender.start()
        while sender.is_alive():  # the main thread stays free for the signal handler
            sender.join(WAIT_S)
        self._flush()
        self._count_acknowledged()
        counts = {"sent": self.sent, "produced": self.produced, "failed": self.failed}
        if self._worker_error is not None:
            raise self._worker_error
        # Every job sent must be acknowledged: one whose report was not served counts too.
        return Outcome(ExitCode.OK if self.produced == self.sent else ExitCode.FAILURE, counts)

    def _work(self) -> None:
        """Round `seq` sends job `seq` of every worker; at PRODUCE_RATE, round n is due n/rate
        seconds after the start, so each worker sends PRODUCE_RATE jobs per second."""
        total = self._settings.messages_per_worker
        workers = range(1, self._settings.producer_workers + 1)
        interval = 1 / self._settings.produce_rate if self._settings.produce_rate else 0.0
        rounds_per_report = max(1, REPORT_EVERY // len(workers))
        topic, produce, new_job = self._settings.jobs_topic, self._producer.produce, Job.new
        started = time.monotonic()
        seq = 0
        try:
            while (total == 0 or seq < total) and not self._stop.is_set():
                if interval and not self._serve_reports_until(started + seq * interval):
                    break
                for worker in workers:
                    job = new_job(worker, seq)
                    try:
                        produce(topic, job.to_bytes(), job.key)
                    except BufferError:  # librdkafka's local queue is full
                        if not self._send_when_room(job):
                            return
                    self.sent += 1
                seq += 1
                if not interval and seq % rounds_per_report == 0:
                    self._producer.poll(0)
                    self._count_acknowledged()
        except KafkaException as error:
            self._worker_error = error
            self._stop.set()

    def _send_when_room(self, job: Job) -> bool:
        """Serve reports until librdkafka takes `job`; False (not sent) once asked to stop."""
        now = time.monotonic()
        if now - self._full_since_logged >= FULL_LOG_EVERY_S:
            self._full_since_logged = now
            event("producer.queue_full",
                  f"librdkafka's local queue is full ({len(self._producer)} jobs not yet acknowledged); "
                  "waiting for the broker", level="WARNING", unacknowledged=len(self._producer))
        while not self._stop.is_set():
            self._producer.poll(WAIT_S)
            try:
                self._producer.produce(self._settings.jobs_topic, job.to_bytes(), job.key)
            except BufferError:
                continue
            return True
        return False

    def _serve_reports_until(self, due: float) -> bool:
        """Serve delivery reports until `due`; False if asked to stop meanwhile."""
        while (left := due - time.monotonic()) > 0:
            if self._stop.is_set():
                return False
            # poll() counts whole milliseconds: under 1 ms it would not wait at all, and this
            # loop would spin (a whole core at PRODUCE_RATE=1000, which stalled the broker and
            # the consumer beside it: p99 latency 38 ms instead of about 10).
            self._producer.poll(min(max(left, 0.001), WAIT_S))
        self._count_acknowledged()
        return not self._stop.is_set()

    def _count_acknowledged(self) -> None:
        """Bring jobs_produced up to date (once per batch of jobs, not per job)."""
        produced = self.produced
        if produced > self._counted:
            metrics.JOBS_PRODUCED.inc(produced - self._counted)
            self._counted = produced

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        """One delivery report: every failure, and every success while `job.produced` is
        logged. What it logs comes from the message itself, so nothing per job is kept
        while the job is in flight."""
        key = (message.key() or b"").decode(errors="replace")
        if error is not None:
            self.failed += 1
            metrics.JOBS_PRODUCE_FAILED.inc()
            job = _job_in(message)
            event("job.failed",
                  f"producer {job.producer if job else '?'} could not deliver {key}: {error.str()}",
                  level="ERROR", id=job.id if job else None, key=key, error=error.str())
        elif self._log_jobs and (job := _job_in(message)) is not None:
            event("job.produced",
                  f"producer {job.producer} produced {key} to partition {message.partition()} "
                  f"offset {message.offset()}",
                  id=job.id, key=key, producer=job.producer, seq=job.seq,
                  partition=message.partition(), offset=message.offset())

    def _flush(self) -> None:
        """Wait for every report. Until a stop, as long as librdkafka keeps trying
        (message.timeout.ms); once stopped (before or during this wait), at most
        SHUTDOWN_TIMEOUT_S less a fifth kept for the exit, then what is left is given up on
        (purged, so reported and counted as failed)."""
        if waiting := len(self._producer):
            event("producer.flushing", f"sent {self.sent} job(s); waiting for the broker to "
                  f"acknowledge the last {waiting}", sent=self.sent, unacknowledged=waiting)
        deadline: float | None = None
        while self._producer.flush(WAIT_S):
            if not self._stop.is_set():
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = self._settings.work_deadline(now)
            if now >= deadline:
                left = len(self._producer)
                event("producer.flush_timeout", f"{left} job(s) not acknowledged in time; giving up",
                      level="ERROR", undelivered=left)
                self._producer.purge()
                # Serves the purged jobs' reports (counted as failed), within the fifth of the
                # budget kept for the exit.
                self._producer.flush(min(1.0, self._settings.shutdown_timeout_s * 0.1))
                return


def _job_in(message: Message) -> Job | None:
    """The job in `message` (this producer made it, so it decodes; None just in case)."""
    try:
        return Job.from_bytes(message.value())
    except InvalidJob:
        return None


def produce(settings: ProducerSettings, stop: threading.Event, probes: Probes) -> Outcome:
    wait_for_broker(settings, stop)
    check_access(settings, [Need("WRITE", "topic", settings.jobs_topic, "JOBS_TOPIC")])
    probes.ready.set()
    return JobProducer(settings, stop).run()


def main() -> None:
    """`producer`: the demo jobs; `producer submit ...`: the given jobs (producer_service.submit)."""
    if sys.argv[1:2] == ["submit"]:
        submit.main(sys.argv[2:])
    run_service("producer", ProducerSettings, produce)
