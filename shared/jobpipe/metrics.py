"""Prometheus metrics of the pipeline, one definition each, served on METRICS_PORT.

The per-job ones (handler outcomes and durations) are counted without a lock: each thread
that runs handlers writes its own `HandlerStats`, and `/metrics` sums them when scraped. A
prometheus-client Counter.inc plus Histogram.observe took 0.9 us per job, most of what the
in-memory service added over a bare queue loop (issue 10). The rarer events keep the
library's Counter and are incremented as they happen (or, in the producer, per batch).
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY, CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

JOBS_PRODUCED = Counter("jobs_produced", "Jobs acknowledged by the broker (or queued, in memory).")
JOBS_PRODUCE_FAILED = Counter("jobs_produce_failed", "Jobs whose delivery failed.")
JOBS_RETRIED = Counter("jobs_retried", "Attempts scheduled again after a failure.")
JOBS_DEAD_LETTERED = Counter("jobs_dead_lettered", "Jobs given up on and sent to the dead-letter topic.")
JOBS_PARKED = Counter("jobs_parked", "Waiting jobs (delayed, or retries with a long back-off) parked "
                      "in a delay tier, per tier; a job that hops counts once per tier it enters.",
                      ["tier"])
# How long after its due time (not_before, or a parked retry's) a job started: what the tiers cost.
DELAY_LATE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
DELAY_LATE = Histogram("delayed_job_late_seconds", "From a waiting job's due time to the start of "
                       "its handler.", buckets=DELAY_LATE_BUCKETS)
CONSUMER_LAG = Gauge("consumer_lag", "Messages behind the partition's end, per partition this "
                     "replica owns.", ["topic", "partition"])
PARTITIONS_OWNED = Gauge("consumer_partitions_owned", "Partitions of the jobs topic this replica "
                         "owns (all its group members together).")
QUEUE_DEPTH = Gauge("inmemory_queue_depth", "Jobs waiting in the in-memory queue.")
SERVICE_READY = Gauge("service_ready", "1 while /readyz answers 200 (a consumer: joined its group), "
                      "else 0; read when scraped.")

PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Produced (job.created_at) to processed: linger, queueing, lag, retries and the handler.
END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def partitions_assigned(count: int) -> None:
    PARTITIONS_OWNED.inc(count)


def partitions_forgotten(topic_partitions: Iterable[tuple[str, int]], owned: int) -> None:
    """A replica gave up (or lost) these partitions, `owned` of which it had: their lag is no
    longer its to report, so their series go (a sum over replicas would count them twice)."""
    PARTITIONS_OWNED.dec(owned)
    for topic, partition in topic_partitions:
        with contextlib.suppress(KeyError):  # never reported (no statistics yet)
            CONSUMER_LAG.remove(topic, str(partition))


class HandlerStats:
    """One thread's handler outcomes: written by that thread only, read when scraped."""

    __slots__ = ("buckets", "e2e_buckets", "e2e_seconds", "failed", "processed", "seconds")

    def __init__(self) -> None:
        self.processed = 0
        self.failed = 0
        self.buckets = [0] * (len(PROCESSING_BUCKETS) + 1)  # per bucket (not cumulative), +Inf last
        self.seconds = 0.0
        self.e2e_buckets = [0] * (len(END_TO_END_BUCKETS) + 1)
        self.e2e_seconds = 0.0

    def record(self, seconds: float, ok: bool) -> None:
        """One handler attempt: its time, and a failure (a success counts as processed where
        the job is done: see `count_processed`)."""
        self.buckets[bisect.bisect_left(PROCESSING_BUCKETS, seconds)] += 1
        self.seconds += seconds
        if not ok:
            self.failed += 1

    def record_end_to_end(self, seconds: float) -> None:
        """A job done `seconds` after it was made (clamped at 0: the producer's clock may be ahead)."""
        seconds = max(seconds, 0.0)
        self.e2e_buckets[bisect.bisect_left(END_TO_END_BUCKETS, seconds)] += 1
        self.e2e_seconds += seconds


def count_processed(jobs: int) -> None:
    """`jobs` more jobs done (jobs_processed_total), counted by the thread that knows they are
    done for good: the in-memory service's handler thread (jobpipe.handling), a group member's
    loop once a success is reported (not for a job its partition took away: its next owner
    counts it), a share member once the broker took the acknowledgement."""
    handler_stats().processed += jobs


_local = threading.local()
_all_stats: list[HandlerStats] = []
_registering = threading.Lock()


def handler_stats() -> HandlerStats:
    """The calling thread's HandlerStats (made and registered on its first use)."""
    try:
        stats: HandlerStats = _local.stats
    except AttributeError:
        stats = _local.stats = HandlerStats()
        with _registering:
            _all_stats.append(stats)
    return stats


class _HandlerCollector(Collector):
    """jobs_processed_total, jobs_failed_total and job_processing_seconds, summed over threads.

    A thread's buckets are read one by one while it may be adding to them; the count is the
    sum of the buckets read, so a histogram is always consistent with itself."""

    def collect(self) -> Iterator[Metric]:
        with _registering:
            stats = list(_all_stats)
        buckets = [0] * (len(PROCESSING_BUCKETS) + 1)
        e2e_buckets = [0] * (len(END_TO_END_BUCKETS) + 1)
        processed = failed = 0
        seconds = e2e_seconds = 0.0
        for one in stats:
            processed += one.processed
            failed += one.failed
            seconds += one.seconds
            e2e_seconds += one.e2e_seconds
            for index, count in enumerate(list(one.buckets)):
                buckets[index] += count
            for index, count in enumerate(list(one.e2e_buckets)):
                e2e_buckets[index] += count
        yield CounterMetricFamily("jobs_processed", "Jobs done: the handler succeeded (counted once a job).",
                                  value=processed)
        yield CounterMetricFamily("jobs_failed", "Handler attempts that raised.", value=failed)
        yield HistogramMetricFamily("job_processing_seconds", "Time the handler took per attempt.",
                                    buckets=_cumulative(PROCESSING_BUCKETS, buckets), sum_value=seconds)
        yield HistogramMetricFamily("job_end_to_end_seconds",
                                    "From the job's created_at (the producer) to its handler's success.",
                                    buckets=_cumulative(END_TO_END_BUCKETS, e2e_buckets),
                                    sum_value=e2e_seconds)


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    cumulative, running = [], 0
    for bound, count in zip((*map(floatToGoString, bounds), "+Inf"), counts, strict=True):
        running += count
        cumulative.append((bound, float(running)))
    return cumulative


REGISTRY.register(_HandlerCollector())


# What each long-running service serves on /metrics (besides prometheus-client's process_* and
# python_*): the families it can move. All are defined in every process that imports this module,
# but a producer serving `jobs_processed_total 0` looks like a consumer that does nothing.
HANDLER_FAMILIES = ("jobs_processed", "jobs_failed", "jobs_retried", "jobs_dead_lettered",
                    "job_processing_seconds")
SERVED_BY: dict[str, tuple[str, ...]] = {
    "producer": ("jobs_produced", "jobs_produce_failed"),
    "consumer": (*HANDLER_FAMILIES, "job_end_to_end_seconds", "consumer_lag", "consumer_partitions_owned",
                 "jobs_parked", "delayed_job_late_seconds"),
    "inmemory": ("jobs_produced", *HANDLER_FAMILIES, "inmemory_queue_depth"),
    "lag-exporter": ("consumer_group_lag", "consumer_group_members",
                     "consumer_group_lag_updated_timestamp_seconds", "jobs_dead_letters_waiting"),
}
RUNTIME_PREFIXES = ("process_", "python_")


class ServedMetrics:
    """The registry as one service serves it: its own families (SERVED_BY), `service_ready`,
    and the runtime's; what `make_wsgi_app` reads (it only calls `collect`)."""

    def __init__(self, service: str, registry: Collector = REGISTRY) -> None:
        self._service = service
        self._names = {*SERVED_BY.get(service, ()), "service_ready"}
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.name in self._names or family.name.startswith(RUNTIME_PREFIXES):
                yield family

    def restricted_registry(self, names: Iterable[str]) -> ServedMetrics:
        """What /metrics?name[]=... asks for: the registry's own restriction, then ours."""
        assert isinstance(self._registry, CollectorRegistry)
        return ServedMetrics(self._service, self._registry.restricted_registry(list(names)))
