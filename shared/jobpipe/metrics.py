"""Prometheus metrics of the pipeline, one definition each, served on METRICS_PORT.

The per-job ones (handler outcomes and durations) are counted without a lock: each thread
that runs handlers writes its own `HandlerStats`, and `/metrics` sums them when scraped. A
prometheus-client Counter.inc plus Histogram.observe took 0.9 us per job, most of what the
in-memory service added over a bare queue loop (issue 10). The rarer events keep the
library's Counter and are incremented as they happen (or, in the producer, per batch).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from prometheus_client import Counter, Gauge
from prometheus_client.core import REGISTRY, CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

JOBS_PRODUCED = Counter("jobs_produced", "Jobs acknowledged by the broker (or queued, in memory).")
JOBS_PRODUCE_FAILED = Counter("jobs_produce_failed", "Jobs whose delivery failed.")
JOBS_RETRIED = Counter("jobs_retried", "Attempts scheduled again after a failure.")
JOBS_DEAD_LETTERED = Counter("jobs_dead_lettered", "Jobs given up on and sent to the dead-letter topic.")
CONSUMER_LAG = Gauge("consumer_lag", "Messages behind the partition's end, per partition.",
                     ["topic", "partition"])
QUEUE_DEPTH = Gauge("inmemory_queue_depth", "Jobs waiting in the in-memory queue.")

PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HandlerStats:
    """One thread's handler outcomes: written by that thread only, read when scraped."""

    __slots__ = ("buckets", "failed", "processed", "seconds")

    def __init__(self) -> None:
        self.processed = 0
        self.failed = 0
        self.buckets = [0] * (len(PROCESSING_BUCKETS) + 1)  # per bucket (not cumulative), +Inf last
        self.seconds = 0.0

    def record(self, seconds: float, ok: bool) -> None:
        self.buckets[bisect.bisect_left(PROCESSING_BUCKETS, seconds)] += 1
        self.seconds += seconds
        if ok:
            self.processed += 1
        else:
            self.failed += 1


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
        processed = failed = 0
        seconds = 0.0
        for one in stats:
            processed += one.processed
            failed += one.failed
            seconds += one.seconds
            for index, count in enumerate(list(one.buckets)):
                buckets[index] += count
        yield CounterMetricFamily("jobs_processed", "Jobs whose handler succeeded.", value=processed)
        yield CounterMetricFamily("jobs_failed", "Handler attempts that raised.", value=failed)
        cumulative, running = [], 0
        for bound, count in zip((*map(floatToGoString, PROCESSING_BUCKETS), "+Inf"), buckets, strict=True):
            running += count
            cumulative.append((bound, running))
        yield HistogramMetricFamily("job_processing_seconds", "Time the handler took per attempt.",
                                    buckets=cumulative, sum_value=seconds)


REGISTRY.register(_HandlerCollector())
