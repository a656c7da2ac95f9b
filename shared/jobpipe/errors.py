"""The errors a service can stop with, and the one table that maps them to exit codes.

Exit codes are part of the contract (docs/configuration.md, SPEC): 0 done, 1 anything else,
2 configuration error, 3 Kafka not reachable within KAFKA_WAIT_TIMEOUT_S, or reachable but
refusing this service (authentication, TLS handshake, authorization): it cannot be used.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    CONFIG = 2
    KAFKA_UNREACHABLE = 3


class ServiceError(Exception):
    """An error that ends a service with a known exit code and a one-line message."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(ServiceError):
    """A setting is missing, malformed or out of range. The message names the variable."""

    exit_code = ExitCode.CONFIG


class KafkaUnreachable(ServiceError):
    """The broker did not answer within KAFKA_WAIT_TIMEOUT_S."""

    exit_code = ExitCode.KAFKA_UNREACHABLE


class KafkaRefused(KafkaUnreachable):
    """The broker answered and refused this service: its credentials (authentication), its
    TLS handshake (an untrusted certificate), or an operation the principal's ACLs do not
    allow. Waiting does not help, so this ends the wait at once; the message says which."""


class StopRequested(ServiceError):
    """SIGTERM/SIGINT arrived before the service got going (while it waited for the broker).

    A clean stop, so exit 0: docs/reliability.md promises every service stops within
    SHUTDOWN_TIMEOUT_S, and a wait for a broker that is down must not hold that up.
    """

    exit_code = ExitCode.OK


class DeliveryFailed(ServiceError):
    """Some jobs were not acknowledged by the broker (the producer exits 1)."""

    exit_code = ExitCode.FAILURE


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code a service ends with after `error`."""
    if isinstance(error, ServiceError):
        return error.exit_code
    return ExitCode.FAILURE
