"""A consumer whose broker goes away (issue 22, defect 8): it says so in a few lines, not
thousands (each cause at most once per interval, with a count), keeps its librdkafka client
(replacing it restarted the reconnect backoff), reports not ready on /readyz while no broker
answers, and carries on when the broker is back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from local_kafka import LocalKafkaCluster

from jobpipe.job import Job
from tests.service_runner import ServiceProcess, free_port, wait_until

AWAY_S = 25.0  # how long the broker stays away: two of the former client replacements (~12 s)
MOST_LINES = 30  # a few causes, each logged at most once or twice in AWAY_S


def ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def processed(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        body = answer.read().decode()
    return sum(float(line.split()[-1]) for line in body.splitlines()
               if line.startswith("jobs_processed_total"))


def produce(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    job = Job.new(1, 0)
    producer.produce(topic, job.to_bytes(), key=(job.key or "").encode())
    assert producer.flush(30) == 0


def test_a_consumer_whose_broker_is_away_logs_little_keeps_its_client_and_is_not_ready(
        make_kafka_cluster: Callable[..., LocalKafkaCluster]) -> None:
    cluster = make_kafka_cluster(nodes=1)
    topic = "away"
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    del admin
    port = free_port()
    consumer = ServiceProcess("consumer", kafka_bootstrap_servers=cluster.bootstrap_servers, jobs_topic=topic,
                              dlq_topic=f"{topic}.dlq", consumer_group="away-group", metrics_port=port,
                              log_level="WARNING", handler="tests.handlers:noop", shutdown_timeout_s=5)
    try:
        wait_until(lambda: ready(port) == 200, 60, "/readyz once the consumer joined its group")
        before = len(consumer.output.splitlines())
        cluster.stop_node(0)
        stopped = time.monotonic()
        wait_until(lambda: ready(port) == 503, 15, "/readyz not ready while no broker answers")
        time.sleep(max(0.0, AWAY_S - (time.monotonic() - stopped)))  # a window of fixed length
        away = consumer.output.splitlines()[before:]
        events = Counter(json.loads(line).get("event") for line in away if line.startswith("{"))
        print(f"{len(away)} lines in {AWAY_S:g} s with the broker away: {dict(events)}")  # for the record
        assert len(away) <= MOST_LINES, f"{len(away)} lines in {AWAY_S:g} s: {events.most_common(5)}"
        assert events["consumer.client_replaced"] == 0, "the client is kept while the broker is down"
        assert ready(port) == 503

        cluster.start_node(0)
        wait_until(lambda: ready(port) == 200, 60, "/readyz ready again once the broker answers")
        produce(cluster.bootstrap_servers, topic)
        try:
            wait_until(lambda: processed(port) == 1, 60, "the job sent after the outage processed")
        except AssertionError:
            raise AssertionError(consumer.tail(40)) from None
        assert consumer.stop() == 0, consumer.tail()
    finally:
        consumer.kill()
