"""Typed settings read once from the environment at start (pydantic-settings).

Each service composes its settings class from the groups below and loads it with
`load_settings`, which turns any validation problem into a one-line `ConfigError` that
names the environment variable. Nothing else in the code reads os.environ.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobpipe.errors import ConfigError
from jobpipe.retry import RetryPolicy

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]

# librdkafka property names whose values are secrets: masked wherever settings are shown.
SECRET_WORDS = ("password", "secret", "token", "key.pem", "credentials")


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
    kafka_extra_config: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Any other librdkafka properties for the service's main client, "
                    "`key=value` pairs separated by commas, e.g. `linger.ms=5,compression.type=lz4`.")

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_ssl_ca_location",
                     "kafka_sasl_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("kafka_extra_config", mode="before")
    @classmethod
    def _parse_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, setting = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"expected key=value pairs separated by commas, got {item!r}")
            pairs[name.strip()] = setting.strip()
        return pairs

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.kafka_security_protocol.startswith("SASL") and self.kafka_sasl_mechanism is None:
            protocol = self.kafka_security_protocol
            raise ValueError(f"KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL={protocol}")
        return self

    def effective(self) -> dict[str, Any]:
        shown = super().effective()
        shown["kafka_extra_config"] = {
            name: ("**********" if is_secret_property(name) else value)
            for name, value in self.kafka_extra_config.items()}
        return shown


class HandlerSettings(BaseSettings):
    """What runs each job and how often it is tried: the consumer and in-memory services."""

    handler: str = Field(
        "jobpipe.handlers:demo_handler", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`package.module:function` called with each job; raising fails the attempt.")
    max_attempts: int = Field(
        5, ge=1, le=1000, description="Attempts per job before it is dead-lettered.")


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
            shown = "" if isinstance(raw, dict) or "password" in name.lower() else f"={raw!r}"
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
