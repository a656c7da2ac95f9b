"""The Job: what a client or producer publishes and a handler receives, in Kafka and in memory.

On the wire a job is a JSON object (UTF-8): `id` (unique), `created_at` (RFC 3339 with its
zone), `payload` (any JSON; absent = null), and optionally `type` (which handler of a registry
runs it), `key` (also the Kafka message key and the ordering unit; absent = no key),
`not_before` (RFC 3339 with its zone: no consumer starts the job earlier; see jobpipe.delays)
and the seed's `producer` and `seq`, which only the demo producer sets (its keys stay `p{n}-m{seq}`).
Fields left unset are not written. Messages of the earlier format (id, key, producer, seq,
created_at, payload, all set) decode unchanged. The JSON Schema of this model is checked in
as job.schema.json (`python -m jobpipe.job_schema` writes it; a unit test compares them).

The codec is msgspec (a typed Struct and one JSON encoder/decoder): making, encoding and
decoding a job each cost well under 1 us, where the pydantic model it replaced cost 3, 1.3
and 1.7 us (issue 10; `python -m timeit` figures are in that issue's closing note). Fields
the contract does not name are kept: a job decoded with them has them in `extra`, and
`to_bytes` writes them back.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import msgspec


class InvalidJob(ValueError):
    """A message that is not a job: not UTF-8 JSON, or missing/ill-typed fields."""


NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Aware = Annotated[datetime, msgspec.Meta(tz=True)]  # RFC 3339 with its time zone, required

_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


class Job(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True,
          dict=True):
    """One unit of work. Immutable; equal when the contract fields are equal. Made with `create`
    (an application's job) or `new` (the demo producer's); fields are keyword-only."""

    id: NonEmpty
    type: NonEmpty | None = None
    key: NonEmpty | None = None
    not_before: Aware | None = None  # not started before then (a delayed job)
    producer: Count | None = None
    seq: Count | None = None
    created_at: Aware
    payload: Any = None
    # Fields of the message that the contract does not name (kept in the instance's __dict__,
    # which only `from_bytes` fills, so a job made here has none and costs nothing for them).
    extra: ClassVar[Mapping[str, Any]] = _NO_EXTRA
    # The Kafka message's headers (name -> value; the last one of a repeated name), which the
    # consumer sets when the message has any: `submit(headers=...)` reaches the handler.
    headers: ClassVar[Mapping[str, bytes | None]] = _NO_EXTRA

    @classmethod
    def new(cls, producer: int, seq: int, payload: Any = None) -> Job:
        """The demo producer's job `seq` of worker `producer`, keyed `p{producer}-m{seq}`."""
        key = job_key(producer, seq)
        return cls(id=new_id(), key=key, producer=producer, seq=seq, created_at=datetime.now(UTC),
                   payload=payload if payload is not None else {"message": f"job-{key}"})

    @classmethod
    def create(cls, payload: Any = None, *, type: str | None = None,  # noqa: A002 (the wire name)
               key: str | None = None, id: str | None = None,  # noqa: A002
               not_before: datetime | None = None) -> Job:
        """An application's job: a new id unless `id` is given (an idempotent resubmit);
        `not_before` (time-zone aware): not started before then."""
        return cls(id=new_id() if id is None else id, type=type, key=key, not_before=not_before,
                   created_at=datetime.now(UTC), payload=payload)

    @classmethod
    def from_message(cls, raw: bytes | None, headers: Any) -> Job:
        """`from_bytes`, with the Kafka message's headers (librdkafka's list of (name, value)
        pairs, or None) on the job as `job.headers`."""
        job = cls.from_bytes(raw)
        if headers:
            job.__dict__["headers"] = MappingProxyType(dict(headers))
        return job

    @property
    def label(self) -> str:
        """What log lines call the job: its key, or `job <id>` when it has none."""
        return self.key if self.key is not None else f"job {self.id}"

    def to_bytes(self) -> bytes:
        if not self.extra:
            return _encode(self)
        own = {name: value for name, value in msgspec.structs.asdict(self).items() if value is not None}
        return _encode({**self.extra, **own})

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Job:
        """Parse a message value; raise InvalidJob with a short reason naming the field if it
        is not a job."""
        if raw is None:
            raise InvalidJob("empty message (no value)")
        try:
            return _decode(raw)
        except msgspec.ValidationError as error:
            if not str(error).startswith("Object contains unknown field"):
                raise InvalidJob(_reason(error)) from None
        except msgspec.DecodeError as error:
            raise InvalidJob(f"not a job: value: {error}") from None
        return cls._with_extra(raw)

    @classmethod
    def _with_extra(cls, raw: bytes) -> Job:
        """The rare path: a job carrying fields of its own. Validated like any other job."""
        fields = msgspec.json.decode(raw)
        known = {name: value for name, value in fields.items() if name in cls.__struct_fields__}
        try:
            job = _decode(_encode(known))
        except msgspec.ValidationError as error:
            raise InvalidJob(_reason(error)) from None
        job.__dict__["extra"] = MappingProxyType(
            {name: value for name, value in fields.items() if name not in cls.__struct_fields__})
        return job


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Job).decode
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<where>[^`]*)`)?$")
_MISSING = re.compile(r"^Object missing required field `(?P<where>[^`]+)`")


def _reason(error: msgspec.ValidationError) -> str:
    """msgspec's message in the form the consumer's dead letters have always had:
    `not a job: <field>: <what is wrong>`."""
    text = str(error)
    if missing := _MISSING.match(text):
        return f"not a job: {missing['where']}: Field required"
    parts = _AT.match(text)
    assert parts is not None  # the pattern matches any text
    return f"not a job: {parts['where'] or 'value'}: {parts['what']}"


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
