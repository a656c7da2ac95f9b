"""Handlers that return values, for the results tests (HANDLER=tests.integration.result_handlers:NAME).

Payload {"n": N}: the value is {"id": <job id>, "square": N*N}; {"fail": true}: every attempt
fails; {"sleep_s": S}: takes S seconds. With TEST_RECORD_FILE set, each call appends the job's
id to that file (the handler runs counted across processes)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from jobpipe.job import Job


class Refused(RuntimeError):
    """The failure these handlers raise."""


def _record(job: Job) -> None:
    path = os.environ.get("TEST_RECORD_FILE")
    if path:
        with open(path, "a") as record:  # one short line per call: appends do not interleave
            record.write(f"{job.id}\n")


def _value(job: Job) -> Any:
    payload = job.payload if isinstance(job.payload, dict) else {}
    if payload.get("fail"):
        raise Refused(f"job {job.id} fails")
    return {"id": job.id, "square": int(payload.get("n", 0)) ** 2}


def square(job: Job) -> Any:
    _record(job)
    payload = job.payload if isinstance(job.payload, dict) else {}
    time.sleep(float(payload.get("sleep_s", 0)) or _SLEEP_S)
    return _value(job)


async def async_square(job: Job) -> Any:
    _record(job)
    payload = job.payload if isinstance(job.payload, dict) else {}
    await asyncio.sleep(float(payload.get("sleep_s", 0)) or _SLEEP_S)
    return _value(job)


_SLEEP_S = float(os.environ.get("TEST_HANDLER_SLEEP_MS", "0")) / 1000


def started_at(job: Job) -> Any:
    """The value is when the handler started (epoch seconds): no job may start before its time."""
    return {"id": job.id, "started_at": time.time()}
