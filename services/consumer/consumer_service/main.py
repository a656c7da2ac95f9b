"""Entry point of the `consumer` console script: CONSUMER_WORKERS group members, one thread each.

The main thread waits for SIGTERM/SIGINT (or a worker's failure), then gives the workers
SHUTDOWN_TIMEOUT_S to finish the job in hand, commit and leave the group.
"""

from __future__ import annotations

import threading
import time

from consumer_service.counts import Counts
from consumer_service.settings import ConsumerSettings
from consumer_service.share_worker import ShareWorker
from consumer_service.tier_mover import mover_group
from consumer_service.worker import ConsumerWorker
from jobpipe.access import Need, check_access
from jobpipe.delays import tiers_of
from jobpipe.errors import ExitCode
from jobpipe.handlers import HandlerFn, load_handler
from jobpipe.handling import JobHandler
from jobpipe.kafka_clients import wait_for_broker
from jobpipe.logs import event
from jobpipe.service import Outcome, Probes, run_service

STALL_S = 60.0  # /healthz fails when a worker's loop has not turned for this long


def job_handler(settings: ConsumerSettings, function: HandlerFn) -> JobHandler:
    """The consumer's handler: its retry policy, the end-to-end time of each job, and no
    jobs_processed_total count at the handler (a member counts a job where it is done for
    good: a success that its lost partition's next owner redoes is not counted twice)."""
    return JobHandler(function, settings.retry_policy(settings.max_attempts), end_to_end=True,
                      counts_processed=False)


def needs(settings: ConsumerSettings) -> list[Need]:
    """What a member may not start without: its jobs and group; the DLQ; the delay tiers, which
    it parks jobs in and its tier mover (group <CONSUMER_GROUP>.delays) reads and writes on, to
    a lower tier or back to the jobs topic (consumer_service.tier_mover); RESULTS_TOPIC if set."""
    tiers = [tier.topic for tier in tiers_of(settings.jobs_topic)]
    results = [] if settings.results_topic is None else \
        [Need("WRITE", "topic", settings.results_topic, "RESULTS_TOPIC")]
    return [Need("READ", "topic", settings.jobs_topic, "JOBS_TOPIC"),
            Need("READ", "group", settings.consumer_group, "CONSUMER_GROUP"),
            Need("WRITE", "topic", settings.dlq_topic, "DLQ_TOPIC"),
            Need("WRITE", "topic", settings.jobs_topic, "JOBS_TOPIC: the tier mover's due jobs"),
            *(Need(operation, "topic", tier, "JOBS_TOPIC's delay tier")
              for tier in tiers for operation in ("READ", "WRITE")),
            Need("READ", "group", mover_group(settings.consumer_group), "CONSUMER_GROUP's tier mover"),
            *results]


def consume(settings: ConsumerSettings, stop: threading.Event, probes: Probes) -> Outcome:
    handler = job_handler(settings, load_handler(settings.handler))
    wait_for_broker(settings, stop)
    check_access(settings, needs(settings))
    metrics_on = bool(settings.metrics_port)
    workers: list[ConsumerWorker | ShareWorker] = [
        ShareWorker(number, settings, handler, stop, probes.ready) if settings.consumer_mode == "share"
        else ConsumerWorker(number, settings, handler, stop, probes.ready, metrics_on=metrics_on)
        for number in range(1, settings.consumer_workers + 1)]
    failures: list[BaseException] = []

    def run(worker: ConsumerWorker | ShareWorker) -> None:
        try:
            worker.run()
        except BaseException as error:
            failures.append(error)
            stop.set()

    threads = [threading.Thread(target=run, args=(worker,), name=f"consumer-{worker.number}", daemon=True)
               for worker in workers]
    probes.alive = lambda: all(time.monotonic() - w.heartbeat < STALL_S for w in workers)
    for thread in threads:
        thread.start()
    stop.wait()
    deadline = time.monotonic() + settings.shutdown_timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    counts = Counts()
    for worker in workers:
        counts.add(worker.counts)
    outcome = Outcome(ExitCode.OK, vars(counts))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck:
        event("service.stuck", f"{', '.join(stuck)} did not stop within {settings.shutdown_timeout_s:g} s",
              level="ERROR", threads=stuck)
        outcome.exit_code = ExitCode.FAILURE
    if failures:
        raise failures[0]
    return outcome


def main() -> None:
    run_service("consumer", ConsumerSettings, consume)
