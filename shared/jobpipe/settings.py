"""Typed settings read once from the environment at start (pydantic-settings).

Each service composes its settings class from the groups below and loads it with
`load_settings`, which turns any validation problem into a one-line `ConfigError` that
names the environment variable. Nothing else in the code reads os.environ.

This module imports no other part of the library that builds on it: the check of the
librdkafka configurations (jobpipe.client_check) reads these settings, and `run_service`
runs it; the imports go one way (settings <- kafka_clients <- client_check <- service).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobpipe.errors import ConfigError
from jobpipe.retry import RetryPolicy
from jobpipe.shutdown import ShutdownBudget

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]

# librdkafka property names whose values are secrets: masked wherever settings are shown.
SECRET_WORDS = ("password", "secret", "token", "key.pem", "credentials", "oauthbearer.config")
MASK = "**********"

# The kinds of librdkafka client a service creates; each has its own KAFKA_<ROLE>_EXTRA_CONFIG.
ClientRole = Literal["producer", "consumer", "admin"]
CLIENT_ROLES: tuple[ClientRole, ...] = ("producer", "consumer", "admin")


def is_secret_property(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


class BaseServiceSettings(BaseSettings):
    """Settings every service has: topic, logging, shutdown, metrics, retry backoff."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    jobs_topic: str = Field("jobs", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
                            description="Topic the jobs are published to and consumed from.")
    log_level: LogLevel = Field("INFO", description="Lowest level logged.")
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` for people, `json` for one JSON object per line.")
    shutdown_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="On SIGTERM/SIGINT, the longest a service takes to stop.")
    metrics_port: int = Field(
        0, ge=0, le=65535,
        description="Port of /metrics, /healthz and /readyz; 0 = off (the images set 9100).")
    retry_backoff_initial_ms: int = Field(
        100, ge=1, le=3_600_000, description="First retry delay (doubles each attempt, with jitter).")
    retry_backoff_max_ms: int = Field(
        10_000, ge=1, le=3_600_000, description="Cap on any retry delay.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _backoff_order(self) -> BaseServiceSettings:
        if self.retry_backoff_initial_ms > self.retry_backoff_max_ms:
            raise ValueError(
                f"RETRY_BACKOFF_INITIAL_MS ({self.retry_backoff_initial_ms}) must not exceed "
                f"RETRY_BACKOFF_MAX_MS ({self.retry_backoff_max_ms})")
        return self

    def shutdown_budget(self, now: float) -> ShutdownBudget:
        """SHUTDOWN_TIMEOUT_S for a service asked to stop at `now` (time.monotonic())."""
        return ShutdownBudget(now, self.shutdown_timeout_s)

    def work_deadline(self, now: float) -> float:
        """When a service asked to stop at `now` must be done with its work: the rest of the
        budget is kept for committing, closing, flushing and exiting (jobpipe.shutdown)."""
        return self.shutdown_budget(now).ends("work")

    def retry_policy(self, max_attempts: int = 1) -> RetryPolicy:
        return RetryPolicy(initial_s=self.retry_backoff_initial_ms / 1000,
                           max_s=self.retry_backoff_max_ms / 1000, max_attempts=max_attempts)

    def effective(self) -> dict[str, Any]:
        """The settings as shown in `service.started`: secrets masked."""
        return self.model_dump(mode="json")


class KafkaSettings(BaseServiceSettings):
    """Connection to the Kafka cluster, shared by every Kafka service."""

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", min_length=1, description="Comma-separated host:port list of brokers.")
    kafka_wait_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="How long to wait for the broker at start before exit 3.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = (
        Field(None, description="librdkafka sasl.mechanism (with a SASL_* protocol)."))
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password; a secret, never logged.")
    kafka_ssl_ca_location: str | None = Field(
        None, description="Path of the CA certificate(s) that verify the brokers.")
    kafka_ssl_certificate_location: str | None = Field(
        None, description="Mutual TLS: path of this client's certificate (PEM).")
    kafka_ssl_key_location: str | None = Field(
        None, description="Mutual TLS: path of the certificate's private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted private key; a secret, never logged.")
    kafka_sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (a compose or Kubernetes secret), "
                          "instead of KAFKA_SASL_PASSWORD.")
    kafka_ssl_key_password_file: Path | None = Field(
        None, description="File holding the private key's password, instead of KAFKA_SSL_KEY_PASSWORD.")
    kafka_extra_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Any other librdkafka properties, for every client of the service: `key=value` "
                    "pairs separated by commas (`\\,` for a comma in a value). A property only "
                    "producers (or only consumers) know reaches only those.")
    kafka_producer_extra_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="librdkafka properties for producer clients only (the producer, the consumer's "
                    "dead-letter producer); they win over KAFKA_EXTRA_CONFIG.")
    kafka_consumer_extra_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="The same for consumer clients (the consumer, topic-admin redrive's reader).")
    kafka_admin_extra_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="The same for admin clients (topic-admin's, and every service's wait for the broker).")

    # The roles of the clients this service creates: their configurations are checked at start.
    kafka_client_roles: ClassVar[tuple[ClientRole, ...]] = CLIENT_ROLES

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Each secret X may be given as a file instead, named by X_FILE (compose and
        Kubernetes mount secrets as files: then they are not in the environment, where
        `docker inspect` shows them)."""
        if not isinstance(data, dict):
            return data
        given = dict(data)
        for name in cls.model_fields:
            secret = name.removesuffix("_file")
            if secret == name or secret not in cls.model_fields or given.get(name) in (None, ""):
                continue
            if given.get(secret) not in (None, ""):
                raise ValueError(f"{secret.upper()} and {name.upper()} are both set: set one of them")
            given[secret] = read_secret_file(name.upper(), Path(given[name]))
        return given

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_ssl_ca_location",
                     "kafka_sasl_password", "kafka_ssl_certificate_location", "kafka_ssl_key_location",
                     "kafka_ssl_key_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("kafka_extra_config", "kafka_producer_extra_config", "kafka_consumer_extra_config",
                     "kafka_admin_extra_config", mode="before")
    @classmethod
    def _parse_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return parse_pairs(value)

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.kafka_security_protocol.startswith("SASL") and self.kafka_sasl_mechanism is None:
            protocol = self.kafka_security_protocol
            raise ValueError(f"KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL={protocol}")
        return self

    @model_validator(mode="after")
    def _mutual_tls_complete(self) -> KafkaSettings:
        certificate, key = self.kafka_ssl_certificate_location, self.kafka_ssl_key_location
        if certificate and not key:
            raise ValueError("KAFKA_SSL_KEY_LOCATION is required with KAFKA_SSL_CERTIFICATE_LOCATION")
        if key and not certificate:
            raise ValueError("KAFKA_SSL_CERTIFICATE_LOCATION is required with KAFKA_SSL_KEY_LOCATION")
        if self.kafka_ssl_key_password is not None and not key:
            raise ValueError("KAFKA_SSL_KEY_PASSWORD is set but KAFKA_SSL_KEY_LOCATION is not")
        if certificate and not self.kafka_security_protocol.endswith("SSL"):
            raise ValueError(f"KAFKA_SSL_CERTIFICATE_LOCATION needs KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL "
                             f"(it is {self.kafka_security_protocol}, which does not use TLS)")
        return self

    def role_extra_config(self, role: ClientRole) -> dict[str, str]:
        """KAFKA_<ROLE>_EXTRA_CONFIG: what `role`'s clients get on top of KAFKA_EXTRA_CONFIG."""
        extra: dict[str, str] = getattr(self, f"kafka_{role}_extra_config")
        return extra

    def effective(self) -> dict[str, Any]:
        shown = super().effective()
        for name in ("kafka_extra_config", *(f"kafka_{role}_extra_config" for role in CLIENT_ROLES)):
            shown[name] = masked(getattr(self, name))
        return shown


def parse_pairs(text: str) -> dict[str, str]:
    """`key=value,key=value` as a dict; `\\,` is a comma inside a value (as in
    `debug=broker\\,security` or `sasl.oauthbearer.extensions=a=1\\,b=2`)."""
    pairs: dict[str, str] = {}
    previous = ""
    for part in re.split(r"(?<!\\),", text):
        item = part.replace("\\,", ",").strip()
        if not item:
            continue
        name, sep, setting = item.partition("=")
        if not sep or not name.strip():
            # The part may be the tail of a secret that holds a comma: then it is not shown.
            got = f"a part after the secret {previous}" if is_secret_property(previous) else repr(item)
            raise ValueError(f"expected key=value pairs separated by commas (a comma inside a value "
                             f"is written \\,), got {got}")
        previous = name.strip()
        pairs[previous] = setting.strip()
    return pairs


def read_secret_file(variable: str, path: Path) -> str:
    """The secret in `path` (named by the environment variable `variable`), without the line
    end a file usually has; a file that cannot be read, or holds nothing, is a configuration
    error naming `variable` (never the content)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise ValueError(f"{variable}={str(path)!r}: cannot read the file ({reason})") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ValueError(f"{variable}={str(path)!r}: the file is empty")
    return secret


def masked(properties: dict[str, str]) -> dict[str, str]:
    """librdkafka properties as they may be shown: the values of secret ones masked."""
    return {name: (MASK if is_secret_property(name) else value) for name, value in properties.items()}


class HandlerSettings(BaseSettings):
    """What runs each job and how often it is tried: the consumer and in-memory services."""

    handler: str = Field(
        "jobpipe.handlers:demo_handler", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`package.module:function` called with each job; raising fails the attempt.")
    max_attempts: int = Field(
        5, ge=1, le=1000, description="Attempts per job before it is dead-lettered.")


class ResultsSettings(BaseSettings):
    """Where handlers' return values go (jobpipe.results): the consumer publishes there, a
    client waits there, topic-admin `ensure` creates it. Unset: results are not published."""

    # as BaseServiceSettings': mixed into ClientSettings, BaseSettings' own (extra="forbid") would
    # refuse the other services' settings a client is given (DLQ_TOPIC, CONSUMER_GROUP...)
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    results_topic: str | None = Field(
        None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
        description="Topic a handler's return value is published to, keyed by job id (and a "
                    "failure result for a dead-lettered job); unset = off.")

    @field_validator("results_topic", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        return None if value == "" else value


Settings = TypeVar("Settings", bound=BaseSettings)


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the environment variable's name."""
    lines = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        location = [str(part) for part in problem.get("loc", ()) if part != "__root__"]
        if location:
            name = location[0].upper()
            raw = problem.get("input")
            # extra configs may hold secrets; passwords and tokens are secrets
            hidden = isinstance(raw, dict) or is_secret_property(name) or name.endswith("EXTRA_CONFIG")
            shown = "" if hidden else f"={raw!r}"
            lines.append(f"{name}{shown}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)


def load_settings(cls: type[Settings]) -> Settings:
    """Read `cls` from the environment; raise ConfigError naming the variable on a bad value."""
    try:
        return cls()
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
