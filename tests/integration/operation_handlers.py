"""Handlers for tests/integration/test_operations.py (HANDLER=tests.integration.operation_handlers:...).

Unlike tests.handlers, their error messages do not name the job, so dead letters group into
a few kinds of error, as they do in production when one bug fails many jobs."""

from __future__ import annotations

from jobpipe.job import Job

ERRORS: dict[str, type[Exception]] = {"timeout": TimeoutError, "malformed": ValueError}
MESSAGES = {"timeout": "upstream timed out", "malformed": "malformed payload"}


def fails_by_payload(job: Job) -> None:
    """payload {"error": "timeout"} or {"error": "malformed"}: fail with that kind of error;
    anything else succeeds."""
    kind = job.payload.get("error") if isinstance(job.payload, dict) else None
    if kind in ERRORS:
        raise ERRORS[kind](MESSAGES[kind])
