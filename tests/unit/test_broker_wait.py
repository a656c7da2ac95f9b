"""The wait for the broker at start (issue 22, defect 9): it ends within about a second of its
cause: a refusal (named), KAFKA_WAIT_TIMEOUT_S, or a stop. No broker is needed: the address
is a port nothing listens on."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError

from jobpipe.errors import KafkaRefused, KafkaUnreachable, StopRequested
from jobpipe.kafka_clients import refused, wait_for_broker
from jobpipe.settings import KafkaSettings
from tests.service_runner import free_port

TLS_ALERT = ("ssl://127.0.0.1:55875/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls "
             "alert bad certificate: SSL alert number 42 (after 8ms in state APIVERSION_QUERY)")


def nowhere(**settings: object) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", **settings)  # type: ignore[arg-type]


def test_the_wait_ends_within_a_second_of_kafka_wait_timeout_s_whatever_the_backoff() -> None:
    # Before the fix the wait slept a retry backoff past its deadline (here 4 to 8 s).
    settings = nowhere(kafka_wait_timeout_s=3, retry_backoff_initial_ms=8000, shutdown_timeout_s=0.4)
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable) as raised:
        wait_for_broker(settings)
    waited = time.monotonic() - started
    assert 3.0 <= waited < 4.0, waited
    assert "within 3 s (KAFKA_WAIT_TIMEOUT_S)" in str(raised.value)
    assert "Connection refused" in str(raised.value), "the line says why"


def test_a_stop_ends_the_wait_within_a_second() -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StopRequested):
        wait_for_broker(nowhere(kafka_wait_timeout_s=60), stop)
    assert time.monotonic() - started < 1.5


def test_a_tls_alert_from_the_broker_is_a_refusal_not_a_transport_failure() -> None:
    """TLS 1.3: a listener that requires a client certificate refuses one without it with an
    alert librdkafka reports as a transport error."""
    reason = refused(KafkaError(KafkaError._TRANSPORT, TLS_ALERT))
    assert reason is not None and "did not accept this client's certificate" in reason
    assert "KAFKA_SSL_CERTIFICATE_LOCATION" in reason


@pytest.mark.parametrize("text", [
    "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state "
    "CONNECT)",
    "localhost:9092/1: Disconnected (after 20243ms in state UP)",
])
def test_a_broker_that_is_down_is_not_a_refusal(text: str) -> None:
    assert refused(KafkaError(KafkaError._TRANSPORT, text)) is None


def test_a_refusal_reported_by_librdkafka_ends_the_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """What error_cb reports is looked at every ANSWER_SLICE_S, not after a whole request."""
    from jobpipe import kafka_clients

    class Refusing:
        def __init__(self, config: dict[str, object]) -> None:
            self.report = config["error_cb"]

        def list_topics(self, timeout: float) -> object:
            time.sleep(timeout)
            self.report(KafkaError(KafkaError._TRANSPORT, TLS_ALERT))  # type: ignore[operator]
            raise kafka_clients.KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))

        def poll(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(kafka_clients, "AdminClient", Refusing)
    started = time.monotonic()
    with pytest.raises(KafkaRefused, match="did not accept this client's certificate"):
        wait_for_broker(nowhere(kafka_wait_timeout_s=60))
    assert time.monotonic() - started < 1.0
