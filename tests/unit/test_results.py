"""The result record, where it lands (the same partition librdkafka picks), and the settings
that turn results and exactly-once on (exit 2 for a bad or contradictory value: with the
consumer's other cases in test_settings.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer_service.settings import ConsumerSettings
from jobpipe.errors import ConfigError
from jobpipe.results import Result, partition_for, result_bytes
from jobpipe.settings import load_settings


def test_a_result_is_published_where_librdkafka_puts_its_key() -> None:
    """The waiting client reads only partition_for(id): it must be librdkafka's murmur2_random
    placement (librdkafka's mock cluster: 4 partitions)."""
    producer = Producer({"test.mock.num.brokers": 1, "partitioner": "murmur2_random", "log_level": 0})
    placed: dict[str, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None
        placed[message.key().decode()] = message.partition()

    keys = [f"{i:032x}" for i in range(0, 10**12, 7_777_777_777)] + ["a", "ab", "abc", "abcd", "é☃"]
    for key in keys:
        producer.produce("results", b"{}", key, on_delivery=delivered)
    assert producer.flush(10) == 0
    partitions = len(producer.list_topics("results").topics["results"].partitions)
    assert partitions > 1
    assert {key: partition_for(key, partitions) for key in keys} == placed
    assert len(set(placed.values())) == partitions, "the keys spread over every partition"


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=64), st.integers(min_value=1, max_value=10_000))
def test_partition_for_is_always_a_partition_of_the_topic(job_id: str, partitions: int) -> None:
    assert 0 <= partition_for(job_id, partitions) < partitions


def test_a_result_round_trips_with_its_value() -> None:
    result = Result.succeeded("j1", "resize", "img-1", {"width": 640, "tags": ["a"]}, attempts=2)
    decoded = Result.from_bytes(result_bytes(result))
    assert decoded == result
    assert msgspec.json.decode(result_bytes(result))["ok"] is True


def test_a_value_that_is_not_json_becomes_a_failure_result_saying_so() -> None:
    decoded = Result.from_bytes(result_bytes(Result.succeeded("j2", None, None, object(), attempts=1)))
    assert not decoded.ok and decoded.id == "j2" and decoded.attempts == 1
    assert decoded.error is not None and "not JSON" in decoded.error


def test_a_failure_result_names_the_error() -> None:
    decoded = Result.from_bytes(result_bytes(Result.failed("j3", "sms", None, "ValueError: boom", 5)))
    assert (decoded.ok, decoded.error, decoded.attempts) == (False, "ValueError: boom", 5)
    assert decoded.value is None


@pytest.mark.parametrize("spelling", ["exactly_once", "exactly-once", "EXACTLY_ONCE"])
def test_exactly_once_has_one_value_however_it_is_spelt(monkeypatch: pytest.MonkeyPatch,
                                                        spelling: str) -> None:
    monkeypatch.setenv("PROCESSING_GUARANTEE", spelling)
    assert load_settings(ConsumerSettings).processing_guarantee == "exactly_once"


def test_results_are_off_and_at_least_once_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTS_TOPIC", "")
    settings = load_settings(ConsumerSettings)
    assert (settings.results_topic, settings.processing_guarantee) == (None, "at_least_once")


def test_a_bad_results_topic_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTS_TOPIC", "my results")
    with pytest.raises(ConfigError, match=r"^RESULTS_TOPIC='my results'"):
        load_settings(ConsumerSettings)
