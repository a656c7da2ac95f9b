"""librdkafka configuration for every client the services create, and the wait for the broker.

All clients get the connection and security settings; the service's main client also gets
KAFKA_EXTRA_CONFIG. Producers are always acks=all with idempotence on.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, stop_when_event_set

from jobpipe.errors import KafkaUnreachable, StopRequested
from jobpipe.logs import event, kafka_client_logger
from jobpipe.settings import KafkaSettings

Config = dict[str, Any]


def _on_client_error(error: KafkaError) -> None:
    level = "ERROR" if error.fatal() else "WARNING"
    event("kafka.error", f"Kafka client error: {error.str()}", level=level, code=error.name(),
          fatal=error.fatal(), retriable=error.retriable())


def connection_config(settings: KafkaSettings, client_id: str) -> Config:
    """Bootstrap servers, security, logging: what every client of a service shares."""
    config: Config = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "security.protocol": settings.kafka_security_protocol,
        "logger": kafka_client_logger(client_id),
        "error_cb": _on_client_error,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username is not None:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return config


def producer_config(settings: KafkaSettings, client_id: str, *, main_client: bool,
                    partitioner: str = "murmur2_random", linger_ms: float = 5) -> Config:
    """A durable producer: every message acknowledged by all in-sync replicas, no duplicates
    from the client's own retries. `linger_ms`: how long a batch waits to fill (throughput)
    before it is sent (latency)."""
    config = connection_config(settings, client_id) | {
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": partitioner,
        "linger.ms": linger_ms,
    }
    return config | (settings.kafka_extra_config if main_client else {})


def consumer_config(settings: KafkaSettings, client_id: str, group: str,
                    instance_id: str | None = None) -> Config:
    """At-least-once consumer: offsets are stored by the service after a job is finished and
    committed in the background, on partition revoke and on close."""
    config = connection_config(settings, client_id) | {
        "group.id": group,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,  # what a crash can re-deliver: about one second of work
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
        # librdkafka (2.16) stops fetching a partition for this long once its local queue is
        # over queued.min.messages; at the default 1000 ms a consumer that drains faster than
        # that sat idle most of the time (issue 6: 160k msgs/s in a bare loop, 980k at 10 ms).
        "fetch.queue.backoff.ms": 10,
    }
    if instance_id:
        config["group.instance.id"] = instance_id
    return config | settings.kafka_extra_config


def admin_config(settings: KafkaSettings, client_id: str, *, main_client: bool = True) -> Config:
    return connection_config(settings, client_id) | (settings.kafka_extra_config if main_client else {})


def wait_for_broker(settings: KafkaSettings, stop: threading.Event | None = None) -> int:
    """Block until the cluster answers a metadata request; return its broker count.

    Raises KafkaUnreachable after KAFKA_WAIT_TIMEOUT_S, retrying with the retry policy, and
    StopRequested as soon as `stop` is set (SIGTERM/SIGINT): a service asked to stop while
    the broker is down stops within SHUTDOWN_TIMEOUT_S instead of waiting out
    KAFKA_WAIT_TIMEOUT_S and exiting 3 (found by tests/integration/test_reliability.py). So
    one metadata request waits at most half of SHUTDOWN_TIMEOUT_S, and the backoff between
    requests wakes up on `stop`.
    """
    stopping = stop or threading.Event()
    timeout = settings.kafka_wait_timeout_s
    deadline = time.monotonic() + timeout
    per_request = min(5.0, max(0.2, settings.shutdown_timeout_s / 2))
    quiet = admin_config(settings, "broker-wait", main_client=False) | {"log_level": 0,
                                                                         "error_cb": lambda _e: None}
    admin = AdminClient(quiet)
    event("kafka.waiting", f"waiting up to {timeout:g} s for Kafka at {settings.kafka_bootstrap_servers}",
          bootstrap_servers=settings.kafka_bootstrap_servers, timeout_s=timeout)

    def pause(seconds: float) -> None:  # the backoff between requests, cut short by `stop`
        stopping.wait(seconds)

    retrying = Retrying(stop=stop_after_delay(timeout) | stop_when_event_set(stopping), sleep=pause,
                        wait=settings.retry_policy().tenacity_wait,
                        retry=retry_if_exception_type(KafkaException), reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                remaining = max(0.2, min(per_request, deadline - time.monotonic()))
                metadata = admin.list_topics(timeout=remaining)
    except KafkaException as error:
        if stopping.is_set():
            event("kafka.wait_stopped", "stopped while waiting for Kafka")
            raise StopRequested("stopped while waiting for Kafka") from None
        reason = error.args[0].str() if error.args and isinstance(error.args[0], KafkaError) else str(error)
        raise KafkaUnreachable(
            f"Kafka not reachable at {settings.kafka_bootstrap_servers} within {timeout:g} s "
            f"(KAFKA_WAIT_TIMEOUT_S): {reason}") from None
    finally:
        # The retry loop's tracebacks keep this client in a reference cycle. Left to the
        # garbage collector, it may be destroyed on librdkafka's background thread of
        # another AdminClient, which crashes the process (seen here: SIGSEGV in about one
        # topic-admin run in six; confluent-kafka-python issues 1761, 2129). Destroy it now.
        del admin
        gc.collect()
    brokers = len(metadata.brokers)
    event("kafka.ready", f"Kafka answered: {brokers} broker(s)", brokers=brokers)
    return brokers
