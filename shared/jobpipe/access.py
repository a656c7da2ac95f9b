"""What the cluster lets this service do, checked once at start (after the broker answered).

Why it exists: on a cluster with ACLs, a principal that may not read the jobs topic, join the
group or write the dead-letter topic does not fail at start on its own. The consumer would sit
in the group with nothing fetched, or stall a partition on every dead letter; the producer
would count every job as failed. So each service names the operations it needs (`Need`) and
`check_access` asks the broker which operations this principal is authorized for
(DescribeTopics / DescribeGroups with authorized operations, KIP-430): anything missing ends
the service with exit 3 (KafkaRefused) and one line naming the operation, the resource and
the variable that names it. A cluster without an authorizer reports nothing, and nothing is
refused here. `refusals_named` gives the same line for an authorization error a request meets
later (an ACL removed after the check, say) instead of librdkafka's exception.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient

from jobpipe.errors import KafkaRefused
from jobpipe.kafka_clients import admin_config, kafka_reason
from jobpipe.settings import KafkaSettings

REQUEST_TIMEOUT_S = 15.0
REFUSALS = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
            KafkaError.CLUSTER_AUTHORIZATION_FAILED)
# An error a request meets at work that says an ACL on this kind of resource is missing.
REFUSED_KIND = {KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
                KafkaError.GROUP_AUTHORIZATION_FAILED: "group"}


@dataclass(frozen=True)
class Need:
    """An operation this service needs on a resource, and the variable that names it."""

    operation: Literal["READ", "WRITE", "DESCRIBE"]
    kind: Literal["topic", "group"]
    name: str
    variable: str

    def describe(self) -> str:
        return f"{self.operation} {self.kind} {self.name!r} ({self.variable})"


def principal(settings: KafkaSettings) -> str:
    """Who this service is to the broker, as far as its settings say."""
    if settings.kafka_sasl_username:
        return f"User:{settings.kafka_sasl_username}"
    if settings.kafka_ssl_certificate_location:
        return "the principal of its client certificate"
    return "its principal"


def allows(authorized: list[AclOperation] | None, operation: str) -> bool:
    """Whether the operations the broker reported include `operation` (None: not reported,
    as from a cluster without an authorizer)."""
    if authorized is None:
        return True
    names = {op.name for op in authorized}
    return "ALL" in names or operation in names


def check_access(settings: KafkaSettings, needs: list[Need]) -> None:
    """Raise KafkaRefused naming the first operation in `needs` the broker does not allow."""
    admin = AdminClient(admin_config(settings, "access-check"))
    try:
        missing = _missing(admin, needs)
    finally:
        del admin  # destroyed here, not by the garbage collector on another client's thread
        gc.collect()
    if missing:
        raise refusal(settings, missing)


def refused_by(settings: KafkaSettings, error: KafkaError, who: str) -> KafkaRefused | None:
    """The one-line refusal (exit 3) for an error a client met at work that says an ACL is
    missing (a topic or group authorization failure), else None. `who`: "this consumer"."""
    if error.code() not in REFUSED_KIND:
        return None
    return KafkaRefused(f"Kafka does not authorize {who} ({principal(settings)}): "
                        f"{' '.join(error.str().split())}; grant it with an ACL (see docs/security.md)")


def refusal(settings: KafkaSettings, missing: list[Need]) -> KafkaRefused:
    """The one line (exit 3) for operations the broker does not allow this principal."""
    return KafkaRefused(f"Kafka does not authorize {principal(settings)} to "
                        f"{'; '.join(need.describe() for need in missing)}: grant it with an ACL "
                        "(see docs/security.md)")


@contextmanager
def refusals_named(settings: KafkaSettings, needs: list[Need]) -> Iterator[None]:
    """An authorization error raised inside (a KafkaException with GROUP_ or
    TOPIC_AUTHORIZATION_FAILED: an ACL removed after `check_access`, or a request it does not
    cover) becomes the same one-line refusal, naming the `needs` of that kind of resource."""
    try:
        yield
    except KafkaException as error:
        first = error.args[0] if error.args else None
        kind = REFUSED_KIND.get(first.code()) if isinstance(first, KafkaError) else None
        named = [need for need in needs if need.kind == kind]
        if not named:
            raise
        raise refusal(settings, named) from None


def _missing(admin: AdminClient, needs: list[Need]) -> list[Need]:
    topics = sorted({need.name for need in needs if need.kind == "topic"})
    groups = sorted({need.name for need in needs if need.kind == "group"})
    reported: dict[tuple[str, str], list[AclOperation] | KafkaError | None] = {}
    if topics:
        for name, future in admin.describe_topics(
                TopicCollection(topics), include_authorized_operations=True,
                request_timeout=REQUEST_TIMEOUT_S).items():
            reported["topic", name] = _operations(future)
    if groups:
        for name, future in admin.describe_consumer_groups(
                groups, include_authorized_operations=True,
                request_timeout=REQUEST_TIMEOUT_S).items():
            reported["group", name] = _operations(future)
    missing = []
    for need in needs:
        answer = reported[need.kind, need.name]
        if isinstance(answer, KafkaError):
            if answer.code() in REFUSALS:
                missing.append(need)
            continue  # a topic that does not exist yet, say: the service's own path reports it
        if not allows(answer, need.operation):
            missing.append(need)
    return missing


def _operations(future: object) -> list[AclOperation] | KafkaError | None:
    try:
        description = future.result()  # type: ignore[attr-defined]
    except KafkaException as error:
        first = error.args[0] if error.args else None
        if isinstance(first, KafkaError):
            return first
        raise KafkaRefused("Kafka refused to describe what this service may do: "
                           f"{kafka_reason(error)}") from None
    operations: list[AclOperation] | None = getattr(description, "authorized_operations", None)
    return operations
