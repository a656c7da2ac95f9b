"""librdkafka client configuration (issue 12): every client a service creates gets the security
settings and the extra properties of its role, and every property is checked at start: an
unknown one, an invalid value, a property of the wrong role, one that would break at-least-once
delivery, or a certificate that cannot be loaded is exit 2 with one line naming the variable and
the property. No broker is needed: the check never connects."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from consumer_service import member_producer, worker
from consumer_service.settings import ConsumerSettings
from jobpipe import kafka_clients
from jobpipe.client_check import check_client_configs, role_config
from jobpipe.errors import ConfigError
from jobpipe.handlers import demo_handler
from jobpipe.handling import JobHandler
from jobpipe.kafka_clients import (
    admin_config,
    consumer_config,
    probe_property,
    producer_config,
    throwaway_client,
    wait_for_broker,
)
from jobpipe.settings import KafkaSettings, load_settings, parse_pairs
from producer_service import main as producer_main
from producer_service.settings import ProducerSettings
from tests.service_runner import ServiceProcess, free_port, run_to_end
from topic_admin_service import main as topic_admin_main
from topic_admin_service.settings import TopicAdminSettings

KAFKA_VARIABLES = ("KAFKA_EXTRA_CONFIG", "KAFKA_PRODUCER_EXTRA_CONFIG", "KAFKA_CONSUMER_EXTRA_CONFIG",
                   "KAFKA_ADMIN_EXTRA_CONFIG", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM",
                   "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CA_LOCATION",
                   "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION", "KAFKA_SSL_KEY_PASSWORD")
KEY_PASSWORD = "K3y-Pa55-w0rd"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test process's own KAFKA_* settings (if any) must not change what these tests see."""
    for variable in KAFKA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def settings_of(cls: type[KafkaSettings], monkeypatch: pytest.MonkeyPatch, **env: str) -> KafkaSettings:
    for variable, value in env.items():
        monkeypatch.setenv(variable.upper(), value)
    return load_settings(cls)


def refusal(cls: type[KafkaSettings], monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The one-line ConfigError the start check raises for these settings."""
    settings = settings_of(cls, monkeypatch, **env)
    with pytest.raises(ConfigError) as refused:
        check_client_configs(settings)
    message = str(refused.value)
    assert "\n" not in message and message.strip() == message, repr(message)
    return message


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A client certificate with its key encrypted with KEY_PASSWORD, and another, plain key."""
    if shutil.which("openssl") is None:
        pytest.fail("these tests need the openssl command (to make a test certificate)", pytrace=False)
    folder = tmp_path_factory.mktemp("tls")
    files = {"cert": folder / "client.pem", "key": folder / "client.key", "other_key": folder / "other.key"}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-keyout", str(files["key"]), "-out", str(files["cert"]), "-days", "1",
                    "-subj", "/CN=jobpipe-test", "-passout", f"pass:{KEY_PASSWORD}"],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-out", str(files["other_key"])], check=True, capture_output=True, timeout=60)
    return files


# ---- unknown properties and invalid values ----------------------------------------------------

@pytest.mark.parametrize(("cls", "variable"), [
    (ProducerSettings, "KAFKA_EXTRA_CONFIG"),
    (ConsumerSettings, "KAFKA_EXTRA_CONFIG"),
    (TopicAdminSettings, "KAFKA_EXTRA_CONFIG"),
    (ProducerSettings, "KAFKA_PRODUCER_EXTRA_CONFIG"),
    (ConsumerSettings, "KAFKA_PRODUCER_EXTRA_CONFIG"),  # the dead-letter producer
    (ConsumerSettings, "KAFKA_CONSUMER_EXTRA_CONFIG"),
    (ProducerSettings, "KAFKA_ADMIN_EXTRA_CONFIG"),  # the broker wait
    (TopicAdminSettings, "KAFKA_ADMIN_EXTRA_CONFIG"),
])
def test_an_unknown_property_names_the_variable_and_the_property(
        monkeypatch: pytest.MonkeyPatch, cls: type[KafkaSettings], variable: str) -> None:
    message = refusal(cls, monkeypatch, **{variable: "socket.timeout.ms=30000,no.such.property=1"})
    assert message == f"{variable}: no.such.property: no such librdkafka property"


@pytest.mark.parametrize(("variable", "pairs", "complaint"), [
    ("KAFKA_EXTRA_CONFIG", "enable.auto.commit=maybe", 'Expected bool value for "enable.auto.commit"'),
    ("KAFKA_CONSUMER_EXTRA_CONFIG", "enable.auto.commit=maybe", "enable.auto.commit"),
    ("KAFKA_EXTRA_CONFIG", "linger.ms=-5", "outside allowed range"),
    ("KAFKA_PRODUCER_EXTRA_CONFIG", "compression.type=zip", 'Invalid value "zip"'),
    ("KAFKA_CONSUMER_EXTRA_CONFIG", "auto.offset.reset=sometimes", 'Invalid value "sometimes"'),
    ("KAFKA_EXTRA_CONFIG", "error_cb=print", "callback"),
])
def test_an_invalid_value_names_the_variable_and_the_property(
        monkeypatch: pytest.MonkeyPatch, variable: str, pairs: str, complaint: str) -> None:
    message = refusal(ConsumerSettings, monkeypatch, **{variable: pairs})
    name = pairs.partition("=")[0]
    assert message.startswith(f"{variable}: {name}: "), message
    assert complaint in message


def test_properties_that_contradict_each_other_are_refused_naming_the_property(
        monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(ProducerSettings, monkeypatch, kafka_producer_extra_config="retries=0")
    assert message.startswith("KAFKA_PRODUCER_EXTRA_CONFIG: retries: "), message
    message = refusal(ConsumerSettings, monkeypatch, kafka_security_protocol="SASL_SSL",
                      kafka_sasl_mechanism="OAUTHBEARER", kafka_extra_config="sasl.oauthbearer.method=oidc")
    assert message.startswith("KAFKA_EXTRA_CONFIG: sasl.oauthbearer.method: "), message
    assert "token.endpoint.url" in message


def test_the_check_of_an_oidc_setup_fetches_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka asks the token endpoint as soon as a client exists; a throwaway client must
    not (and must not wait 20 s for an endpoint that does not answer)."""
    with socket.socket() as endpoint:
        endpoint.bind(("127.0.0.1", 0))
        endpoint.listen(8)
        endpoint.settimeout(0)
        url = f"http://127.0.0.1:{endpoint.getsockname()[1]}/token"
        started = time.monotonic()
        check_client_configs(settings_of(
            ConsumerSettings, monkeypatch, kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="OAUTHBEARER",
            kafka_extra_config=f"sasl.oauthbearer.method=oidc,sasl.oauthbearer.client.id=jobpipe,"
                               f"sasl.oauthbearer.client.secret=S3cret,sasl.oauthbearer.token.endpoint.url={url}"))
        assert time.monotonic() - started < 15, "waited for the token endpoint (librdkafka gives it 20 s)"
        with pytest.raises(BlockingIOError):
            endpoint.accept()


def test_a_complaint_that_names_no_property_is_traced_to_the_one_that_causes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(ProducerSettings, monkeypatch, kafka_security_protocol="SASL_PLAINTEXT",
                      kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u", kafka_sasl_password="p",
                      kafka_extra_config="linger.ms=5,sasl.mechanism=GSSAPI")
    assert message.startswith("KAFKA_EXTRA_CONFIG: sasl.mechanism: "), message


def test_a_property_of_the_wrong_role_in_a_role_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(ConsumerSettings, monkeypatch,
                      kafka_producer_extra_config="max.poll.interval.ms=600000")
    assert message.startswith("KAFKA_PRODUCER_EXTRA_CONFIG: max.poll.interval.ms is a consumer property")
    message = refusal(ConsumerSettings, monkeypatch, kafka_producer_extra_config="",
                      kafka_consumer_extra_config="linger.ms=5")
    assert message.startswith("KAFKA_CONSUMER_EXTRA_CONFIG: linger.ms is a producer property")
    message = refusal(TopicAdminSettings, monkeypatch, kafka_consumer_extra_config="",
                      kafka_admin_extra_config="group.id=mine")
    assert message.startswith("KAFKA_ADMIN_EXTRA_CONFIG: group.id is a consumer property")


def test_only_the_roles_a_service_uses_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The producer service creates no consumer: KAFKA_CONSUMER_EXTRA_CONFIG is not its business."""
    check_client_configs(settings_of(ProducerSettings, monkeypatch,
                                     kafka_consumer_extra_config="no.such.property=1"))
    assert "no.such.property" in refusal(ConsumerSettings, monkeypatch)


# ---- at-least-once --------------------------------------------------------------------------

@pytest.mark.parametrize("pair", [
    "acks=1", "acks=0", "request.required.acks=1", "enable.idempotence=false",
    "enable.auto.offset.store=true", "enable.auto.commit=false", "auto.offset.reset=latest",
    "auto.offset.reset=error", "isolation.level=read_uncommitted",
])
@pytest.mark.parametrize("variable", ["KAFKA_EXTRA_CONFIG", "role"])
def test_overriding_an_at_least_once_property_is_refused(
        monkeypatch: pytest.MonkeyPatch, pair: str, variable: str) -> None:
    name = pair.partition("=")[0]
    role = "PRODUCER" if name in ("acks", "request.required.acks", "enable.idempotence") else "CONSUMER"
    variable = f"KAFKA_{role}_EXTRA_CONFIG" if variable == "role" else variable
    message = refusal(ConsumerSettings, monkeypatch, **{variable: pair})
    assert message.startswith(f"{variable}: {pair} is refused: it breaks at-least-once delivery"), message


def test_a_transactional_id_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(ProducerSettings, monkeypatch, kafka_extra_config="transactional.id=mine")
    assert message.startswith("KAFKA_EXTRA_CONFIG: transactional.id is refused"), message


@pytest.mark.parametrize("pairs", [
    "acks=all,enable.idempotence=true,enable.auto.commit=true,enable.auto.offset.store=false",
    "acks=-1,enable.idempotence=TRUE,enable.auto.commit=1,enable.auto.offset.store=f",
    "auto.offset.reset=smallest,isolation.level=read_committed,auto.commit.interval.ms=5000",
])
def test_the_at_least_once_values_themselves_are_accepted(monkeypatch: pytest.MonkeyPatch,
                                                          pairs: str) -> None:
    check_client_configs(settings_of(ConsumerSettings, monkeypatch, kafka_extra_config=pairs))


def test_the_role_variable_wins_over_the_shared_one_in_the_at_least_once_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    check_client_configs(settings_of(ConsumerSettings, monkeypatch, kafka_extra_config="acks=1",
                                     kafka_producer_extra_config="acks=all"))
    message = refusal(ConsumerSettings, monkeypatch, kafka_extra_config="acks=all",
                      kafka_producer_extra_config="acks=1")
    assert message.startswith("KAFKA_PRODUCER_EXTRA_CONFIG: acks=1 is refused")


# ---- which client gets what -----------------------------------------------------------------

def test_each_role_gets_the_shared_properties_that_apply_to_it_and_its_own_win(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(
        ConsumerSettings, monkeypatch,
        kafka_extra_config="linger.ms=7,max.poll.interval.ms=600000,client.rack=r1,socket.timeout.ms=30000",
        kafka_producer_extra_config="linger.ms=20", kafka_consumer_extra_config="client.rack=r2",
        kafka_admin_extra_config="socket.timeout.ms=45000")
    check_client_configs(settings)
    producer = producer_config(settings, "p")
    consumer = consumer_config(settings, "c", "group")
    admin = admin_config(settings, "a")
    assert producer["linger.ms"] == "20" and producer["client.rack"] == "r1"
    assert producer["socket.timeout.ms"] == "30000" and "max.poll.interval.ms" not in producer
    assert consumer["max.poll.interval.ms"] == "600000" and consumer["client.rack"] == "r2"
    assert consumer["socket.timeout.ms"] == "30000" and "linger.ms" not in consumer
    assert admin["socket.timeout.ms"] == "45000" and "max.poll.interval.ms" not in admin
    assert (producer["acks"], producer["enable.idempotence"]) == ("all", True)
    assert (consumer["enable.auto.offset.store"], consumer["enable.auto.commit"]) == (False, True)


def test_a_property_applies_to_the_roles_librdkafka_uses_it_for() -> None:
    assert probe_property("max.poll.interval.ms", "600000").roles == {"consumer"}
    assert probe_property("linger.ms", "5").roles == {"producer", "admin"}  # admin: a producer handle
    assert probe_property("socket.timeout.ms", "30000").roles == {"producer", "consumer", "admin"}


@pytest.mark.parametrize("role", ["producer", "consumer", "admin"])
def test_no_client_gets_a_property_librdkafka_would_ignore(monkeypatch: pytest.MonkeyPatch,
                                                          role: str) -> None:
    """docs/configuration.md's own example (consumer properties) must not earn the consumer's dead-letter
    producer a "will be ignored" warning, nor the producer's properties the consumer."""
    settings = settings_of(ConsumerSettings, monkeypatch,
                           kafka_extra_config="auto.commit.interval.ms=1000,max.poll.interval.ms=600000,"
                                              "compression.type=lz4,linger.ms=10,client.rack=r1")
    lines = throwaway_client(role, role_config(settings, role))  # type: ignore[arg-type]
    assert not [line for line in lines if "CONFWARN" in line and "bootstrap.servers" not in line], lines


class Recorder:
    """Stands in for a confluent-kafka client class: records each configuration it is given."""

    def __init__(self) -> None:
        self.configs: list[tuple[str, dict[str, Any]]] = []

    def kind(self, name: str) -> type:
        recorder = self

        class Fake:
            def __init__(self, config: dict[str, Any]) -> None:
                recorder.configs.append((name, dict(config)))

            def list_topics(self, timeout: float) -> Any:
                return type("Metadata", (), {"brokers": {1: object()}})()

            def poll(self, timeout: float) -> int:
                return 0

            def __len__(self) -> int:
                return 0

        return Fake


def test_every_client_of_every_service_gets_the_security_settings_and_the_extra_config(
        monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, Path]) -> None:
    env = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
           "kafka_sasl_username": "svc", "kafka_sasl_password": "sasl-secret",
           "kafka_ssl_ca_location": str(tls_files["cert"]),
           "kafka_ssl_certificate_location": str(tls_files["cert"]),
           "kafka_ssl_key_location": str(tls_files["key"]), "kafka_ssl_key_password": KEY_PASSWORD,
           "kafka_extra_config": "socket.keepalive.enable=true",
           "kafka_producer_extra_config": "compression.type=lz4",
           "kafka_consumer_extra_config": "fetch.min.bytes=2",
           "kafka_admin_extra_config": "socket.timeout.ms=45000"}
    producer_settings = settings_of(ProducerSettings, monkeypatch, **env)
    consumer_settings = settings_of(ConsumerSettings, monkeypatch)
    admin_settings = settings_of(TopicAdminSettings, monkeypatch)
    for settings in (producer_settings, consumer_settings, admin_settings):
        check_client_configs(settings)  # librdkafka accepts them all

    recorder = Recorder()
    monkeypatch.setattr(producer_main, "Producer", recorder.kind("producer"))
    monkeypatch.setattr(member_producer, "Producer", recorder.kind("dead-letter producer"))
    monkeypatch.setattr(worker, "Consumer", recorder.kind("consumer"))
    monkeypatch.setattr(kafka_clients, "AdminClient", recorder.kind("broker-wait admin"))
    monkeypatch.setattr(topic_admin_main, "AdminClient", recorder.kind("topic-admin admin"))

    stop = threading.Event()
    producer_main.JobProducer(producer_settings, stop)  # type: ignore[arg-type]
    wait_for_broker(producer_settings, stop)
    handler = JobHandler(demo_handler, consumer_settings.retry_policy())
    member = worker.ConsumerWorker(1, consumer_settings, handler, stop, threading.Event())
    member._executor.close(1.0)
    topic_admin_main._admin(admin_settings)  # type: ignore[arg-type]

    kinds = [name for name, _ in recorder.configs]
    assert sorted(kinds) == sorted(["producer", "broker-wait admin", "consumer", "dead-letter producer",
                                    "topic-admin admin"]), kinds
    own = {"producer": ("compression.type", "lz4"), "dead-letter producer": ("compression.type", "lz4"),
           "consumer": ("fetch.min.bytes", "2"), "broker-wait admin": ("socket.timeout.ms", "45000"),
           "topic-admin admin": ("socket.timeout.ms", "45000")}
    for name, config in recorder.configs:
        assert config["security.protocol"] == "SASL_SSL", name
        assert (config["sasl.mechanism"], config["sasl.username"], config["sasl.password"]) == \
            ("SCRAM-SHA-512", "svc", "sasl-secret"), name
        assert config["ssl.ca.location"] == str(tls_files["cert"]), name
        assert config["ssl.certificate.location"] == str(tls_files["cert"]), name
        assert config["ssl.key.location"] == str(tls_files["key"]), name
        assert config["ssl.key.password"] == KEY_PASSWORD, name
        assert config["socket.keepalive.enable"] == "true", name
        key, value = own[name]
        assert config[key] == value, name
    broker_wait = dict(recorder.configs)["broker-wait admin"]
    assert broker_wait["log_level"] == 0, "the broker wait stays quiet"


# ---- mutual TLS -------------------------------------------------------------------------------

def test_mutual_tls_with_an_encrypted_key_passes_the_check(
        monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, Path]) -> None:
    check_client_configs(settings_of(
        ConsumerSettings, monkeypatch, kafka_security_protocol="SSL",
        kafka_ssl_certificate_location=str(tls_files["cert"]), kafka_ssl_key_location=str(tls_files["key"]),
        kafka_ssl_key_password=KEY_PASSWORD))


@pytest.mark.parametrize(("env", "complaint"), [
    ({"kafka_ssl_certificate_location": "cert"}, "KAFKA_SSL_KEY_LOCATION is required with"),
    ({"kafka_ssl_key_location": "key"}, "KAFKA_SSL_CERTIFICATE_LOCATION is required with"),
    ({"kafka_ssl_key_password": "x"}, "KAFKA_SSL_KEY_PASSWORD is set but KAFKA_SSL_KEY_LOCATION is not"),
    ({"kafka_ssl_certificate_location": "cert", "kafka_ssl_key_location": "key",
      "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"},
     "KAFKA_SSL_CERTIFICATE_LOCATION needs KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"),
])
def test_incomplete_mutual_tls_settings_are_refused(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], complaint: str) -> None:
    env = {"kafka_security_protocol": "SSL"} | env
    for variable, value in env.items():
        monkeypatch.setenv(variable.upper(), value)
    with pytest.raises(ConfigError, match=complaint):
        load_settings(ProducerSettings)


def test_certificate_and_key_problems_name_the_variable_and_keep_the_password_secret(
        monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, Path]) -> None:
    tls = {"kafka_security_protocol": "SSL", "kafka_ssl_certificate_location": str(tls_files["cert"]),
           "kafka_ssl_key_location": str(tls_files["key"])}
    missing = refusal(ProducerSettings, monkeypatch,
                      **tls | {"kafka_ssl_certificate_location": "/no/cert.pem"})
    assert missing == "KAFKA_SSL_CERTIFICATE_LOCATION='/no/cert.pem': no such file"
    wrong = refusal(ProducerSettings, monkeypatch, **tls | {"kafka_ssl_key_password": "Wr0ng-Pa55"})
    assert wrong.startswith(f"KAFKA_SSL_KEY_LOCATION='{tls_files['key']}': ssl.key.location failed")
    assert "KAFKA_SSL_KEY_PASSWORD" in wrong and "Wr0ng-Pa55" not in wrong
    monkeypatch.delenv("KAFKA_SSL_KEY_PASSWORD")
    without = refusal(ProducerSettings, monkeypatch, **tls)
    assert "set KAFKA_SSL_KEY_PASSWORD" in without
    other = refusal(ProducerSettings, monkeypatch,
                    **tls | {"kafka_ssl_key_location": str(tls_files["other_key"])})
    assert "does not belong to the certificate" in other


# ---- secrets --------------------------------------------------------------------------------

def test_a_malformed_extra_config_does_not_show_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PRODUCER_EXTRA_CONFIG", "sasl.oauthbearer.client.secret=First-Half,Second-Half")
    with pytest.raises(ConfigError) as refused:
        load_settings(ProducerSettings)
    assert str(refused.value).startswith("KAFKA_PRODUCER_EXTRA_CONFIG: expected key=value pairs")
    assert "First-Half" not in str(refused.value) and "Second-Half" not in str(refused.value)


@pytest.mark.parametrize("command", ["producer", "consumer", "topic-admin"])
def test_no_secret_reaches_service_started_or_any_log_line(command: str, tls_files: dict[str, Path]) -> None:
    secrets = {"kafka_sasl_password": "Sasl-S3cret", "kafka_ssl_key_password": KEY_PASSWORD}
    run = ServiceProcess(
        command, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_wait_timeout_s=1,
        log_level="DEBUG", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="svc", kafka_ssl_certificate_location=tls_files["cert"],
        kafka_ssl_key_location=tls_files["key"],
        kafka_extra_config="sasl.oauthbearer.client.secret=Shared-S3cret,socket.keepalive.enable=true",
        kafka_producer_extra_config="ssl.keystore.password=Producer-S3cret",
        kafka_consumer_extra_config="ssl.keystore.password=Consumer-S3cret",
        kafka_admin_extra_config="ssl.keystore.password=Admin-S3cret", **secrets)
    assert run.wait(30) == 3, run.tail()
    everything = run.output + run.stderr
    for secret in [*secrets.values(), "Shared-S3cret", "Producer-S3cret", "Consumer-S3cret", "Admin-S3cret"]:
        assert secret not in everything
    config: dict[str, Any] = run.events("service.started")[0]["config"]
    assert config["kafka_sasl_password"] == config["kafka_ssl_key_password"] == "**********"
    assert config["kafka_ssl_key_location"] == str(tls_files["key"])
    assert config["kafka_extra_config"] == {"sasl.oauthbearer.client.secret": "**********",
                                            "socket.keepalive.enable": "true"}
    for role in ("producer", "consumer", "admin"):
        assert config[f"kafka_{role}_extra_config"] == {"ssl.keystore.password": "**********"}


# ---- the console scripts ----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["consumer", "producer", "topic-admin"])
@pytest.mark.parametrize(("pairs", "named"), [
    ("no.such.property=1", "KAFKA_EXTRA_CONFIG: no.such.property: no such librdkafka property"),
    ("enable.auto.commit=maybe", "KAFKA_EXTRA_CONFIG: enable.auto.commit: "),
])
def test_a_bad_property_exits_2_with_one_line_and_nothing_started(command: str, pairs: str,
                                                                  named: str) -> None:
    """Checked before any connection: the broker address is one nothing listens on."""
    if command == "producer" and pairs.startswith("enable.auto.commit"):
        pairs = "acks=maybe"  # the producer creates no consumer
        named = "KAFKA_EXTRA_CONFIG: acks: "
    run = run_to_end(command, timeout=30, kafka_extra_config=pairs,
                     kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_wait_timeout_s=1)
    assert run.process.returncode == 2, run.tail()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: configuration error: {named}"), run.stderr
    assert "Traceback" not in run.stderr + run.output
    assert run.output == "", "nothing started, nothing sent"


def test_a_comma_inside_a_value_is_written_with_a_backslash() -> None:
    assert parse_pairs(r"debug=broker\,security,sasl.oauthbearer.extensions=a=1\,b=2, linger.ms = 5 ,") == {
        "debug": "broker,security", "sasl.oauthbearer.extensions": "a=1,b=2", "linger.ms": "5"}


def test_a_secret_value_cut_at_an_unescaped_comma_shows_no_part_of_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(ConsumerSettings, monkeypatch, kafka_security_protocol="SASL_SSL",
                      kafka_sasl_mechanism="PLAIN",
                      kafka_extra_config="sasl.password=first,half=Sec0nd")
    assert "half" not in message and "Sec0nd" not in message and "first" not in message, message
    assert message.startswith("KAFKA_EXTRA_CONFIG: the property after sasl.password is refused"), message
    assert "\\," in message


def test_a_share_group_member_is_checked_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONSUMER_MODE=share: a consumer-group property the share consumer refuses (the session
    timeout is the share group's, set on the broker) is a configuration error, not a crash."""
    check_client_configs(settings_of(ConsumerSettings, monkeypatch, consumer_mode="group",
                                     kafka_consumer_extra_config="session.timeout.ms=6000"))
    message = refusal(ConsumerSettings, monkeypatch, consumer_mode="share",
                      kafka_consumer_extra_config="session.timeout.ms=6000")
    assert message.startswith("KAFKA_CONSUMER_EXTRA_CONFIG: session.timeout.ms: "), message


# ---- prefetch sized from MAX_IN_FLIGHT (issue 22, defect 6) ------------------------------------

def member_config(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    recorder = Recorder()
    monkeypatch.setattr(worker, "Consumer", recorder.kind("consumer"))
    settings = settings_of(ConsumerSettings, monkeypatch, **env)
    check_client_configs(settings)  # librdkafka accepts the sized prefetch
    member = worker.ConsumerWorker(1, settings, JobHandler(demo_handler, settings.retry_policy()),
                                   threading.Event(), threading.Event())
    member._executor.close(1.0)
    return dict(recorder.configs)["consumer"]


@pytest.mark.parametrize(("max_in_flight", "most_kb"), [("1", 4096), ("100", 4096), ("1000", 4096),
                                                        ("10000", 40_000), ("1000000", 65536)])
def test_a_group_members_prefetch_is_sized_from_max_in_flight(
        monkeypatch: pytest.MonkeyPatch, max_in_flight: str, most_kb: int) -> None:
    """librdkafka used to fetch ahead up to 64 MB whatever MAX_IN_FLIGHT said (about 150 MB RSS
    with 1 KB jobs waiting, at MAX_IN_FLIGHT=100 as at 1000)."""
    config = member_config(monkeypatch, max_in_flight=max_in_flight)
    assert config["queued.max.messages.kbytes"] == most_kb
    assert config["fetch.max.bytes"] <= most_kb * 1024, "one fetch response: no more than the queue"
    assert config["queued.min.messages"] >= min(int(max_in_flight), 100_000), "room for what it may hold"


def test_the_users_own_prefetch_properties_win(monkeypatch: pytest.MonkeyPatch) -> None:
    config = member_config(monkeypatch, kafka_consumer_extra_config="queued.max.messages.kbytes=100000")
    assert config["queued.max.messages.kbytes"] == "100000"


def test_a_client_takes_the_services_settings_it_does_not_use() -> None:
    """An application gives its client the same settings as the services (one .env, or the
    services' keyword arguments): DLQ_TOPIC, CONSUMER_GROUP and the like are ignored, as the
    services ignore each other's, not refused (RESULTS_TOPIC's settings once refused them)."""
    from jobpipe.client import ClientSettings

    settings = ClientSettings(jobs_topic="jobs", dlq_topic="jobs.dlq", consumer_group="worker-group",
                              results_topic="jobs.results")
    assert (settings.jobs_topic, settings.results_topic) == ("jobs", "jobs.results")
