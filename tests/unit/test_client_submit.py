"""`producer submit`'s input (no broker): what becomes a job, and how bad input is named."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobpipe.client import ClientSettings, JobClient, client_settings, encode_job, not_before_of
from jobpipe.errors import ConfigError
from jobpipe.job import InvalidJob
from producer_service.submit import BadInput, Submission, parser, read_inputs


def inputs(*argv: str, stdin: str = "") -> list[Submission]:
    return read_inputs(parser().parse_args(argv), io.StringIO(stdin))


def test_arguments_are_payloads_with_the_given_type_and_key() -> None:
    jobs = [s.job for s in inputs("--type", "resize", "--key", "k", '{"w": 1}', "[2]", '"three"')]
    assert [j.payload for j in jobs] == [{"w": 1}, [2], "three"]
    assert {(j.type, j.key) for j in jobs} == {("resize", "k")} and len({j.id for j in jobs}) == 3


def test_stdin_lines_are_payloads_or_with_jobs_job_objects() -> None:
    plain = inputs("--type", "t", stdin='{"payload": 1}\n\n  \n2\n')
    assert [s.job.payload for s in plain] == [{"payload": 1}, 2], "a line is the payload itself"
    objects = inputs("--jobs", "--type", "t", stdin='{"payload": 1, "key": "a", "headers": {"h": "v"}}\n'
                                                    '{"type": "u", "id": "given"}\n')
    second = objects[1].job
    assert (second.payload, second.type, second.key, second.id) == (None, "u", None, "given")
    assert (objects[0].job.type, objects[0].job.key, objects[0].headers) == ("t", "a", {"h": "v"})


@pytest.mark.parametrize(("argv", "stdin", "named"), [
    ((), '{"a": 1}\n{"b": \n', "stdin line 2: not JSON: "),
    (("1", "{nope}"), "", "argument 2: not JSON: "),
    (("--jobs",), "[1]\n", "stdin line 1: --jobs expects a JSON object, got list"),
    (("--jobs",), '{"payload": 1, "kye": "a"}\n', "stdin line 1: unknown field(s) kye"),
    (("--jobs",), '{"headers": {"h": 1}}\n', "stdin line 1: headers must be an object of strings"),
    (("--key", "", "1"), "", "argument 1: job key must be a non-empty string, got ''"),
    (("--jobs",), '{"type": 5}\n', "stdin line 1: job type must be a non-empty string, got 5"),
    (("--id", "x", "1", "2"), "", "--id names one job, but 2 were given"),
    (("--jobs", "1"), "", "--jobs reads job objects from stdin"),
])
def test_bad_input_is_named(argv: tuple[str, ...], stdin: str, named: str) -> None:
    with pytest.raises(BadInput) as refused:
        inputs(*argv, stdin=stdin)
    assert str(refused.value).startswith(named), str(refused.value)


def test_a_bad_setting_names_the_variable_before_any_connection() -> None:
    with pytest.raises(ConfigError, match=r"^KAFKA_WAIT_TIMEOUT_S=-1: Input should be greater than 0"):
        JobClient(kafka_wait_timeout_s=-1)
    with pytest.raises(ConfigError, match=r"^JOBS_TOPIC="):
        client_settings(jobs_topic="no spaces")
    assert ClientSettings(jobs_topic="x").kafka_client_roles == ("producer", "admin")


def test_a_payload_that_is_not_json_is_refused_before_the_client_is_needed() -> None:
    with pytest.raises(BadInput, match="argument 1: "):
        inputs("--type", "", "1")
    with pytest.raises(InvalidJob, match="job id must be a non-empty string"):
        encode_job(1, None, None, "")


def test_delay_and_at_set_not_before() -> None:
    now = datetime(2030, 1, 1, 9, tzinfo=UTC)
    assert not_before_of(90, None, now) == now + timedelta(seconds=90)
    assert not_before_of(timedelta(minutes=2), None, now) == now + timedelta(minutes=2)
    at = datetime(2030, 1, 2, 9, tzinfo=timezone(timedelta(hours=2)))
    assert not_before_of(None, at, now) == at
    job = encode_job({"x": 1}, None, "k", None, delay=30)
    assert job.not_before is not None
    assert abs((job.not_before - datetime.now(UTC)).total_seconds() - 30) < 5
    assert encode_job(1, None, None, None).not_before is None
    (submitted,) = inputs("--at", "2030-01-01T09:00:00Z", "1")
    assert submitted.job.not_before == now
    (later,) = inputs("--delay", "60", "1")
    assert later.job.not_before is not None


@pytest.mark.parametrize(("delay", "at", "named"), [
    (5, datetime(2030, 1, 1, tzinfo=UTC), "give delay= or at=, not both"),
    (-1, None, "delay= must not be negative"),
    ("5", None, "delay= must be seconds"),
    (float("nan"), None, "delay= must be seconds"),
    (1e12, None, "delay= is too long"),  # past year 9999: `producer submit --delay 1e12` exited 1
    (timedelta(days=999_999_999), None, "delay= is too long"),
    (None, datetime(2030, 1, 1), "at= must be a time-zone aware datetime"),
])
def test_a_wrong_delay_or_at_is_refused_before_anything_is_sent(delay: object, at: datetime | None,
                                                                 named: str) -> None:
    with pytest.raises(InvalidJob, match=named):
        encode_job(1, None, None, None, delay=delay, at=at)  # type: ignore[arg-type]


def test_a_wrong_at_on_the_command_line_is_named() -> None:
    with pytest.raises(BadInput, match="argument 1: --at must be an RFC 3339 time"):
        inputs("--at", "tomorrow", "1")
    with pytest.raises(BadInput, match="argument 1: at= must be a time-zone aware datetime"):
        inputs("--at", "2030-01-01T09:00:00", "1")
