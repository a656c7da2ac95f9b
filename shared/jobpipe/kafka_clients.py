"""librdkafka configuration for every client the services create, and the wait for the broker.

Every client, whatever its role, gets the connection and security settings and the extra
properties of its role: KAFKA_EXTRA_CONFIG (those of its properties that apply to the role),
then KAFKA_<ROLE>_EXTRA_CONFIG, which wins. The roles are librdkafka's: producer, consumer,
and admin (an admin client is a producer handle that sends no messages). Producers are
always acks=all with idempotence on; jobpipe.client_check refuses extra properties that would
undo that, or the consumers' at-least-once settings, at start.
"""

from __future__ import annotations

import gc
import re
import threading
import time
from functools import lru_cache
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, ShareConsumer
from confluent_kafka.admin import AdminClient

from jobpipe.errors import KafkaRefused, KafkaUnreachable, StopRequested
from jobpipe.logs import client_event, event, kafka_client_logger
from jobpipe.settings import CLIENT_ROLES, ClientRole, KafkaSettings

Config = dict[str, Any]


def _on_client_error(error: KafkaError) -> None:
    """librdkafka's error callback: mostly what its log line just said (a failed connection),
    so a cause is written once per REPEAT_INTERVAL_S across both; a fatal error always."""
    level = "ERROR" if error.fatal() else "WARNING"
    client_event("kafka.error", f"Kafka client error: {error.str()}", error.str(), level=level,
                 always=error.fatal(), code=error.name(), fatal=error.fatal(), retriable=error.retriable())


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
    if settings.kafka_ssl_certificate_location:
        config["ssl.certificate.location"] = settings.kafka_ssl_certificate_location
    if settings.kafka_ssl_key_location:
        config["ssl.key.location"] = settings.kafka_ssl_key_location
    if settings.kafka_ssl_key_password is not None:
        config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return config


def extra_config(settings: KafkaSettings, role: ClientRole) -> dict[str, str]:
    """The extra properties a client of `role` gets: those of KAFKA_EXTRA_CONFIG that apply to
    the role (a consumer property on a producer would only earn a librdkafka warning), then
    KAFKA_<ROLE>_EXTRA_CONFIG, which wins."""
    shared = {name: value for name, value in settings.kafka_extra_config.items()
              if role in probe_property(name, value).roles}
    return shared | settings.role_extra_config(role)


def producer_config(settings: KafkaSettings, client_id: str, *,
                    partitioner: str = "murmur2_random", linger_ms: float = 5) -> Config:
    """A durable producer: every message acknowledged by all in-sync replicas, no duplicates
    from the client's own retries. `linger_ms`: how long a batch waits to fill (throughput)
    before it is sent (latency). Every producer gets the extra properties of its role."""
    config = connection_config(settings, client_id) | {
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": partitioner,
        "linger.ms": linger_ms,
    }
    return config | extra_config(settings, "producer")


# librdkafka prefetches until its queue holds queued.min.messages per partition or
# queued.max.messages.kbytes in all (64 MB by default), whatever the service can hold: 150 MB
# RSS with 1 KB jobs waiting at MAX_IN_FLIGHT=100 (issue 22, defect 6). Sized from MAX_IN_FLIGHT:
PREFETCH_KB_PER_JOB = 4  # queued kilobytes per job the member may hold ...
PREFETCH_KB_MIN = 4096  # ... and at least this: below it the fetcher starves a fast handler
PREFETCH_KB_MAX = 65536  # librdkafka's default: the most it ever queues
PREFETCH_MESSAGES_MIN = 1000  # queued.min.messages (per partition) at least this
FETCH_MAX_BYTES_DEFAULT = 52_428_800  # librdkafka's fetch.max.bytes


def prefetch_config(max_in_flight: int) -> Config:
    """How much librdkafka fetches ahead for a member holding up to `max_in_flight` jobs:
    at most `queued.max.messages.kbytes` queued, plus one fetch response (fetch.max.bytes,
    the same size) on its way: 8 MB at MAX_IN_FLIGHT=1000 or below."""
    kbytes = min(PREFETCH_KB_MAX, max(PREFETCH_KB_MIN, PREFETCH_KB_PER_JOB * max_in_flight))
    return {
        "queued.max.messages.kbytes": kbytes,
        "queued.min.messages": min(100_000, max(PREFETCH_MESSAGES_MIN, max_in_flight)),
        "fetch.max.bytes": min(kbytes * 1024, FETCH_MAX_BYTES_DEFAULT),
    }


def consumer_config(settings: KafkaSettings, client_id: str, group: str,
                    instance_id: str | None = None, *, max_in_flight: int | None = None) -> Config:
    """At-least-once consumer: offsets are stored by the service after a job is finished and
    committed in the background, on partition revoke and on close. With `max_in_flight`
    (MAX_IN_FLIGHT) the prefetch is sized from it (`prefetch_config`)."""
    config = connection_config(settings, client_id) | {
        "group.id": group,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,  # what a crash can re-deliver: about one second of work
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # The end of a partition is reported (an event, not a message): the member stores that
        # position once nothing of the partition is unfinished, so the group's lag reaches 0 past
        # a transaction marker (a re-drive's, an exactly-once producer's), which is never handed
        # to the application and would otherwise leave a lag of 1 for good.
        "enable.partition.eof": True,
        # librdkafka (2.16) stops fetching a partition for this long once its local queue is
        # over queued.min.messages; at the default 1000 ms a consumer that drains faster than
        # that sat idle most of the time (issue 6: 160k msgs/s in a bare loop, 980k at 10 ms).
        "fetch.queue.backoff.ms": 10,
    }
    if instance_id:
        config["group.instance.id"] = instance_id
    if max_in_flight is not None:
        config |= prefetch_config(max_in_flight)
    return config | extra_config(settings, "consumer")


SHARE_POLL_RECORDS_MIN = 8  # most records a share consumer's poll takes is at least this


def share_consumer_config(settings: KafkaSettings, client_id: str, group: str, concurrency: int) -> Config:
    """A share-group member (CONSUMER_MODE=share) that acknowledges each record itself."""
    return connection_config(settings, client_id) | {
        "group.id": group,
        "share.acknowledgement.mode": "explicit",
        # A poll's records are locked to this member until acknowledged: take a few rounds of
        # what the handler slots can run (a poll per record cost 4 ms here), not a whole batch
        # of the log, so the other members get the rest.
        "max.poll.records": max(SHARE_POLL_RECORDS_MIN, 2 * concurrency),
    } | extra_config(settings, "consumer")


def admin_config(settings: KafkaSettings, client_id: str) -> Config:
    """An admin client."""
    return connection_config(settings, client_id) | extra_config(settings, "admin")


def kafka_reason(error: BaseException) -> str:
    """A client error's message on one line (librdkafka's sometimes end with a newline)."""
    first = error.args[0] if isinstance(error, KafkaException) and error.args else None
    text = first.str() if isinstance(first, KafkaError) else str(error) or type(error).__name__
    return " ".join(text.split())


# ---- throwaway clients: librdkafka checks a configuration when a client is created -------------

OIDC_ENDPOINT = "sasl.oauthbearer.token.endpoint.url"


class CapturedLog:
    """A `logger=` for confluent-kafka that keeps librdkafka's lines instead of writing them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, _level: int, message: str, *args: object) -> None:
        self.lines.append(message % args if args else message)


def throwaway_client(kind: ClientRole, config: Config) -> list[str]:
    """Create a client of `kind` with `config` and destroy it at once; return what librdkafka
    logged meanwhile. librdkafka checks every property when it is set (KafkaException
    _INVALID_ARG: unknown name, invalid value) and the whole configuration when the client is
    created ("Failed to create ...": properties that contradict each other, certificates and
    keys that cannot be loaded). Without bootstrap servers the client never connects: nothing
    is sent to any broker. With OIDC, librdkafka fetches a token as soon as the client exists,
    and its destruction waits for that request (20 s when the endpoint does not answer): the
    token endpoint is replaced by a URL that fails at once, without a connection. Raises what
    the constructor raises."""
    captured = CapturedLog()
    quiet = {name: value for name, value in config.items()
             if name not in ("bootstrap.servers", "metadata.broker.list", "logger", "error_cb")}
    quiet["logger"] = captured
    if quiet.get(OIDC_ENDPOINT):
        quiet[OIDC_ENDPOINT] = "jobpipe-config-check:nowhere"
    if kind == "consumer":  # a share-group member's configuration is checked by a ShareConsumer
        member = ShareConsumer if "share.acknowledgement.mode" in quiet else Consumer
        consumer = member({"group.id": "jobpipe-config-check"} | quiet)
        consumer.close()  # serves its log queue
        del consumer
    else:
        client = Producer(quiet) if kind == "producer" else AdminClient(quiet)
        client.poll(0)  # serves its log queue: the configuration warnings
        del client
    return captured.lines


CREATE_FAILED = "Failed to create"  # how confluent-kafka words a failed rd_kafka_new()
# confluent-kafka's own properties: Python objects (callbacks, a logger), set by the services.
PYTHON_PROPERTIES = frozenset({"default.topic.config", "error_cb", "logger", "oauth_cb", "on_commit",
                               "on_delivery", "stats_cb", "throttle_cb"})


class PropertyProbe:
    """What librdkafka says of one property set on its own: `error` if it refuses the name or
    the value; `roles`, the client roles it applies to."""

    def __init__(self, roles: frozenset[ClientRole], error: str | None = None) -> None:
        self.roles = roles
        self.error = error


@lru_cache(maxsize=512)
def probe_property(name: str, value: str) -> PropertyProbe:
    """Set `name`=`value` on a throwaway producer and consumer. librdkafka warns when a
    property of the other kind is set ("... is a consumer property and will be ignored by this
    producer instance"): such a property does not apply to that role (admin clients are
    producer handles). A client that fails to be created for another reason (a property that
    needs others, as sasl.oauthbearer.method=oidc does) says nothing about the property alone."""
    roles = set(CLIENT_ROLES)
    if name in PYTHON_PROPERTIES:
        return PropertyProbe(frozenset(roles), "a confluent-kafka callback or object, which the services "
                                               "set themselves; not a librdkafka property")
    kinds: tuple[tuple[ClientRole, ClientRole], ...] = (("producer", "consumer"), ("consumer", "producer"))
    for kind, other in kinds:
        try:
            lines = throwaway_client(kind, {name: value})
        except KafkaException as error:
            reason = kafka_reason(error)
            if not reason.startswith(CREATE_FAILED):
                return PropertyProbe(frozenset(CLIENT_ROLES), reason)
            continue
        except Exception as error:  # confluent-kafka's own checks raise TypeError, ValueError
            return PropertyProbe(frozenset(CLIENT_ROLES), kafka_reason(error))
        if any(f"is a {other} property and will be ignored" in line for line in lines):
            roles -= {"producer", "admin"} if kind == "producer" else {"consumer"}
    return PropertyProbe(frozenset(roles))


# librdkafka reports a TLS alert from the broker (TLS 1.3: after the handshake, when the broker
# checked the client's certificate) as a transport error, not as _SSL.
TLS_ALERT = re.compile(r"alert (bad certificate|certificate required|unknown ca|certificate unknown|"
                       r"handshake failure|access denied|decrypt error)|SSL alert number", re.IGNORECASE)
# The broker wait looks at what librdkafka reported after each metadata request, which waits
# 0.25 s at first, then twice as long each time up to 1 s: a refusal (reported within the
# first connection, 0.4 s for SCRAM over TLS here) is seen within about a second, and a broker
# far away (a metadata round trip longer than 0.25 s) still gets to answer.
ANSWER_SLICE_S = 0.25
ANSWER_SLICE_MAX_S = 1.0


def refused(error: KafkaError) -> str | None:
    """The one-line reason when `error` says the broker refuses this client for good (wrong
    credentials, a certificate that cannot be verified, no client certificate where one is
    required); None for anything worth retrying."""
    text = " ".join(error.str().split())
    if error.code() == KafkaError._AUTHENTICATION:
        return f"authentication failed (check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD): {text}"
    if error.code() == KafkaError._SSL:
        return (f"TLS handshake failed (check KAFKA_SSL_CA_LOCATION and the client certificate): "
                f"{text}")
    if error.code() == KafkaError._TRANSPORT and TLS_ALERT.search(text):
        return ("TLS handshake refused by the broker: it did not accept this client's certificate "
                "(a listener that requires one needs KAFKA_SSL_CERTIFICATE_LOCATION and "
                f"KAFKA_SSL_KEY_LOCATION, signed by a CA the broker trusts): {text}")
    return None


def wait_for_broker(settings: KafkaSettings, stop: threading.Event | None = None) -> int:
    """Block until the cluster answers a metadata request; return its broker count.

    Raises KafkaRefused as soon as librdkafka reports a refusal (credentials, TLS: see
    `refused`), KafkaUnreachable once KAFKA_WAIT_TIMEOUT_S has passed, and StopRequested as
    soon as `stop` is set (SIGTERM/SIGINT): a service asked to stop while the broker is down
    stops within SHUTDOWN_TIMEOUT_S instead of waiting out KAFKA_WAIT_TIMEOUT_S and exiting 3.
    librdkafka reconnects on its own (with its reconnect backoff), so the wait is a series of
    short metadata requests (ANSWER_SLICE_S, growing to ANSWER_SLICE_MAX_S) with a look at
    what librdkafka reported after each: each of the three ends comes within about a second of
    its cause (a refusal used to wait out a 5 s request, and the timeout a retry's backoff).
    """
    stopping = stop or threading.Event()
    timeout = settings.kafka_wait_timeout_s
    deadline = time.monotonic() + timeout
    # Quiet: until the broker answers, every failed connection would be a log line. What
    # librdkafka reports meanwhile is kept: a refusal (credentials, TLS) ends the wait at once.
    reported: list[KafkaError] = []
    quiet = admin_config(settings, "broker-wait") | {"log_level": 0, "error_cb": reported.append}
    admin = AdminClient(quiet)
    event("kafka.waiting", f"waiting up to {timeout:g} s for Kafka at {settings.kafka_bootstrap_servers}",
          bootstrap_servers=settings.kafka_bootstrap_servers, timeout_s=timeout)
    last = "no answer"  # librdkafka's last word on why: what it reported, else the request's error
    said: str | None = None
    answer_s = ANSWER_SLICE_S
    try:
        while True:
            if stopping.is_set():
                event("kafka.wait_stopped", "stopped while waiting for Kafka")
                raise StopRequested("stopped while waiting for Kafka")
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaUnreachable(
                    f"Kafka not reachable at {settings.kafka_bootstrap_servers} within {timeout:g} s "
                    f"(KAFKA_WAIT_TIMEOUT_S): {said or last}")
            try:
                metadata = admin.list_topics(timeout=min(answer_s, left))
                break
            except KafkaException as error:
                last = kafka_reason(error)
            answer_s = min(ANSWER_SLICE_MAX_S, answer_s * 2)
            admin.poll(0)  # serves error_cb
            news, reported[:] = list(reported), []
            for report in news:
                if (refusal := refused(report)) is not None:
                    raise KafkaRefused(f"Kafka at {settings.kafka_bootstrap_servers} refused "
                                       f"the connection: {refusal}")
                if report.code() != KafkaError._ALL_BROKERS_DOWN:
                    said = " ".join(report.str().split())
    finally:
        # Left to the garbage collector, this client may be destroyed on librdkafka's
        # background thread of another AdminClient, which crashes the process (seen here:
        # SIGSEGV in about one topic-admin run in six; confluent-kafka-python issues 1761,
        # 2129). Destroy it now.
        del admin
        gc.collect()
    brokers = len(metadata.brokers)
    event("kafka.ready", f"Kafka answered: {brokers} broker(s)", brokers=brokers)
    return brokers
