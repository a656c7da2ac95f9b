"""The job wire format (issue 21): application jobs, old messages, and the checked-in JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobpipe.job import InvalidJob, Job
from jobpipe.job_schema import SCHEMA_FILE, job_schema, schema_text

# A message as the producer wrote it before issue 21 (every field set, `key` required).
OLD_FORMAT = (b'{"id":"b7a2128182d14f100000000000000000","key":"p1-m0","producer":1,"seq":0,'
              b'"created_at":"2026-12-07T14:24:02.555054Z","payload":{"message":"job-p1-m0"}}')

VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()),
                                            format_checker=jsonschema.FormatChecker())


def test_a_message_of_the_old_format_is_still_a_job() -> None:
    job = Job.from_bytes(OLD_FORMAT)
    assert (job.id, job.key, job.producer, job.seq, job.type) == (
        "b7a2128182d14f100000000000000000", "p1-m0", 1, 0, None)
    assert job.created_at == datetime(2026, 12, 7, 14, 24, 2, 555054, tzinfo=UTC)
    assert job.payload == {"message": "job-p1-m0"} and job.extra == {}
    assert job.to_bytes() == OLD_FORMAT, "written back byte for byte"
    VALIDATOR.validate(json.loads(OLD_FORMAT))


def test_the_demo_producer_keeps_its_keys_and_fields() -> None:
    data = json.loads(Job.new(2, 7).to_bytes())
    assert data["key"] == "p2-m7" and data["producer"] == 2 and data["seq"] == 7
    assert "type" not in data


def test_an_application_job_has_only_what_was_given() -> None:
    job = Job.create({"width": 640}, type="resize")
    data = json.loads(job.to_bytes())
    assert set(data) == {"id", "type", "created_at", "payload"}, "no key, no producer, no seq"
    assert data["type"] == "resize" and data["payload"] == {"width": 640}
    decoded = Job.from_bytes(job.to_bytes())
    assert decoded == job and decoded.key is None and decoded.producer is None
    assert job.label == f"job {job.id}", "a job without a key is named by its id in log lines"
    assert Job.create(None, key="image-42", id="given").label == "image-42"
    assert Job.create(1, id="mine").id == "mine", "the caller's id is kept (idempotent resubmit)"


def test_a_minimal_job_from_another_language_decodes() -> None:
    job = Job.from_bytes(b'{"id":"x1","created_at":"2026-01-01T12:00:00+02:00"}')
    assert job.payload is None and job.key is None and job.type is None


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"id":"a","type":"","created_at":"2024-01-01T00:00:00Z"}',
     "not a job: type: Expected `str` of length >= 1"),
    (b'{"id":"a","type":3,"created_at":"2024-01-01T00:00:00Z"}',
     "not a job: type: Expected `str | null`, got `int`"),
    (b'{"id":"a","key":"","created_at":"2024-01-01T00:00:00Z"}',
     "not a job: key: Expected `str` of length >= 1"),
    (b'{"type":"a","created_at":"2024-01-01T00:00:00Z"}', "not a job: id: Field required"),
])
def test_a_bad_optional_field_is_refused_naming_it(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        Job.from_bytes(raw)
    assert str(refused.value) == reason
    assert not VALIDATOR.is_valid(json.loads(raw)), "the schema refuses it too"


def test_unknown_fields_of_an_application_job_are_kept_and_written_back() -> None:
    sent = {"id": "a", "type": "mail", "created_at": "2026-01-01T00:00:00Z", "payload": [1],
            "deadline": "2026-01-02T00:00:00Z", "trace": {"span": 3}}
    job = Job.from_bytes(json.dumps(sent).encode())
    assert job.type == "mail"
    assert dict(job.extra) == {"deadline": "2026-01-02T00:00:00Z", "trace": {"span": 3}}
    assert json.loads(job.to_bytes()) == sent
    VALIDATOR.validate(sent)


def test_not_before_is_an_rfc_3339_time_with_its_zone() -> None:
    sent = {"id": "a", "created_at": "2026-01-01T00:00:00Z", "not_before": "2026-01-02T10:00:00+02:00"}
    job = Job.from_bytes(json.dumps(sent).encode())
    assert job.not_before == datetime(2026, 1, 2, 8, tzinfo=UTC)
    assert Job.from_bytes(job.to_bytes()) == job
    VALIDATOR.validate(sent)
    for wrong in ("tomorrow", "2026-01-02T10:00:00", 5):
        with pytest.raises(InvalidJob, match=r"^not a job: not_before: "):
            Job.from_bytes(json.dumps(sent | {"not_before": wrong}).encode())


def test_the_checked_in_schema_is_the_models() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "job.schema.json is out of date: run `python -m jobpipe.job_schema --write`")
    assert job_schema()["$defs"]["Job"]["required"] == ["id", "created_at"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)
names = st.none() | st.text(min_size=1, max_size=20)


@given(payload=json_values, job_type=names, key=names)
def test_every_job_the_client_can_make_round_trips_and_fits_the_schema(
        payload: Any, job_type: str | None, key: str | None) -> None:
    job = Job.create(payload, type=job_type, key=key)
    raw = job.to_bytes()
    assert Job.from_bytes(raw) == job
    VALIDATOR.validate(json.loads(raw))
