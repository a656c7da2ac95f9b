"""Prometheus metrics of the pipeline, one definition each, served on METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_PRODUCED = Counter("jobs_produced", "Jobs acknowledged by the broker (or queued, in memory).")
JOBS_PRODUCE_FAILED = Counter("jobs_produce_failed", "Jobs whose delivery failed.")
JOBS_PROCESSED = Counter("jobs_processed", "Jobs whose handler succeeded.")
JOBS_FAILED = Counter("jobs_failed", "Handler attempts that raised.")
JOBS_RETRIED = Counter("jobs_retried", "Attempts scheduled again after a failure.")
JOBS_DEAD_LETTERED = Counter("jobs_dead_lettered", "Jobs given up on and sent to the dead-letter topic.")
PROCESSING_SECONDS = Histogram(
    "job_processing_seconds", "Time the handler took per attempt.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CONSUMER_LAG = Gauge("consumer_lag", "Messages behind the partition's end, per partition.",
                     ["topic", "partition"])
QUEUE_DEPTH = Gauge("inmemory_queue_depth", "Jobs waiting in the in-memory queue.")
