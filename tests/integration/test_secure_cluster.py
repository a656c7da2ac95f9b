"""The services against a broker that asks who they are (issue 12): SASL_SSL with SCRAM-SHA-512
and mutual TLS, ACLs enforced. The seed scenario runs over each; a wrong password, an untrusted
broker certificate and a missing ACL each end a service with exit 3 and one line that says
which; no secret reaches a log line or /metrics."""

from __future__ import annotations

import contextlib
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AclOperation, ResourceType
from prometheus_client import REGISTRY

from consumer_service import main as consumer_main
from consumer_service.lag_exporter import LagReader
from consumer_service.settings import ConsumerSettings
from jobpipe.access import Need
from jobpipe.client import JobClient
from jobpipe.errors import KafkaRefused
from jobpipe.job import Job
from tests.integration import secure_cluster
from tests.integration.secure_cluster import KEY_PASSWORD, MTLS_PRINCIPAL, Security
from tests.observing import wait_until
from tests.service_runner import ServiceProcess, free_port

PASSWORDS = {"ops": "ops-Secret-1", "producer": "producer-Secret-2", "consumer": "consumer-Secret-3"}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Security]:
    cluster, files = secure_cluster.start(tmp_path_factory.mktemp("secure"))
    try:
        security = Security(cluster, files)
        for user, password in PASSWORDS.items():
            security.add_user(user, password)
        security.allow_admin("User:ops")
        yield security
    finally:
        cluster.stop()


STARTED: list[ServiceProcess] = []  # what the running test started: killed when it ends


def start(command: str, *args: str, **settings: object) -> ServiceProcess:
    service = ServiceProcess(command, *args, **settings)
    STARTED.append(service)
    return service


@pytest.fixture(autouse=True)
def services_die_with_the_test() -> Iterator[None]:
    """A failed assertion must not leave a service running into the next test."""
    try:
        yield
    finally:
        while STARTED:
            STARTED.pop().kill()


class Names:
    def __init__(self) -> None:
        self.topic = f"secure-{uuid.uuid4().hex[:8]}"
        self.dlq = f"{self.topic}.dlq"
        self.group = f"group-{self.topic}"

    def settings(self, **extra: object) -> dict[str, object]:
        return {"jobs_topic": self.topic, "dlq_topic": self.dlq, "consumer_group": self.group,
                "kafka_wait_timeout_s": 30, "shutdown_timeout_s": 10} | extra


def sasl(secure: Security, user: str, ca: Path | None = None) -> dict[str, object]:
    return secure.sasl_settings(user, PASSWORDS[user], ca)


def ensure_topics(secure: Security, names: Names) -> None:
    ops = sasl(secure, "ops")
    secure.wait_until_effective(ops, [])
    admin = start("topic-admin", "ensure", **names.settings(**ops))
    assert admin.wait(120) == 0, admin.tail()


def consumer_needs(names: Names, client: dict[str, object]) -> list[Need]:
    """What the consumer checks at start (consumer_service.main.needs), for these names."""
    return consumer_main.needs(ConsumerSettings(**names.settings(**client)))  # type: ignore[arg-type]


def refusal(service: ServiceProcess) -> str:
    """The one line a service that was refused ends with (exit 3), within seconds."""
    assert service.wait(60) == 3, service.tail()
    failed = service.events("service.failed")
    assert len(failed) == 1, service.tail()
    assert "Traceback" not in service.stderr + service.output, service.stderr
    return str(failed[0]["message"])


def seconds_waited(service: ServiceProcess) -> float:
    """From `kafka.waiting` to `service.failed`: how long the broker wait took to give up."""
    waiting, failed = (datetime.fromisoformat(str(service.events(name)[0]["time"]))
                       for name in ("kafka.waiting", "service.failed"))
    return (failed - waiting).total_seconds()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (*PASSWORDS.values(), KEY_PASSWORD, secure_cluster.STORE_PASSWORD):
            assert secret not in text


def test_the_seed_scenario_runs_over_sasl_ssl_with_the_least_acls(secure: Security) -> None:
    names = Names()
    ensure_topics(secure, names)
    secure.allow_producer("User:producer", names.topic)
    secure.allow_consumer("User:consumer", names.topic, names.group, names.dlq)
    consumer_settings = sasl(secure, "consumer")
    secure.wait_until_effective(consumer_settings, consumer_needs(names, consumer_settings))
    port = free_port()
    consumer = start("consumer", **names.settings(**consumer_settings, metrics_port=port))
    # The producer's password from a file (KAFKA_SASL_PASSWORD_FILE, as compose's secrets give it).
    password_file = secure.files.ca.parent / "producer-password"
    password_file.write_text(PASSWORDS["producer"] + "\n")
    producer_settings = sasl(secure, "producer")
    del producer_settings["kafka_sasl_password"]
    producer = start("producer", **names.settings(**producer_settings, producer_workers=2,
                                                  messages_per_worker=10,
                                                  kafka_sasl_password_file=str(password_file)))
    assert producer.wait(60) == 0, producer.tail()
    consumer.wait_for("job.processed", 20, timeout=60)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert consumer.stop() == 0, consumer.tail()

    produced = {e["id"] for e in producer.events("job.produced")}
    assert len(produced) == 20 and {e["id"] for e in consumer.events("job.processed")} == produced
    assert_no_secret(producer.output, producer.stderr, consumer.output, consumer.stderr, metrics)


def test_mutual_tls_with_an_encrypted_client_key(secure: Security) -> None:
    names = Names()
    ensure_topics(secure, names)
    secure.allow_producer(MTLS_PRINCIPAL, names.topic)
    secure.allow_consumer(MTLS_PRINCIPAL, names.topic, names.group, names.dlq)
    mtls = secure.mtls_settings()
    secure.wait_until_effective(mtls, consumer_needs(names, mtls))
    consumer = start("consumer", **names.settings(**mtls))
    # The producer's key password from a file (KAFKA_SSL_KEY_PASSWORD_FILE).
    key_password_file = secure.files.ca.parent / "key-password"
    key_password_file.write_text(str(mtls.pop("kafka_ssl_key_password")))
    mtls["kafka_ssl_key_password_file"] = str(key_password_file)
    producer = start("producer", **names.settings(**mtls, producer_workers=1,
                                                           messages_per_worker=10))
    assert producer.wait(60) == 0, producer.tail()
    consumer.wait_for("job.processed", 10, timeout=60)
    assert consumer.stop() == 0, consumer.tail()
    assert_no_secret(producer.output, consumer.output, producer.stderr, consumer.stderr)


def test_a_wrong_password_ends_the_wait_at_once_with_authentication_failed(secure: Security) -> None:
    names = Names()
    started = time.monotonic()
    wrong = sasl(secure, "consumer") | {"kafka_sasl_password": "not-the-password", "kafka_wait_timeout_s": 60}
    consumer = start("consumer", **names.settings(**wrong))
    message = refusal(consumer)
    assert "authentication failed" in message, message
    assert time.monotonic() - started < 30, "refused at once, not after KAFKA_WAIT_TIMEOUT_S"
    assert seconds_waited(consumer) < 1.5, "within about a second of the refusal (was 5 s)"
    assert "not-the-password" not in message


def test_no_client_certificate_on_a_listener_that_requires_one_is_refused_at_once(secure: Security) -> None:
    """TLS 1.3: the broker's alert (bad certificate) reaches librdkafka as a transport error; it
    used to wait out KAFKA_WAIT_TIMEOUT_S and say "not reachable ... Broker transport failure"."""
    names = Names()
    without = {name: value for name, value in secure.mtls_settings().items()
               if not name.startswith(("kafka_ssl_certificate", "kafka_ssl_key"))}
    producer = start("producer", **names.settings(**without, kafka_wait_timeout_s=60))
    message = refusal(producer)
    assert "did not accept this client's certificate" in message, message
    assert "KAFKA_SSL_CERTIFICATE_LOCATION" in message, message
    assert seconds_waited(producer) < 1.5, producer.tail()


def test_an_untrusted_broker_certificate_is_a_tls_handshake_failure(secure: Security) -> None:
    names = Names()
    untrusted = sasl(secure, "producer", ca=secure.files.other_ca) | {"kafka_wait_timeout_s": 60}
    producer = start("producer", **names.settings(**untrusted))
    message = refusal(producer)
    assert "TLS handshake failed" in message, message
    assert seconds_waited(producer) < 1.5, producer.tail()


@pytest.mark.parametrize(("service", "withheld", "named"), [
    ("consumer", "topic", "READ topic '{topic}' (JOBS_TOPIC)"),
    ("consumer", "group", "READ group '{group}' (CONSUMER_GROUP)"),
    ("consumer", "dlq", "WRITE topic '{dlq}' (DLQ_TOPIC)"),
    ("producer", "topic", "WRITE topic '{topic}' (JOBS_TOPIC)"),
])
def test_a_missing_acl_is_refused_at_start_naming_the_resource(
        secure: Security, service: str, withheld: str, named: str) -> None:
    names = Names()
    ensure_topics(secure, names)
    user = f"{service}-{uuid.uuid4().hex[:6]}"
    secure.add_user(user, "limited-Secret-9")
    principal = f"User:{user}"
    if service == "producer":
        secure.allow(principal, AclOperation.DESCRIBE, ResourceType.TOPIC, names.topic)  # but not WRITE
    else:
        grants = {"topic": (AclOperation.READ, ResourceType.TOPIC, names.topic),
                  "group": (AclOperation.READ, ResourceType.GROUP, names.group),
                  "dlq": (AclOperation.WRITE, ResourceType.TOPIC, names.dlq)}
        for what, (operation, kind, name) in grants.items():
            if what != withheld:
                secure.allow(principal, operation, kind, name)
    settings = secure.sasl_settings(user, "limited-Secret-9")
    secure.wait_until_effective(settings, [])  # authenticates
    message = refusal(start(service, **names.settings(**settings)))
    assert named.format(topic=names.topic, group=names.group, dlq=names.dlq) in message, message
    assert principal in message


def test_the_client_submits_over_sasl_ssl_with_write_on_the_topic_only(secure: Security) -> None:
    """An application's JobClient, with the services' settings for a secured cluster and the
    least ACL (WRITE on the topic): each submit is acknowledged and the consumer runs the job; a
    client whose user lacks that ACL is refused at once, naming it, with nothing sent."""
    names = Names()
    ensure_topics(secure, names)
    secure.allow_producer("User:producer", names.topic)
    secure.allow_consumer("User:consumer", names.topic, names.group, names.dlq)
    producer_settings = sasl(secure, "producer")
    secure.wait_until_effective(producer_settings, [Need("WRITE", "topic", names.topic, "JOBS_TOPIC")])
    with JobClient(**names.settings(**producer_settings)) as client:  # type: ignore[arg-type]
        ids = [client.submit({"n": n}, type="demo", key=f"k{n % 2}") for n in range(5)]
    assert len(set(ids)) == 5

    consumer_settings = sasl(secure, "consumer")
    secure.wait_until_effective(consumer_settings, [Need("READ", "topic", names.topic, "JOBS_TOPIC")])
    with ServiceProcess("consumer", **names.settings(**consumer_settings)) as consumer:
        consumer.wait_for("job.processed", 5, timeout=60)
        assert {e["id"] for e in consumer.events("job.processed")} == set(ids)
        assert consumer.stop() == 0, consumer.tail()

    other = Names()  # a topic the producer user may not write to
    ensure_topics(secure, other)
    with pytest.raises(KafkaRefused, match=r"WRITE.*JOBS_TOPIC") as refused:
        JobClient(**other.settings(**producer_settings))  # type: ignore[arg-type]
    assert_no_secret(str(refused.value))


def test_topic_admin_offsets_names_the_acl_it_lacks_in_one_line(secure: Security) -> None:
    """`topic-admin offsets` reads with DESCRIBE on the group and the topic and moves with READ on
    both: each missing ACL ends it with exit 3 and one line naming it, not a librdkafka traceback."""
    names = Names()
    ensure_topics(secure, names)
    user = f"offsets-{uuid.uuid4().hex[:6]}"
    secure.add_user(user, "limited-Secret-9")
    settings = names.settings(**secure.sasl_settings(user, "limited-Secret-9"))
    secure.wait_until_effective(settings, [])  # authenticates
    message = refusal(start("topic-admin", "offsets", **settings))
    assert f"DESCRIBE group '{names.group}' (CONSUMER_GROUP); DESCRIBE topic '{names.topic}' (JOBS_TOPIC)" \
        in message, message
    assert f"User:{user}" in message

    principal = f"User:{user}"
    secure.allow(principal, AclOperation.DESCRIBE, ResourceType.GROUP, names.group)
    secure.allow(principal, AclOperation.READ, ResourceType.TOPIC, names.topic)
    secure.wait_until_effective(settings, [Need("READ", "topic", names.topic, "JOBS_TOPIC")])
    dry_run = start("topic-admin", "offsets", "--to-earliest", **settings)
    assert dry_run.wait(60) == 0, dry_run.tail()  # DESCRIBE is all a dry run needs
    message = refusal(start("topic-admin", "offsets", "--to-earliest", "--execute", **settings))
    assert message.endswith(f"to READ group '{names.group}' (CONSUMER_GROUP): grant it with an ACL "
                            "(see docs/security.md)"), message


def test_the_lag_exporter_refused_read_on_the_dlq_still_counts_its_dead_letters(secure: Security) -> None:
    """jobs_dead_letters_waiting reads the dead letters (READ on DLQ_TOPIC, docs/security.md); a
    principal without it gets the DLQ's offset count (exact without transactions), not nothing."""
    names = Names()
    ensure_topics(secure, names)
    producer = Producer({"bootstrap.servers": secure.cluster.bootstrap_servers})  # the super user
    for seq in range(2):
        producer.produce(names.dlq, Job.new(1, seq).to_bytes(), partition=0)
    assert producer.flush(30) == 0
    del producer
    user = f"exporter-{uuid.uuid4().hex[:6]}"
    secure.add_user(user, "limited-Secret-9")
    for kind, name in ((ResourceType.TOPIC, names.topic), (ResourceType.GROUP, names.group),
                       (ResourceType.TOPIC, names.dlq)):
        secure.allow(f"User:{user}", AclOperation.DESCRIBE, kind, name)
    settings = names.settings(**secure.sasl_settings(user, "limited-Secret-9"))
    secure.wait_until_effective(settings, [])
    reader = LagReader(ConsumerSettings(**settings))  # type: ignore[arg-type]
    labels = {"topic": names.dlq, "partition": "0"}
    try:
        def counted() -> bool:
            with contextlib.suppress(KafkaException):
                reader.read()
            return REGISTRY.get_sample_value("jobs_dead_letters_waiting", labels) == 2
        wait_until(counted, 30, "2 dead letters waiting without READ on the DLQ", poll=0.5)
    finally:
        reader.close()


def test_a_consumer_without_the_delay_tiers_acls_is_refused_at_start_naming_them(secure: Security) -> None:
    """The ACLs a consumer had before delayed jobs (its topic, group and DLQ) are not enough: its
    members park jobs in the delay tiers and its tier mover reads them there and writes them on.
    Without them delayed jobs were never parked nor moved (the mover only logged warnings); now
    the consumer is refused at start, exit 3, naming what to grant."""
    names = Names()
    ensure_topics(secure, names)
    secure.allow_consumer("User:consumer", names.topic, names.group, names.dlq, tiers=False)
    consumer_settings = sasl(secure, "consumer")
    secure.wait_until_effective(consumer_settings, consumer_needs(names, consumer_settings)[:3])
    message = refusal(start("consumer", **names.settings(**consumer_settings)))
    assert f"{names.topic}.delay.5s" in message and "delay tier" in message, message
    assert f"'{names.group}.delays'" in message and "WRITE topic" in message, message
