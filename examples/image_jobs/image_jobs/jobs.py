"""Two job types, one registry: what a consumer runs with HANDLER=image_jobs.jobs:registry.

Each handler's effect is a file in IMAGE_JOBS_OUTPUT (default /tmp/image-jobs), named by the
job's id, so doing a job twice (at-least-once delivery) writes the same file again: harmless.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from jobpipe.job import Job
from jobpipe.registry import JobRegistry

registry = JobRegistry()


def _output(job: Job, result: dict[str, object]) -> None:
    folder = Path(os.environ.get("IMAGE_JOBS_OUTPUT", "/tmp/image-jobs"))
    folder.mkdir(parents=True, exist_ok=True)
    written = folder / f"{job.id}.json.part"
    written.write_text(json.dumps({"id": job.id, "type": job.type, "key": job.key, **result}))
    written.rename(folder / f"{job.id}.json")  # whole or not at all


@registry.handler("resize")
def resize(job: Job) -> None:
    """payload: {"width": int, "height": int, "max_side": int}: the size to scale to."""
    width, height, max_side = (int(job.payload[name]) for name in ("width", "height", "max_side"))
    scale = min(1.0, max_side / max(width, height))
    _output(job, {"width": round(width * scale), "height": round(height * scale)})


@registry.handler("notify")
async def notify(job: Job) -> None:
    """payload: {"to": str, "text": str}: an I/O-bound job (here a pretend send)."""
    await asyncio.sleep(0.001)
    if "@" not in job.payload["to"]:
        raise ValueError(f"not an address: {job.payload['to']!r}")  # retried, then dead-lettered
    _output(job, {"sent_to": job.payload["to"]})
