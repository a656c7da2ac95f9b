"""The test Kafka itself: a real Apache Kafka at the pinned version, and its clusters."""

from __future__ import annotations

import os
import re
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import local_kafka
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from local_kafka import LocalKafkaCluster

MESSAGES = 100
PARTITIONS = 3


def _create_topic(
    admin: AdminClient,
    topic: str,
    partitions: int,
    replication: int,
    timeout: float = 30.0,
) -> None:
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication)],
        operation_timeout=timeout,
    )
    futures[topic].result(timeout=timeout)


def test_produce_consume_keyed_roundtrip(kafka_bootstrap: str, admin: AdminClient, topic_name: str) -> None:
    """100 keyed messages (acks=all, idempotent) come back exactly once over 3 partitions."""
    _create_topic(admin, topic_name, PARTITIONS, 1)

    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    for i in range(MESSAGES):
        producer.produce(
            topic_name,
            key=f"key-{i}".encode(),
            value=f"value-{i}".encode(),
            on_delivery=on_delivery,
        )
    assert producer.flush(30.0) == 0, "messages still undelivered after 30 s"
    assert not errors, errors
    assert len(delivered) == MESSAGES
    assert {m.partition() for m in delivered} == set(range(PARTITIONS))

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{topic_name}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[str] = []
    partitions: set[int] = set()
    try:
        consumer.subscribe([topic_name])
        deadline = time.monotonic() + 60.0
        while len(values) < MESSAGES and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=MESSAGES, timeout=1.0):
                values.append(_value(msg))
                partitions.add(msg.partition() or 0)
        # Linger briefly (bounded) to catch duplicates arriving after the 100th message.
        values.extend(_value(m) for m in consumer.consume(num_messages=MESSAGES, timeout=1.0))
    finally:
        consumer.close()

    assert len(values) >= MESSAGES, f"only {len(values)}/{MESSAGES} messages within 60 s"
    assert Counter(values) == Counter(f"value-{i}" for i in range(MESSAGES))
    assert partitions == set(range(PARTITIONS))


def _value(msg: Message) -> str:
    assert msg.error() is None, msg.error()
    raw = msg.value()
    assert isinstance(raw, bytes), raw
    return raw.decode()


def test_broker_is_apache_kafka_at_pinned_version(
    kafka_bootstrap: str, kafka_local_cluster: LocalKafkaCluster | None,
    make_kafka_cluster: Callable[..., LocalKafkaCluster],
) -> None:
    """The broker under test really is Apache Kafka at the version pinned in pom.xml.

    Local cluster (the default): two independent facts about the running process —
    (1) /proc/<pid>/cmdline runs main class ``kafka.Kafka`` with ``-cp <libs>/*`` and that
    directory holds ``kafka_2.13-<pinned>.jar`` (and no other kafka_2.13 jar); (2) the
    broker's own log says ``Kafka version: <pinned>`` (AppInfoParser, read from the
    kafka-clients jar it loaded).

    External broker (KAFKA_BOOTSTRAP_SERVERS): the Kafka protocol does not carry the release
    string, so the exact version of that broker cannot be checked from here (the process facts
    are checked on a private node of the pinned jars instead). Of it we assert what the wire
    can prove: Kafka's own BrokerApiVersionsCommand (pinned kafka-tools) shows a Fetch
    minimum version >= 4, which is true of Kafka 4.0+ (KIP-896 removed Fetch v0-v3) and false of 3.x.
    """
    pinned = local_kafka.kafka_version()
    report = local_kafka.broker_api_versions(kafka_bootstrap)
    fetch = re.search(r"Fetch\(1\): (\d+) to (\d+)", report)
    assert fetch is not None, report
    assert int(fetch.group(1)) >= 4, f"Fetch versions {fetch.group(0)}: not Kafka 4.x"

    # With an external broker (KAFKA_BOOTSTRAP_SERVERS) the process facts below are checked on
    # a private node started from the pinned jars, so this test never passes without testing.
    cluster = kafka_local_cluster or make_kafka_cluster(nodes=1)

    pid = cluster.node_pid(0)
    assert pid is not None
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    assert "kafka.Kafka" in argv, argv
    classpath = argv[argv.index("-cp") + 1]
    assert classpath.endswith("/*"), classpath
    jars = {p.name for p in Path(classpath[:-2]).glob("kafka_2.13-*.jar")}
    assert jars == {f"kafka_2.13-{pinned}.jar"}, jars

    expected_line = f"INFO Kafka version: {pinned} "
    log = cluster.node_log(0)
    deadline = time.monotonic() + 10.0
    while expected_line not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{expected_line!r} not in {log}"
        time.sleep(0.2)


def test_three_node_cluster_leaders_and_clean_stop(
    make_kafka_cluster: Callable[..., LocalKafkaCluster], topic_name: str
) -> None:
    """3 nodes start, an RF-3 topic spreads leadership over every node, stop leaves nothing.

    Uses a private cluster (not the shared ``kafka_cluster3`` fixture) because it stops it.
    """
    cluster = make_kafka_cluster(nodes=3)
    try:
        assert len(cluster.bootstrap_servers.split(",")) == 3
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
        metadata = admin.list_topics(timeout=10.0)
        assert set(metadata.brokers) == {1, 2, 3}

        partitions = 6
        _create_topic(admin, topic_name, partitions, 3)
        deadline = time.monotonic() + 30.0
        while True:
            topic = admin.list_topics(topic_name, timeout=10.0).topics[topic_name]
            replicas = {p: (len(m.replicas), len(m.isrs)) for p, m in topic.partitions.items()}
            if replicas == {p: (3, 3) for p in range(partitions)}:
                break
            assert time.monotonic() < deadline, f"replicas/ISR not 3/3 within 30 s: {replicas}"
            time.sleep(0.2)
        leaders = {cluster.leader_node(topic_name, p) for p in range(partitions)}
        assert leaders == {0, 1, 2}

        pids = [pid for pid in cluster.pids if pid is not None]
        assert len(pids) == 3
        workdir = cluster.workdir
        assert workdir is not None
    finally:
        cluster.stop()

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    leftovers = [
        proc.name
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit() and str(workdir).encode() in _cmdline(proc)
    ]
    assert not leftovers, f"processes of the stopped cluster still running: {leftovers}"
    if not os.environ.get("KAFKA_KEEP_DATA"):
        assert not workdir.exists()


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_every_script_of_the_kafka_stand_in_image_runs_a_class_of_the_pinned_jars() -> None:
    """deploy/kafka/image/bin wraps Kafka's tools by class name; classes move between releases
    (ConfigCommand left kafka.admin for org.apache.kafka.tools by 4.4.0)."""
    libs = local_kafka.ensure_jars()
    classes = {name for jar in libs.glob("*.jar") for name in zipfile.ZipFile(jar).namelist()}
    scripts = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "image" / "bin"
    named = {}
    for script in sorted(scripts.glob("*.sh")):
        found = re.search(r"kafka-run-class\.sh ([\w.]+)", script.read_text())
        if found and script.name != "kafka-run-class.sh":
            named[script.name] = found.group(1)
    assert {"kafka-configs.sh", "kafka-acls.sh", "kafka-topics.sh", "kafka-share-groups.sh"} <= set(named)
    missing = {name: cls for name, cls in named.items() if cls.replace(".", "/") + ".class" not in classes}
    assert not missing, f"scripts naming classes the pinned Kafka does not have: {missing}"
