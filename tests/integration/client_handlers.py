"""Handlers of two job types, a registry of them, for the client and registry tests: each
appends what it was given as a JSON line to the file TEST_RECORD_FILE."""

from __future__ import annotations

import asyncio
import json
import os

from jobpipe.job import Job
from jobpipe.registry import JobRegistry

registry = JobRegistry()


def _record(handler: str, job: Job) -> None:
    with open(os.environ["TEST_RECORD_FILE"], "a") as record:
        entry = {"handler": handler, "id": job.id, "type": job.type, "key": job.key, "payload": job.payload}
        if job.headers:
            entry["headers"] = {name: (value or b"").decode() for name, value in job.headers.items()}
        record.write(json.dumps(entry) + "\n")


@registry.handler("resize")
def resize(job: Job) -> None:
    _record("resize", job)


@registry.handler("mail")
async def mail(job: Job) -> None:
    await asyncio.sleep(0)
    _record("mail", job)


with_default = JobRegistry(default=lambda job: _record("default", job))
with_default.add("resize", resize)


def records(path: str) -> list[dict[str, object]]:
    try:
        with open(path) as lines:
            return [json.loads(line) for line in lines if line.endswith("\n")]
    except FileNotFoundError:
        return []
