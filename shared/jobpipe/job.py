"""The Job: what a producer publishes and a handler receives, in Kafka and in memory alike.

On the wire a job is a JSON object (UTF-8) whose Kafka key is `key`; `id` is unique across
runs, `key` is the seed's `p{producer}-m{seq}`.
"""

from __future__ import annotations

import itertools
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError


class InvalidJob(ValueError):
    """A message that is not a job: not UTF-8 JSON, or missing/ill-typed fields."""


class Job(BaseModel):
    """One unit of work."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str = Field(min_length=1)
    key: str = Field(min_length=1)
    producer: int = Field(ge=0)
    seq: int = Field(ge=0)
    created_at: AwareDatetime
    payload: Any = None

    @classmethod
    def new(cls, producer: int, seq: int, payload: Any = None) -> Job:
        key = job_key(producer, seq)
        return cls(id=new_id(), key=key, producer=producer, seq=seq,
                   created_at=datetime.now(UTC),
                   payload=payload if payload is not None else {"message": f"job-{key}"})

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Job:
        """Parse a message value; raise InvalidJob with a short reason if it is not a job."""
        if raw is None:
            raise InvalidJob("empty message (no value)")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "value"
            raise InvalidJob(f"not a job: {where}: {first['msg']}") from None


class _IdSource:
    """Job ids: 32 hex digits, 64 random bits drawn once per process then a 64-bit counter, so
    unique across runs and threads. A uuid4 per job (a getrandom syscall each) was a third of
    the producer's time (py-spy, issue 6)."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # a forked child must not repeat ids

    def reseed(self) -> None:
        self._prefix = f"{uuid.uuid4().int >> 64:016x}"
        self._counter = itertools.count()  # next() on it is atomic under the GIL

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


new_id = _IdSource().next


def job_key(producer: int, seq: int) -> str:
    """The seed's key: producer worker number and sequence, e.g. `p1-m0`."""
    return f"p{producer}-m{seq}"
