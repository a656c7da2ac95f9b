"""The start-up check of every librdkafka client configuration a service is going to create.

`run_service` runs it (for a service whose settings are KafkaSettings) before the service does anything:
a property librdkafka does not know, a value it refuses, a property of the wrong role in
KAFKA_<ROLE>_EXTRA_CONFIG, a property that would break at-least-once delivery, a certificate
or key that cannot be read, or properties that contradict each other are a ConfigError (exit 2,
one line naming the variable and the property), never a traceback from a client constructor
halfway through the start.

librdkafka is the judge, not a copy of its rules: each role's final configuration (what
jobpipe.kafka_clients builds for it) is given to a throwaway client that is created and
destroyed at once, without bootstrap servers, so it never connects (see `throwaway_client`).
Each property of the extra configurations is first tried on its own, which tells which
variable holds a bad one.
"""

from __future__ import annotations

import os
import re

from jobpipe.errors import ConfigError
from jobpipe.kafka_clients import (
    CREATE_FAILED,
    Config,
    admin_config,
    consumer_config,
    kafka_reason,
    probe_property,
    producer_config,
    share_consumer_config,
    throwaway_client,
)
from jobpipe.settings import MASK, ClientRole, KafkaSettings, is_secret_property

SHARED_VARIABLE = "KAFKA_EXTRA_CONFIG"

# The properties that make delivery at-least-once (docs/configuration.md), per role: the values
# that keep it, and what another value would do. Overriding them is refused, not warned about:
# a warning scrolls by in `service.started` while the loss it announces is silent and for good.
GUARANTEES: dict[str, tuple[ClientRole, frozenset[str], str]] = {
    "acks": ("producer", frozenset({"all", "-1"}), "a job would count as sent before every in-sync "
             "replica has it, so a broker failure could lose it"),
    "enable.idempotence": ("producer", frozenset({"true"}), "librdkafka's own retries could then "
                           "write a job twice or out of order"),
    "enable.auto.offset.store": ("consumer", frozenset({"false"}), "offsets would be stored as jobs "
                                 "are fetched, before they are done: a crash would skip them"),
    "enable.auto.commit": ("consumer", frozenset({"true"}), "finished jobs would be committed only "
                           "on rebalance and shutdown: a crash would redo all of them since"),
    "auto.offset.reset": ("consumer", frozenset({"earliest", "smallest", "beginning"}), "a new group, or "
                          "one whose offsets expired, would skip the jobs already in the topic"),
    "isolation.level": ("consumer", frozenset({"read_committed"}), "jobs written by an aborted "
                        "transaction (an interrupted `topic-admin redrive`) would be processed too"),
}
GUARANTEES["request.required.acks"] = GUARANTEES["acks"]  # librdkafka's other name for acks
# Properties the services' clients of a role cannot work with, whatever the value.
UNUSABLE: dict[str, tuple[ClientRole, str]] = {
    "transactional.id": ("producer", "the services' producers send outside transactions, so every job "
                         "and dead letter would fail (`topic-admin redrive` sets its own)"),
}
BOOLEAN = {"t": "true", "1": "true", "f": "false", "0": "false"}  # how librdkafka also spells them


def check_client_configs(settings: KafkaSettings) -> None:
    """Raise ConfigError for the first problem in a client configuration of `settings`'
    roles (KafkaSettings.kafka_client_roles); return quietly when librdkafka accepts them all."""
    roles = settings.kafka_client_roles
    variables: list[tuple[str, dict[str, str], ClientRole | None]] = [
        (SHARED_VARIABLE, settings.kafka_extra_config, None),
        *((role_variable(role), settings.role_extra_config(role), role) for role in roles)]
    for variable, properties, role in variables:
        after_secret: str | None = None  # the secret property just before this one
        for name, value in properties.items():
            try:
                _check_property(variable, name, value, role)
            except ConfigError:
                if after_secret is None:
                    raise
                # Likely the rest of a secret value that holds a comma: naming it would show
                # part of the secret.
                raise ConfigError(f"{variable}: the property after {after_secret} is refused; if the "
                                  f"value of {after_secret} holds a comma, write it as `\\,`") from None
            after_secret = name if is_secret_property(name) else None
    for role in roles:
        for name, (guarded, kept, harm) in GUARANTEES.items():
            source = _source(settings, role, name) if guarded == role else None
            if source is not None and _normal(source[1]) not in kept:
                variable, value = source
                raise ConfigError(f"{variable}: {name}={value} is refused: it breaks at-least-once "
                                  f"delivery, {harm}")
        for name, (unusable, harm) in UNUSABLE.items():
            source = _source(settings, role, name) if unusable == role else None
            if source is not None:
                raise ConfigError(f"{source[0]}: {name} is refused: {harm}")
    _check_files(settings)
    for role in roles:
        if (reason := _refusal(role, role_config(settings, role))) is not None:
            raise ConfigError(_explain(settings, role, reason))


def _refusal(role: ClientRole, config: Config) -> str | None:
    """Why librdkafka (or confluent-kafka) refuses `config` for a client of `role`; None: it
    accepts it."""
    try:
        throwaway_client(role, config)
    except Exception as error:  # KafkaException; confluent-kafka's own checks: TypeError, ValueError
        return kafka_reason(error)
    return None


def role_variable(role: ClientRole) -> str:
    return f"KAFKA_{role.upper()}_EXTRA_CONFIG"


def role_config(settings: KafkaSettings, role: ClientRole) -> Config:
    """The configuration a client of `role` gets (the parts a service adds itself, such as
    callbacks and client ids, change nothing that librdkafka checks)."""
    if role == "producer":
        return producer_config(settings, "config-check")
    if role == "consumer":
        group = str(getattr(settings, "consumer_group", "jobpipe-config-check"))
        if getattr(settings, "consumer_mode", "group") == "share":
            return share_consumer_config(settings, "config-check", group,
                                         int(getattr(settings, "consumer_concurrency", 1)))
        held = getattr(settings, "max_in_flight", None)
        return consumer_config(settings, "config-check", group, max_in_flight=held)
    return admin_config(settings, "config-check")


def _check_property(variable: str, name: str, value: str, role: ClientRole | None) -> None:
    probe = probe_property(name, value)
    if probe.error is not None:
        if probe.error.startswith("No such configuration property"):
            raise ConfigError(f"{variable}: {name}: no such librdkafka property")
        raise ConfigError(f"{variable}: {name}: {_hide(probe.error, name, value)}")
    if role is not None and role not in probe.roles:
        other: ClientRole = "consumer" if role in ("producer", "admin") else "producer"
        raise ConfigError(f"{variable}: {name} is a {other} property, which {role} clients ignore "
                          f"(put it in {SHARED_VARIABLE} or {role_variable(other)})")


def _source(settings: KafkaSettings, role: ClientRole, name: str) -> tuple[str, str] | None:
    """Which variable sets `name` for `role`'s clients, and to what; None: no variable does."""
    own = settings.role_extra_config(role)
    if name in own:
        return role_variable(role), own[name]
    shared = settings.kafka_extra_config
    if name in shared and role in probe_property(name, shared[name]).roles:
        return SHARED_VARIABLE, shared[name]
    return None


def _normal(value: str) -> str:
    lowered = value.strip().lower()
    return BOOLEAN.get(lowered, lowered)


def _check_files(settings: KafkaSettings) -> None:
    """The certificate and key files librdkafka will read (with a TLS protocol only): a missing
    one gets a plainer message than librdkafka's "system lib"."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return
    for variable, path in (("KAFKA_SSL_CA_LOCATION", settings.kafka_ssl_ca_location),
                           ("KAFKA_SSL_CERTIFICATE_LOCATION", settings.kafka_ssl_certificate_location),
                           ("KAFKA_SSL_KEY_LOCATION", settings.kafka_ssl_key_location)):
        if not path or (variable == "KAFKA_SSL_CA_LOCATION" and path == "probe"):
            continue
        if not os.path.exists(path):
            raise ConfigError(f"{variable}={path!r}: no such file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{variable}={path!r}: not readable by this process (user id {os.getuid()})")


def _settings_properties(settings: KafkaSettings) -> dict[str, tuple[str, str | None]]:
    """The librdkafka properties of the dedicated variables: property -> (variable, the value to
    show: None when unset or a secret)."""
    return {
        "security.protocol": ("KAFKA_SECURITY_PROTOCOL", settings.kafka_security_protocol),
        "sasl.mechanism": ("KAFKA_SASL_MECHANISM", settings.kafka_sasl_mechanism),
        "sasl.username": ("KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
        "sasl.password": ("KAFKA_SASL_PASSWORD", None),
        "ssl.ca.location": ("KAFKA_SSL_CA_LOCATION", settings.kafka_ssl_ca_location),
        "ssl.certificate.location": ("KAFKA_SSL_CERTIFICATE_LOCATION",
                                     settings.kafka_ssl_certificate_location),
        "ssl.key.location": ("KAFKA_SSL_KEY_LOCATION", settings.kafka_ssl_key_location),
        "ssl.key.password": ("KAFKA_SSL_KEY_PASSWORD", None),
    }


def _mentioned(reason: str, names: list[str]) -> str | None:
    """The name among `names` that `reason` mentions first (a whole property name, not a part)."""
    found: list[tuple[int, int, str]] = []
    for name in names:
        match = re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", reason)
        if match:
            found.append((match.start(), -len(name), name))
    return min(found)[2] if found else None


def _explain(settings: KafkaSettings, role: ClientRole, reason: str) -> str:
    """One line for a configuration librdkafka refused as a whole, naming the variable that
    holds the property it complains about (the role's own variable before the shared one,
    both before the dedicated variables)."""
    reason = _without_prefix(reason)
    user: dict[str, tuple[str, str]] = {}
    for name in [*settings.kafka_extra_config, *settings.role_extra_config(role)]:
        if (source := _source(settings, role, name)) is not None:
            user[name] = source
    if (mentioned := _mentioned(reason, list(user))) is not None:
        variable, value = user[mentioned]
        return f"{variable}: {mentioned}: {_hide(reason, mentioned, value)}"
    for name, (variable, value) in user.items():  # the one without which the complaint changes
        if _without_prefix(_refusal(role, role_config(_without(settings, name), role)) or "") != reason:
            return f"{variable}: {name}: {_hide(reason, name, value)}"
    dedicated = _settings_properties(settings)
    if (mentioned := _mentioned(reason, list(dedicated))) is not None:
        variable, shown = dedicated[mentioned]
        value_text = f"={shown!r}" if shown is not None else ""
        return f"{variable}{value_text}: {reason}{_hint(settings, reason)}"
    return f"librdkafka refused the {role} clients' configuration: {reason}"


def _without_prefix(reason: str) -> str:
    return re.sub(rf"^{CREATE_FAILED} [a-z ]+: ", "", reason)


def _without(settings: KafkaSettings, name: str) -> KafkaSettings:
    """`settings` as if no extra configuration variable set property `name`."""
    fields = ["kafka_extra_config", *(f"kafka_{role}_extra_config" for role in settings.kafka_client_roles)]
    return settings.model_copy(update={field: {key: value for key, value in getattr(settings, field).items()
                                                if key != name} for field in fields})


def _hint(settings: KafkaSettings, reason: str) -> str:
    """What librdkafka's OpenSSL errors mean for the mutual TLS variables."""
    if "ssl.key.location" in reason and "key values mismatch" in reason:
        return " (the key does not belong to the certificate in KAFKA_SSL_CERTIFICATE_LOCATION)"
    if "ssl.key.location" in reason:
        if settings.kafka_ssl_key_password is not None:
            return " (a wrong KAFKA_SSL_KEY_PASSWORD, or not a PEM private key)"
        return " (not a PEM private key, or an encrypted one: set KAFKA_SSL_KEY_PASSWORD)"
    if "certificate.location" in reason:
        return " (not a PEM certificate?)"
    return ""


def _hide(reason: str, name: str, value: str) -> str:
    """librdkafka's message without the value of a secret property."""
    return reason.replace(value, MASK) if value and is_secret_property(name) else reason

