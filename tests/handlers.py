"""Handlers the tests plug in with HANDLER=tests.handlers:<name>; each reads its instructions
from the job's payload, so one consumer can process well-behaved and misbehaving jobs."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter
from typing import TextIO

from jobpipe.job import Job

_calls: Counter[str] = Counter()


class Refused(RuntimeError):
    """The failure the test handlers raise."""


def scripted(job: Job) -> None:
    """payload {"fail_times": n}: fail the first n attempts; {"fail": "always"}: never succeed;
    {"sleep_s": s}: take s seconds; {"crash": true}: end the process at once (exit 70), as a
    handler that kills its consumer would."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    if payload.get("crash"):
        os._exit(70)
    _calls[job.id] += 1
    time.sleep(float(payload.get("sleep_s", 0)))
    if payload.get("fail") == "always":
        raise Refused(f"job {job.key} always fails")
    if _calls[job.id] <= int(payload.get("fail_times", 0)):
        raise Refused(f"job {job.key} fails attempt {_calls[job.id]}")


def slow(job: Job) -> None:
    """Every job takes 50 ms: a stream that is still running when a test interrupts it."""
    time.sleep(0.05)


def fails_first_attempt(job: Job) -> None:
    """Every job's first attempt fails, its second succeeds (one process: the in-memory service,
    or one consumer that keeps the job)."""
    _calls[job.id] += 1
    if _calls[job.id] == 1:
        raise Refused(f"job {job.key} fails its first attempt")


def always_fails(job: Job) -> None:
    """Every attempt fails."""
    raise Refused(f"job {job.key} always fails")


def paced(job: Job) -> None:
    """For jobs from the real producer (whose payload carries no instructions): every job takes
    TEST_HANDLER_SLEEP_MS ms (default 1); the jobs whose key is listed in TEST_SLOW_KEYS
    (comma-separated, e.g. `p1-m10,p2-m20`) take TEST_SLOW_S seconds instead."""
    time.sleep(_SLOW_S if job.key in _SLOW_KEYS else _SLEEP_S)


_SLEEP_S = float(os.environ.get("TEST_HANDLER_SLEEP_MS", "1")) / 1000
_SLOW_KEYS = frozenset(filter(None, os.environ.get("TEST_SLOW_KEYS", "").split(",")))
_SLOW_S = float(os.environ.get("TEST_SLOW_S", "0"))


def noop(job: Job) -> None:
    """Does nothing: what the benchmarks use to measure the pipeline itself."""


def record_latency(job: Job) -> None:
    """Appends `seq milliseconds-since-created_at` to the file BENCH_LATENCY_FILE, one line per job
    (tests/benchmarks: produce-to-processed latency; producer and consumer share the clock)."""
    elapsed_ms = (time.time() - job.created_at.timestamp()) * 1000
    _latency_file().write(f"{job.seq} {elapsed_ms:.3f}\n")


@functools.cache
def _latency_file() -> TextIO:
    return open(os.environ["BENCH_LATENCY_FILE"], "a", buffering=1)


async def async_record(job: Job) -> None:
    """An `async def` handler whose work can be seen: after awaiting, appends the job's id to
    the file TEST_RECORD_FILE."""
    await asyncio.sleep(0.001)
    with open(os.environ["TEST_RECORD_FILE"], "a") as record:
        record.write(f"{job.id}\n")


def gated(job: Job) -> None:
    """Jobs with seq below TEST_GATE_SEQ take TEST_HANDLER_SLEEP_MS ms; the others also wait
    (at most 30 s) until the file TEST_RELEASE_FILE exists: a stream a test can interrupt
    mid-way however fast or slow the machine is. With TEST_RECORD_FILE set, appends
    `start <seq>` and `end <seq>` lines there (how many ran at once, and in which order)."""
    _record("start", job)
    time.sleep(_SLEEP_S)
    if job.seq >= int(os.environ.get("TEST_GATE_SEQ", "0")):
        release = os.environ["TEST_RELEASE_FILE"]
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
    _record("end", job)


def _record(what: str, job: Job) -> None:
    if "TEST_RECORD_FILE" in os.environ:
        _record_file().write(f"{what} {job.key} {job.seq}\n")


@functools.cache
def _record_file() -> TextIO:
    return open(os.environ["TEST_RECORD_FILE"], "a", buffering=1)


async def async_sleep(job: Job) -> None:
    """An `async def` handler that waits 5 ms (I/O-bound work), for the benchmarks."""
    await asyncio.sleep(0.005)


def timed(job: Job) -> None:
    """`scripted`, after appending `start <id> <epoch seconds>` to TEST_RECORD_FILE: when each
    attempt started, to compare with the job's due time (tests/integration/test_delays.py)."""
    _record_file().write(f"start {job.id} {time.time():.6f}\n")
    scripted(job)


def record_lateness(job: Job) -> None:
    """Appends `<id> <ms after its not_before>` to BENCH_LATENCY_FILE (tests/benchmarks/delay_bench.py)."""
    if job.not_before is not None:
        _latency_file().write(f"{job.id} {(time.time() - job.not_before.timestamp()) * 1000:.3f}\n")
