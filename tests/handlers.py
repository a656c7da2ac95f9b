"""Handlers the tests plug in with HANDLER=tests.handlers:<name>; each reads its instructions
from the job's payload, so one consumer can process well-behaved and misbehaving jobs."""

from __future__ import annotations

import time
from collections import Counter

from jobpipe.job import Job

_calls: Counter[str] = Counter()


class Refused(RuntimeError):
    """The failure the test handlers raise."""


def scripted(job: Job) -> None:
    """payload {"fail_times": n}: fail the first n attempts; {"fail": "always"}: never succeed;
    {"sleep_s": s}: take s seconds."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    _calls[job.id] += 1
    time.sleep(float(payload.get("sleep_s", 0)))
    if payload.get("fail") == "always":
        raise Refused(f"job {job.key} always fails")
    if _calls[job.id] <= int(payload.get("fail_times", 0)):
        raise Refused(f"job {job.key} fails attempt {_calls[job.id]}")


def slow(job: Job) -> None:
    """Every job takes 50 ms: a stream that is still running when a test interrupts it."""
    time.sleep(0.05)


def always_fails(job: Job) -> None:
    """Every attempt fails."""
    raise Refused(f"job {job.key} always fails")
