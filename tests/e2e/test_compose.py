"""End-to-end: the real docker-compose.yml, images built from the Dockerfiles, real Compose v2.

(a) `up` with defaults reproduces the seed; (b) `--scale consumer=3` gives each replica one
partition; (c) a replica stopped mid-stream hands its partitions over and no job is lost;
(d) `stop`/`down` end every container with SIGTERM inside its grace period; (e) with the
3-broker override, a broker stopped mid-stream loses no job; (f) in share mode, six replicas on
three partitions all do work; (g) the console profile, started with (a), serves its pages on
127.0.0.1.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from tests.e2e.conftest import OVERRIDE_3_BROKERS, Stack
from tests.e2e.engine import (
    COMPOSE_FILE,
    Engine,
    _kafka_version,
    check_kafka_image_knob,
    ensure_compose,
    normalize_image,
    run,
)
from tests.observing import owned_by_member, wait_until
from tests.service_runner import free_port

pytestmark = pytest.mark.e2e

SEED_KEYS = {f"p{worker}-m{seq}" for worker in (1, 2) for seq in range(10)}
CONSOLE_TOKEN = "e2e-console-token-1234"
GRACE_S = 20  # docker-compose.yml's default stop_grace_period of the jobpipe services
KAFKA_GRACE_S = 30


def keys(workers: int, per_worker: int) -> set[str]:
    return {f"p{w}-m{s}" for w in range(1, workers + 1) for s in range(per_worker)}


def all_processed(stack: Stack) -> set[str]:
    return {key for found in stack.processed_keys().values() for key in found}


def wait_processed(stack: Stack, expected: set[str], timeout: float) -> set[str]:
    def done() -> set[str] | None:
        seen = all_processed(stack)
        return seen if expected <= seen else None
    try:
        result: set[str] = wait_until(done, timeout, f"{len(expected)} jobs processed", poll=2.0)
    except AssertionError:
        missing = sorted(expected - all_processed(stack))
        raise AssertionError(f"{len(missing)} job(s) never processed, e.g. {missing[:10]}") from None
    return result


def owners(description: dict[str, Any]) -> dict[str, list[int]]:
    """client_id -> partitions of the jobs topic, for the members that own any."""
    return {m["client_id"]: m["partitions"] for m in description["members"] if m["partitions"]}


def describe_when(stack: Stack, condition: Any, timeout: float, what: str) -> dict[str, Any]:
    """Poll `topic-admin describe --json` until `condition(description)` holds."""
    def check() -> dict[str, Any] | None:
        description = stack.describe()
        return description if condition(description) else None
    result: dict[str, Any] = wait_until(check, timeout, what, poll=2.0)
    return result


def owned_now(stack: Stack) -> dict[str, list[int]]:
    """Container (`consumer-N`) -> the partitions it owns now, from its members' last rebalance
    events."""
    owned: dict[str, list[int]] = {}
    for container, events in stack.events("consumer").items():
        members = owned_by_member(events)
        if members:
            owned[container] = sorted(set().union(*members.values()))
    return owned


def produced_count(stack: Stack) -> int:
    return sum(len(e) for e in stack.events("producer", "job.produced").values())


def test_compose_files_are_valid() -> None:
    compose = ensure_compose()
    for files in ([COMPOSE_FILE], [COMPOSE_FILE, OVERRIDE_3_BROKERS]):
        args = [compose, "--project-directory", str(COMPOSE_FILE.parent)]
        for file in files:
            args += ["-f", str(file)]
        run([*args, "config", "--quiet"], timeout=60, env={"PATH": "/usr/bin:/bin"})
    # By default every broker runs the pinned apache/kafka; KAFKA_IMAGE (the knob the tests use
    # for a stand-in) replaces it in every broker of both files.
    assert check_kafka_image_knob(compose, "localhost/x/kafka:1") == ["kafka"]
    assert check_kafka_image_knob(compose, "localhost/x/kafka:1", (COMPOSE_FILE, OVERRIDE_3_BROKERS)) == [
        "kafka", "kafka-2", "kafka-3"]
    text = COMPOSE_FILE.read_text()
    assert f"image: ${{KAFKA_IMAGE:-apache/kafka:{_kafka_version()}}}" in text, "the pinned Kafka"


def test_long_running_services_restart_on_failure_and_share_one_extra_config_scheme() -> None:
    """A consumer (or the lag exporter) that exits non-zero, e.g. 3 after KAFKA_WAIT_TIMEOUT_S, is
    started again; one-shot services are not. Every Kafka service takes the same four
    *EXTRA_CONFIG variables from the environment, under the services' own names."""
    compose = ensure_compose()
    env = {"PATH": "/usr/bin:/bin", "KAFKA_EXTRA_CONFIG": "socket.keepalive.enable=true",
           "KAFKA_CONSUMER_EXTRA_CONFIG": "fetch.wait.max.ms=50"}
    shown = run([compose, "--project-directory", str(COMPOSE_FILE.parent), "-f", str(COMPOSE_FILE),
                 "--profile", "monitoring", "config", "--format", "json"], timeout=60, env=env,
                split_stderr=True)
    services = json.loads(shown.stdout)["services"]
    restart = {name: service.get("restart", "no") for name, service in services.items()}
    assert restart["consumer"] == restart["lag-exporter"] == "on-failure", restart
    assert restart["topic-admin"] == restart["producer"] == restart["inmemory"] == "no", restart
    for name in ("topic-admin", "consumer", "producer", "lag-exporter"):
        environment = services[name]["environment"]
        assert environment["KAFKA_EXTRA_CONFIG"] == "socket.keepalive.enable=true", name
        assert environment["KAFKA_CONSUMER_EXTRA_CONFIG"] == "fetch.wait.max.ms=50", name
    text = COMPOSE_FILE.read_text()
    assert "CONSUMER_KAFKA_EXTRA_CONFIG" not in text and "PRODUCER_KAFKA_EXTRA_CONFIG" not in text


def check_console(stack: Stack, port: int) -> None:
    """(g) The console profile's console (its image built from services/console/Dockerfile,
    non-root) is published on 127.0.0.1 only and shows the seed's pipeline: its overview, the
    dead-letter list, the sign-in page; an action without the token is refused; the token is
    never logged."""
    (console,) = stack.containers("console")
    published = {(p.get("URL"), p.get("PublishedPort")) for p in console.get("Publishers") or []}
    assert published == {("127.0.0.1", port)}, console.get("Publishers")
    base = f"http://127.0.0.1:{port}"

    def overview() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{base}/api/overview", timeout=5) as answer:
                found: dict[str, Any] = json.loads(answer.read())
        except OSError:
            return None
        done = found["produced_total"] == 20 and found["total_lag"] == 0 and len(found["members"]) == 2
        return found if done else None

    found = wait_until(overview, 120, "the console's overview: 20 jobs, lag 0, 2 members", poll=2.0)
    assert sorted(p["partition"] for p in found["partitions"]) == [0, 1, 2]
    for path, expected in (("/", 'id="rate-produced"'), ("/dead-letters", 'id="dead-letters"'),
                           ("/login", 'name="token"')):
        with urllib.request.urlopen(f"{base}{path}", timeout=30) as answer:
            assert answer.status == 200 and expected in answer.read().decode(), path
    refused = urllib.request.Request(f"{base}/dead-letters/redrive", data=b"csrf_token=x", method="POST")
    try:
        urllib.request.urlopen(refused, timeout=30)
        raise AssertionError("a re-drive without the token was accepted")
    except urllib.error.HTTPError as error:
        assert error.code in (401, 403), error.code
    user = stack.compose("exec", "-T", "console", "id", "-u", timeout=60).stdout.strip()
    assert user == "10001", user
    logs = "\n".join(line for found in stack.logs("console").values() for line in found)
    assert CONSOLE_TOKEN not in logs, "the token is never logged"


def test_up_with_defaults_reproduces_the_seed(make_stack: Any, engine: Engine) -> None:
    """(a) 20 jobs produced and processed across the 2 replicas; inmemory 20; one-shots exit 0.
    With the console profile on: (g) the console shows it."""
    console_port = free_port()
    stack = make_stack(COMPOSE_PROFILES="console", CONSOLE_HOST_PORT=console_port,
                       CONSOLE_TOKEN=CONSOLE_TOKEN, CONSOLE_REFRESH_S=1)
    stack.up()
    # The broker runs the image the engine chose (the pinned one, or its stand-in: KAFKA_IMAGE).
    brokers = stack.containers("kafka")
    assert [normalize_image(str(c["Image"])) for c in brokers] == [engine.images["kafka"].ref], brokers
    codes = stack.wait_exited("topic-admin", "producer", "inmemory", timeout=120)
    assert codes and all(code == 0 for code in codes.values()), codes

    produced = [e for found in stack.events("producer", "job.produced").values() for e in found]
    assert {e["key"] for e in produced} == SEED_KEYS
    assert len(produced) == 20
    assert {e["partition"] for e in produced} == {0, 1, 2}, "the seed's keys spread over 3 partitions"

    wait_processed(stack, SEED_KEYS, timeout=60)
    consumers = stack.containers("consumer")
    assert len(consumers) == 2 and all(c["State"] == "running" for c in consumers), consumers
    processed = stack.events("consumer", "job.processed")
    assert sum(len(e) for e in processed.values()) >= 20
    assert all("partition" in e and "offset" in e for found in processed.values() for e in found)

    # Both replicas are members of the group and share the 3 partitions; every job committed.
    description = describe_when(stack, lambda d: len(owners(d)) == 2 and d["total_lag"] == 0, 60,
                                "2 members sharing the partitions with lag 0")
    assert sorted(p for parts in owners(description).values() for p in parts) == [0, 1, 2]

    inmemory = [e for found in stack.events("inmemory", "job.processed").values() for e in found]
    assert {e["key"] for e in inmemory} == SEED_KEYS and len(inmemory) == 20
    stopped = [e for found in stack.events("inmemory", "service.stopped").values() for e in found]
    assert stopped and stopped[-1]["processed"] == 20 and stopped[-1]["exit_code"] == 0
    check_console(stack, console_port)


def test_scale_consumer_to_3_gives_each_replica_one_partition(make_stack: Any) -> None:
    """(b) `up --scale consumer=3`: each of the 3 partitions owned by a different replica."""
    stack = make_stack()
    stack.up("--scale", "consumer=3")
    consumers = stack.containers("consumer")
    assert len(consumers) == 3, consumers

    def one_each(description: dict[str, Any]) -> bool:
        owned = owners(description)
        return len(owned) == 3 and sorted(p for parts in owned.values() for p in parts) == [0, 1, 2]

    description = describe_when(stack, one_each, 90, "3 replicas owning one partition each")
    # Each member is a different container: the client id ends with the container's host name.
    hosts = {client_id.rsplit("-", 1)[-1] for client_id in owners(description)}
    ids = [str(c["ID"]) for c in consumers]
    assert len(hosts) == 3
    assert all(any(i.startswith(h) for i in ids) for h in hosts), (hosts, ids)
    stack.wait_exited("producer", timeout=60)
    wait_processed(stack, SEED_KEYS, timeout=60)


def test_stopping_a_replica_mid_stream_moves_its_partitions_and_loses_nothing(make_stack: Any) -> None:
    """(c) one of 2 replicas gets SIGTERM while jobs flow: the other takes over, none lost."""
    workers, per_worker = 2, 300  # 20 s of jobs at 15/s per worker
    stack = make_stack(MESSAGES_PER_WORKER=per_worker, PRODUCE_RATE=15)
    stack.up()

    def shared() -> dict[str, list[int]] | None:
        owned = {c: parts for c, parts in owned_now(stack).items() if parts}
        ok = len(owned) == 2 and sorted(p for parts in owned.values() for p in parts) == [0, 1, 2]
        return owned if ok and len(all_processed(stack)) >= 20 else None

    owned = wait_until(shared, 60, "2 replicas sharing the partitions, 20 jobs processed", poll=1.0)
    victim_prefix, victim_parts = sorted(owned.items())[0]
    consumers = {f"consumer-{str(c['Name']).rsplit('-', 1)[-1]}": c for c in stack.containers("consumer")}
    victim = consumers[victim_prefix]
    survivor_prefix = next(prefix for prefix in consumers if prefix != victim_prefix)
    assert stack.state("producer") == [("running", 0)], "the stop must happen mid-stream"

    took = stack.stop_container(str(victim["Name"]), GRACE_S)
    assert took < GRACE_S, f"the replica took {took:.1f}s to stop"
    after = {str(c["Name"]): c for c in stack.containers("consumer")}
    assert after[victim["Name"]]["State"] == "exited" and int(after[victim["Name"]]["ExitCode"]) == 0

    codes = stack.wait_exited("producer", timeout=90)
    assert list(codes.values()) == [0], codes
    assert produced_count(stack) == workers * per_worker
    wait_processed(stack, keys(workers, per_worker), timeout=90)

    # The survivor now owns every partition, the victim's included.
    assigned = stack.events("consumer", "partitions.assigned").get(survivor_prefix, [])
    assert assigned and sorted(assigned[-1]["owned"]) == [0, 1, 2], (survivor_prefix, assigned[-3:])
    assert set(victim_parts) <= set(assigned[-1]["owned"])
    final = describe_when(stack, lambda d: d["total_lag"] == 0, 60, "lag 0")
    assert list(owners(final).values()) == [[0, 1, 2]]


def test_stop_ends_every_container_with_sigterm_within_its_grace_period(
        make_stack: Any, engine: Engine) -> None:
    """(d) `stop` then `down`: every container exits on SIGTERM (0; Kafka's JVM 143 = 128+SIGTERM
    after its shutdown hooks), none is SIGKILLed (137) at the end of its grace period."""
    stack = make_stack(MESSAGES_PER_WORKER=0, PRODUCE_RATE=5)  # a producer that runs until stopped
    stack.up()
    wait_until(lambda: len(all_processed(stack)) >= 10, 60, "10 jobs processed", poll=1.0)
    assert stack.state("producer") == [("running", 0)]
    running = [c["Name"] for c in stack.containers() if c["State"] == "running"]
    assert len(running) == 4, running  # kafka, 2 consumers, producer

    started = time.monotonic()
    stack.compose("stop", timeout=GRACE_S + KAFKA_GRACE_S + 60)
    took = time.monotonic() - started
    rows = stack.containers()
    assert all(c["State"] == "exited" for c in rows), rows
    codes = {str(c["Name"]): (str(c["Service"]), int(c["ExitCode"])) for c in rows}
    killed = {name: code for name, (_s, code) in codes.items() if code == 137}
    assert not killed, f"SIGKILLed after the grace period: {killed}"
    for name, (service, code) in codes.items():
        assert code == (143 if service == "kafka" else 0), (name, code)
    # Dependents stop first (consumers and producer in parallel, then kafka): both well inside.
    assert took < GRACE_S + KAFKA_GRACE_S, f"stop took {took:.1f}s"
    for service in ("consumer", "producer"):
        for container, found in stack.events(service, "service.stopped").items():
            assert found and found[-1]["exit_code"] == 0, (container, found)
    delivered = stack.events("producer", "service.stopped")
    assert all(e[-1]["failed"] == 0 for e in delivered.values()), delivered

    down = stack.compose("down", "-v", timeout=120)
    assert down.returncode == 0
    assert stack.containers() == []


def test_three_brokers_survive_one_broker_stopped_mid_stream(make_stack: Any) -> None:
    """(e) 3 brokers, RF 3, min.insync.replicas 2: SIGTERM one broker mid-stream, no job lost."""
    workers, per_worker = 2, 300  # 20 s of jobs at 15/s per worker
    stack = make_stack(files=(COMPOSE_FILE, OVERRIDE_3_BROKERS),
                       MESSAGES_PER_WORKER=per_worker, PRODUCE_RATE=15)
    stack.up(timeout=420)
    wait_until(lambda: len(all_processed(stack)) >= 30, 90, "30 jobs processed", poll=1.0)
    assert stack.state("producer") == [("running", 0)], "the stop must happen mid-stream"
    broker = stack.containers("kafka-2")[0]
    stack.stop_container(str(broker["Name"]), KAFKA_GRACE_S)
    assert stack.state("kafka-2") == [("exited", 143)]

    codes = stack.wait_exited("producer", timeout=120)
    assert list(codes.values()) == [0], codes
    stopped = [e for found in stack.events("producer", "service.stopped").values() for e in found]
    assert stopped[-1]["produced"] == workers * per_worker and stopped[-1]["failed"] == 0, stopped[-1]
    seen = wait_processed(stack, keys(workers, per_worker), timeout=120)
    assert len(seen) == workers * per_worker
    # Every partition has 3 replicas; with broker 2 down, 2 of them are in sync (min.insync 2).
    jobs = next(t for t in stack.describe()["topics"] if t["name"] == "jobs")
    assert all(len(p["replicas"]) == 3 and len(p["isr"]) == 2 for p in jobs["partitions"]), jobs
    # A broker stopped with SIGTERM is a graceful path: leaders and the group coordinator move,
    # and every consumer keeps its partitions and commits, so no record is processed twice (as
    # tests/integration/test_reliability.py's rolling restart asserts). A job written twice
    # to the topic while a leader moves (librdkafka#4953, README) is two records, not a repeat.
    records = Counter((e["partition"], e["offset"])
                      for found in stack.events("consumer", "job.processed").values() for e in found)
    repeated = {record: n for record, n in records.items() if n > 1}
    assert not repeated, f"records processed twice after a graceful broker stop: {repeated}"


PROCESSED_LINE = re.compile(r"processed (p\d+-m\d+) from partition \d+ offset \d+")
PIPELINE_SERVICES = ("topic-admin", "consumer", "producer", "inmemory")


def test_up_in_the_foreground_shows_the_pipeline_not_the_broker(make_stack: Any) -> None:
    """`docker compose up` as a person runs it (text logs, attached): the seed's lines are what it
    prints, none of the broker's (`attach: false`); `docker compose logs kafka` still has them."""
    stack = make_stack(LOG_FORMAT="text")
    up = stack.attached_up()

    def seed_in_output() -> list[str] | None:
        lines = up.snapshot()
        seen = {m.group(1) for line in lines if line.startswith("consumer-")
                for m in [PROCESSED_LINE.search(line)] if m}
        return lines if seen >= SEED_KEYS else None

    try:
        lines = wait_until(seed_in_output, 240, "the 20 processed lines in `up`'s output", poll=1.0)
    except AssertionError:
        raise AssertionError("`up` printed:\n" + "\n".join(up.snapshot()[-80:])) from None
    prefixes = Counter(line.partition(" | ")[0].strip().rsplit("-", 1)[0]
                       for line in lines if " | " in line)
    assert "kafka" not in prefixes, f"the broker's lines are attached: {prefixes}"
    assert set(prefixes) <= set(PIPELINE_SERVICES), prefixes
    assert prefixes["consumer"] >= 20, prefixes
    # What a person sees is short: the seed's lines plus each service's start and stop lines,
    # not the broker's ~1,600.
    assert len(lines) < 400, len(lines)

    broker = stack.logs("kafka")
    assert broker and sum(len(found) for found in broker.values()) > 50, "the broker's own log"
    assert any("Kafka Server started" in text or "started (kafka.server" in text
               for found in broker.values() for text in found), next(iter(broker.values()))[-20:]

    stack.compose("stop", timeout=GRACE_S + KAFKA_GRACE_S + 60)
    assert up.wait(60) == 0


def share_members(stack: Stack) -> dict[str, str]:
    """Member id -> assignment of the share group, as Kafka's own tool in the kafka container
    shows it (the command docs/share-groups.md gives for members, since librdkafka cannot describe them)."""
    out = stack.compose("exec", "-T", "kafka", "/opt/kafka/bin/kafka-share-groups.sh",
                        "--bootstrap-server", "kafka:19092", "--describe", "--group", "worker-group",
                        "--members", timeout=120, check=False).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("worker-group ")]
    return {row[1]: row[5] if len(row) > 5 else "" for row in rows}  # no ASSIGNMENT yet: ""


def test_share_mode_scales_consumers_past_the_partition_count(make_stack: Any) -> None:
    """(f) `CONSUMER_MODE=share docker compose up --scale consumer=6` on the 3-partition topic:
    all six replicas become members and process jobs, and every job is processed. The jobs are
    sent once all six are members (at a steady pace, one per batch: a share group hands out whole
    batches), so a replica that starts late is not mistaken for one that gets no work."""
    workers, per_worker = 2, 150  # 10 s of jobs at 15/s per worker
    stack = make_stack(CONSUMER_MODE="share", MESSAGES_PER_WORKER=per_worker, PRODUCE_RATE=15,
                       PRODUCER_LINGER_MS=0)
    stack.up("--scale", "consumer=6", "--scale", "producer=0")
    assert len(stack.containers("consumer")) == 6
    def six_members_with_partitions() -> dict[str, str] | None:
        found = share_members(stack)
        return found if len(found) == 6 and all(a.startswith("jobs:") for a in found.values()) else None

    wait_until(six_members_with_partitions, 180, "six members of worker-group with partitions", poll=2.0)
    stack.compose("up", "-d", "--no-build", "--pull", "never", "--no-deps", "producer", timeout=120)
    wait_processed(stack, keys(workers, per_worker), timeout=180)
    done = stack.processed_keys()
    working = {container for container, found in done.items() if found}
    assert len(working) == 6, {container: len(found) for container, found in done.items()}
    described = stack.describe()  # topic-admin gets CONSUMER_MODE from compose too
    assert described["mode"] == "share", described
    assert described["share_configs"]["share.auto.offset.reset"] == "earliest", described
