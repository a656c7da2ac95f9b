"""Root pytest fixtures: a real Apache Kafka for the tests.

The broker is Apache Kafka at the version pinned in deploy/kafka/pom.xml, run from Maven
Central jars by deploy/kafka/local_kafka.py (KRaft, combined broker+controller nodes).

* ``kafka_bootstrap`` (session): bootstrap servers. With env ``KAFKA_BOOTSTRAP_SERVERS`` set,
  that broker is used (it must answer within 30 s); otherwise a 1-node local cluster is
  started for the session. Missing Java/Maven FAILS the tests (never skips).
* ``kafka_local_cluster`` (session): that local cluster, or ``None`` when external.
* ``kafka_cluster3`` (session, started only when a test requests it): a 3-node cluster.
* ``make_kafka_cluster`` (function): factory for a private cluster the test may stop/abuse;
  whatever it started is stopped at teardown.
* ``admin`` (session): a confluent-kafka AdminClient for ``kafka_bootstrap``.
* ``topic_name`` (function): a unique topic name per test.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "kafka"))

import local_kafka
from local_kafka import KafkaStartError, KafkaToolingMissing, LocalKafkaCluster

EXTERNAL_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
EXTERNAL_READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class KafkaSession:
    bootstrap_servers: str
    cluster: LocalKafkaCluster | None  # None: external broker from KAFKA_BOOTSTRAP_SERVERS


def start_local_cluster(cluster: LocalKafkaCluster) -> LocalKafkaCluster:
    """Start ``cluster``; a missing Java/Maven or a failed start fails the test (no skip)."""
    try:
        return cluster.start()
    except KafkaToolingMissing as exc:
        reason = f"Kafka tests need Java 17+ and Maven: {exc}"
    except KafkaStartError as exc:
        reason = f"local Kafka did not start: {exc}"
    pytest.fail(reason, pytrace=False)  # outside `except`: no chained traceback


@pytest.fixture(scope="session")
def kafka_session() -> Iterator[KafkaSession]:
    external = os.environ.get(EXTERNAL_BOOTSTRAP_ENV, "").strip()
    if external:
        problem = ""
        try:
            local_kafka.wait_for_kafka(external, timeout=EXTERNAL_READY_TIMEOUT)
        except (TimeoutError, ValueError) as exc:
            problem = str(exc)
        if problem:
            pytest.fail(f"{EXTERNAL_BOOTSTRAP_ENV}={external} does not answer: {problem}", pytrace=False)
        yield KafkaSession(external, None)
        return
    cluster = start_local_cluster(LocalKafkaCluster(nodes=1))
    try:
        yield KafkaSession(cluster.bootstrap_servers, cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_session: KafkaSession) -> str:
    """Bootstrap servers of the session's Kafka ("127.0.0.1:port" when local)."""
    return kafka_session.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_local_cluster(kafka_session: KafkaSession) -> LocalKafkaCluster | None:
    """The session's local cluster, or None when KAFKA_BOOTSTRAP_SERVERS points elsewhere."""
    return kafka_session.cluster


@pytest.fixture(scope="session")
def kafka_cluster3() -> Iterator[LocalKafkaCluster]:
    """A 3-node local cluster, started on first request, stopped at session end.

    Shared by the whole session: a test that kills/stops/pauses nodes must restore them
    (``start_node`` / ``resume_node``) before it ends.
    """
    cluster = start_local_cluster(LocalKafkaCluster(nodes=3))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def make_kafka_cluster() -> Iterator[Callable[..., LocalKafkaCluster]]:
    """Factory: ``make_kafka_cluster(nodes=3, **LocalKafkaCluster kwargs)`` -> started cluster.

    For tests that stop or break their cluster. Every cluster made is stopped at teardown
    (stop() is idempotent, so a test may stop it itself first).
    """
    made: list[LocalKafkaCluster] = []

    def make(nodes: int = 1, **kwargs: object) -> LocalKafkaCluster:
        cluster = LocalKafkaCluster(nodes, **kwargs)  # type: ignore[arg-type]
        made.append(cluster)
        return start_local_cluster(cluster)

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    """A confluent-kafka AdminClient for ``kafka_bootstrap``."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test run: ``t-<test name>-<random hex>``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:80]
    return f"t-{base}-{uuid.uuid4().hex[:10]}"
