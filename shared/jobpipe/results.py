"""A job's result: what the consumer publishes to RESULTS_TOPIC when a job ends, and where.

Why it exists: a handler's return value used to be thrown away; an application that submits a
job often wants it back (Celery's and arq's result backends). The consumer publishes one
`Result` per finished job to RESULTS_TOPIC, keyed by the job's id: `ok` with the handler's
return value (JSON), or, for a job that was dead-lettered, `ok=false` with the error, so a
caller waiting for it learns that it failed instead of waiting out its timeout. The client
(jobpipe.client, `submit_for_result`) waits by reading RESULTS_TOPIC.

Where a result lands: the partition librdkafka's `murmur2_random` partitioner picks for the
key (the job id), which is the Java client's default placement: murmur2 of the key's bytes,
made positive, modulo the partition count. The consumer's result producer sets that
partitioner explicitly (jobpipe.kafka_clients.producer_config), and `partition_for` computes
the same here, so a waiting client reads only the one partition its job's result lands in:
waiting costs a client the traffic of one partition, not of the topic, and more partitions
spread the waiters. (The hash is the dozen lines of Kafka's `Utils.murmur2`; the only Python
packages that ship it are whole Kafka clients. tests/unit/test_results.py checks it against
librdkafka's own placement.)

The codec is msgspec, as for the Job: a result is encoded on the consumer's hot path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Aware = Annotated[datetime, msgspec.Meta(tz=True)]


class ResultNotJSON(ValueError):
    """A handler returned a value that cannot be written as JSON."""


class Result(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One job's outcome, as published to RESULTS_TOPIC (a JSON object, keyed by `id`).

    `ok`: the handler returned `value` (null when it returned None); not ok: the job was
    dead-lettered after `attempts` attempts (0: the message was not a job, or its result
    was not JSON) and `error` says why."""

    id: NonEmpty
    type: NonEmpty | None = None
    key: NonEmpty | None = None
    ok: bool
    value: Any = None
    error: str | None = None
    attempts: int
    finished_at: Aware

    def to_bytes(self) -> bytes:
        try:
            return _encode(self)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as error:
            raise ResultNotJSON(f"the handler's return value is not JSON: {error}") from None

    @classmethod
    def from_bytes(cls, raw: bytes) -> Result:
        """Raises msgspec.DecodeError (or ValidationError) for a record that is not a result."""
        return _decode(raw)

    @classmethod
    def succeeded(cls, job_id: str, job_type: str | None, key: str | None, value: Any,
                  attempts: int) -> Result:
        return cls(id=job_id, type=job_type, key=key, ok=True, value=value, attempts=attempts,
                   finished_at=datetime.now(UTC))

    @classmethod
    def failed(cls, job_id: str, job_type: str | None, key: str | None, error: str,
               attempts: int) -> Result:
        return cls(id=job_id, type=job_type, key=key, ok=False, error=error, attempts=attempts,
                   finished_at=datetime.now(UTC))


def result_bytes(result: Result) -> bytes:
    """The record value of `result`; a value that is not JSON becomes a failure result saying
    so (the job did run: its side effects happened, but there is no value to hand over)."""
    try:
        return result.to_bytes()
    except ResultNotJSON as error:
        return Result.failed(result.id, result.type, result.key, str(error), result.attempts).to_bytes()


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Result).decode

# Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as librdkafka's rd_murmur2.
_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash Kafka's partitioners use (unsigned)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for index in range(0, whole, 4):
        k = int.from_bytes(data[index:index + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(job_id: str, partitions: int) -> int:
    """The partition of a topic with `partitions` partitions that a record keyed `job_id` goes to
    under librdkafka's `murmur2_random` (and the Java client's default) partitioner."""
    return (murmur2(job_id.encode()) & 0x7FFFFFFF) % partitions
