"""Bad configuration is refused with a one-line error naming the variable (exit 2)."""

from __future__ import annotations

import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le
from pydantic.fields import FieldInfo

from consumer_service.settings import ConsumerSettings
from inmemory_service.settings import InMemorySettings
from jobpipe.errors import ConfigError
from jobpipe.settings import load_settings
from producer_service.settings import ProducerSettings
from tests.service_runner import ServiceProcess, run_to_end
from topic_admin_service.settings import TopicAdminSettings

SERVICES = {"producer": ProducerSettings, "consumer": ConsumerSettings,
            "topic-admin": TopicAdminSettings, "inmemory": InMemorySettings}


def bad_values(field: FieldInfo) -> list[str]:
    """Non-numeric, negative and beyond-the-bounds values for a numeric field."""
    values = ["abc", "-1"]
    for bound in field.metadata:
        if isinstance(bound, Le):
            values.append(str(int(bound.le) + 1))
        if isinstance(bound, Gt):
            values.append(str(bound.gt))
        if isinstance(bound, Ge) and bound.ge > 0:
            values.append(str(int(bound.ge) - 1))
    return values


NUMERIC_CASES = [
    (service, name.upper(), value)
    for service, cls in SERVICES.items()
    for name, field in cls.model_fields.items() if field.annotation in (int, float)
    for value in bad_values(field)
]


@pytest.mark.parametrize(("service", "variable", "value"), NUMERIC_CASES,
                         ids=[f"{s}-{v}={x}" for s, v, x in NUMERIC_CASES])
def test_bad_numeric_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, service: str,
                                              variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(SERVICES[service])
    message = str(refused.value)
    assert message.startswith(f"{variable}=") or message.startswith(variable), message
    assert "\n" not in message


def test_every_numeric_setting_is_covered() -> None:
    variables = {v for _, v, _ in NUMERIC_CASES}
    assert {"PRODUCER_WORKERS", "MESSAGES_PER_WORKER", "PRODUCE_RATE", "CONSUMER_WORKERS", "MAX_ATTEMPTS",
            "JOBS_PARTITIONS", "REPLICATION_FACTOR", "QUEUE_CAPACITY", "METRICS_PORT",
            "KAFKA_WAIT_TIMEOUT_S", "SHUTDOWN_TIMEOUT_S", "RETRY_BACKOFF_INITIAL_MS",
            "CONSUMER_CONCURRENCY", "MAX_IN_FLIGHT"} <= variables


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(("variable", "value", "complaint"), [
    ("LOG_FORMAT", "xml", "LOG_FORMAT='xml'"),
    ("LOG_LEVEL", "LOUD", "LOG_LEVEL='LOUD'"),
    ("SHUTDOWN_TIMEOUT_S", "soon", "SHUTDOWN_TIMEOUT_S='soon'"),
    ("RETRY_BACKOFF_INITIAL_MS", "20000", "must not exceed RETRY_BACKOFF_MAX_MS"),
])
def test_console_script_refuses_bad_setting_with_exit_2_and_one_line(
        service: str, variable: str, value: str, complaint: str) -> None:
    run = run_to_end(service, timeout=30, **{variable: value, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert run.process.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and complaint in lines[0], run.stderr
    assert "Traceback" not in run.stderr + run.output
    assert run.output == "", "nothing started, nothing sent"


@pytest.mark.parametrize(("settings", "complaint"), [
    ({"CONSUMER_CONCURRENCY": "0"}, "CONSUMER_CONCURRENCY='0'"),
    ({"ORDERING": "random"}, "ORDERING='random'"),
    ({"CONSUMER_CONCURRENCY": "64", "MAX_IN_FLIGHT": "32"},
     "MAX_IN_FLIGHT (32) must not be below CONSUMER_CONCURRENCY (64)"),
    ({"CONSUMER_MODE": "queue"}, "CONSUMER_MODE='queue'"),
    ({"CONSUMER_MODE": "share", "STATIC_MEMBERSHIP": "true"},
     "CONSUMER_MODE=share does not go with STATIC_MEMBERSHIP=true"),
    # issue 24: share groups have no transactional acknowledgement
    ({"CONSUMER_MODE": "share", "PROCESSING_GUARANTEE": "exactly_once"},
     "PROCESSING_GUARANTEE=exactly_once does not go with CONSUMER_MODE=share"),
    ({"PROCESSING_GUARANTEE": "twice"}, "PROCESSING_GUARANTEE='twice'"),
    # the share worker publishes no results: a client waiting for one would only time out
    ({"CONSUMER_MODE": "share", "RESULTS_TOPIC": "jobs.results"},
     "RESULTS_TOPIC does not go with CONSUMER_MODE=share"),
])
def test_consumer_refuses_a_bad_concurrency_setting_with_exit_2_and_one_line(
        settings: dict[str, str], complaint: str) -> None:
    run = run_to_end("consumer", timeout=30, kafka_bootstrap_servers="127.0.0.1:1", **settings)
    assert run.process.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and complaint in lines[0], run.stderr
    assert run.output == "", "nothing started"


@pytest.mark.parametrize("service", ["consumer", "inmemory"])
@pytest.mark.parametrize(("handler", "complaint"), [
    ("no_colon_here", "HANDLER='no_colon_here'"),
    ("no.such.module:handle", "cannot import 'no.such.module'"),
    ("jobpipe.handlers:missing", "has no function 'missing'"),
])
def test_bad_handler_is_a_configuration_error(service: str, handler: str, complaint: str) -> None:
    run = run_to_end(service, timeout=30, handler=handler, kafka_bootstrap_servers="127.0.0.1:1",
                     kafka_wait_timeout_s=1)
    assert run.process.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and complaint in lines[0], run.stderr
    assert "Traceback" not in run.stderr + run.output
    assert "job." not in run.output


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("command", [["producer"], ["consumer"], ["topic-admin"],
                                     ["topic-admin", "describe"]])
def test_unreachable_kafka_exits_3_shortly_after_the_wait_timeout(command: list[str]) -> None:
    run = ServiceProcess(*command, kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}",
                         kafka_wait_timeout_s=3)
    code = run.wait(30)
    assert code == 3, run.tail()
    # The wait itself, on the service's clock (interpreter start-up left out): it gives up at
    # its timeout and within a second of it (docs/configuration.md), plus 1 s of slack for a
    # loaded machine.
    waiting, failed = (datetime.fromisoformat(str(run.events(name)[0]["time"]).replace("Z", "+00:00"))
                       for name in ("kafka.waiting", "service.failed"))
    waited = (failed - waiting).total_seconds()
    assert 3 <= waited < 3 + 1 + 1, waited
    failed = run.events("service.failed")
    assert failed and "not reachable" in failed[0]["message"] and "within 3 s" in failed[0]["message"]
    assert "Traceback" not in run.output + run.stderr


def test_secrets_never_reach_the_logs() -> None:
    secret = "s3cr3t-Pa55"
    run = ServiceProcess("producer", kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}",
                         kafka_wait_timeout_s=1, kafka_security_protocol="SASL_PLAINTEXT",
                         kafka_sasl_mechanism="PLAIN", kafka_sasl_username="svc",
                         kafka_sasl_password=secret,
                         kafka_extra_config=f"sasl.oauthbearer.client.secret={secret},linger.ms=7",
                         log_level="DEBUG")
    assert run.wait(30) == 3
    assert secret not in run.output + run.stderr
    config: dict[str, Any] = run.events("service.started")[0]["config"]
    assert config["kafka_sasl_password"] == "**********"
    assert config["kafka_sasl_username"] == "svc"
    assert config["kafka_extra_config"] == {"sasl.oauthbearer.client.secret": "**********", "linger.ms": "7"}


def test_sasl_protocol_without_mechanism_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="KAFKA_SASL_MECHANISM is required"):
        load_settings(ProducerSettings)


def test_extra_config_must_be_key_value_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_EXTRA_CONFIG", "linger.ms=5,oops")
    with pytest.raises(ConfigError, match=r"KAFKA_EXTRA_CONFIG.*key=value"):
        load_settings(ProducerSettings)


@pytest.mark.parametrize("secret", ["KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"])
def test_a_secret_may_come_from_the_file_its_file_variable_names(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret: str) -> None:
    """As compose and Kubernetes mount secrets: the file's line end is not part of the secret."""
    path = tmp_path / "secret"
    path.write_text("s3cr3t, with a comma\n")
    monkeypatch.setenv(f"{secret}_FILE", str(path))
    monkeypatch.setenv("KAFKA_SSL_KEY_LOCATION", str(tmp_path / "key.pem"))
    monkeypatch.setenv("KAFKA_SSL_CERTIFICATE_LOCATION", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    settings = load_settings(ProducerSettings)
    assert getattr(settings, secret.lower()).get_secret_value() == "s3cr3t, with a comma"
    assert "s3cr3t" not in str(settings.effective())


def test_a_secret_and_its_file_together_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("one")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "other")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "secret"))
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are both set"):
        load_settings(ProducerSettings)


@pytest.mark.parametrize(("kind", "complaint"), [
    ("folder", "cannot read the file (Is a directory)"),
    ("empty", "the file is empty"),
])
def test_a_secret_file_that_cannot_be_read_or_is_empty_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, complaint: str) -> None:
    path = tmp_path if kind == "folder" else tmp_path / kind
    if kind == "empty":
        path.write_text("\n")
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigError) as refused:
        load_settings(ProducerSettings)
    assert str(refused.value) == f"KAFKA_SSL_KEY_PASSWORD_FILE='{path}': {complaint}"


def test_a_secret_file_that_cannot_be_read_exits_2_naming_its_variable(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    run = run_to_end("producer", timeout=30, kafka_bootstrap_servers="127.0.0.1:1",
                     kafka_sasl_password_file=str(path))
    assert run.process.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines == [f"producer: configuration error: KAFKA_SASL_PASSWORD_FILE='{path}': "
                     "cannot read the file (No such file or directory)"], run.stderr
    assert run.output == ""
