"""Reliability scenarios: the real services, real brokers, faults injected, every job accounted for.

Each scenario starts `topic-admin`, `consumer` and `producer` as subprocesses (JSON logs),
breaks something mid-stream, waits until every job the broker acknowledged was processed or
dead-lettered (bounded by a deadline), stops the services with SIGTERM and books a row in
the ledger:

- `sent`: jobs handed to Kafka. From each producer's `service.stopped` counts; for a
  producer killed with SIGKILL (no counts), the jobs that demonstrably left it: those it
  logged as acknowledged plus those processed or dead-lettered that no one logged as
  acknowledged (its acks that died with it). Test-made poison messages count too.
- `acked`: distinct jobs the broker acknowledged (`job.produced`, logged on the delivery
  report; poison: the test producer's delivery reports).
- `processed_unique`: distinct jobs with a `job.processed` event.
- `dead_lettered`: distinct jobs (or poison messages, by key) with a `job.dead_lettered` event.
- `lost`: acked jobs never processed nor dead-lettered. Must be 0 everywhere.
- `duplicates`: `job.processed` events beyond the first per record (job, partition, offset),
  plus `job.dead_lettered` events beyond the first per message: work the consumers redid.
  Must be 0 on graceful paths; on SIGKILL and session-expiry paths it is reported
  (at-least-once: the work since the last commit, committed every second, is done again).
- `in_topic_twice`: records beyond the first per job, i.e. jobs the topic holds twice (at two
  offsets), which the consumers rightly process twice. The idempotent producer should make it
  0, and it must be, except where partition leaders move (leader kill, rolling restart):
  librdkafka can write a batch twice when the leader changes under it
  (confluentinc/librdkafka#4953, open; seen here once, 2 jobs in a rolling restart).

Profiles (env RELIABILITY_PROFILE): "short" (default; a few hundred jobs per scenario, the
whole file in a few minutes, part of `make test`) and "full" (thousands of jobs, more faults;
`make reliability`). Rows are kept in RESULTS; test_reliability.py writes them to
`reliability-report.json` and prints the table.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)
from tabulate import tabulate

from tests.service_runner import REPO, ServiceProcess, wait_until

Event = dict[str, Any]
PROFILE_ENV = "RELIABILITY_PROFILE"
REPORT_PATH = REPO / "reliability-report.json"
COLUMNS = ["scenario", "sent", "acked", "processed_unique", "dead_lettered", "lost", "duplicates",
           "in_topic_twice",
           "seconds", "notes"]
PACED = "tests.handlers:paced"
# Consumers that are killed (or whose broker freezes) use the broker's minimum session timeout,
# so the group notices a dead member in 6 s instead of the default 45 s.
SHORT_SESSION = "session.timeout.ms=6000,heartbeat.interval.ms=1000"
# Share mode (issue 15): a killed member's records come back when their lock ends; 5 s (the
# test broker allows locks from 1 s) instead of the default 30 s keeps a scenario short.
SHARE_LOCK_MS = 5000


@dataclass(frozen=True)
class Profile:
    name: str
    jobs: int  # jobs a finite producer run sends (scenarios 5, 7, 8, 10)
    rate: float  # jobs per second of every stream (a continuous producer runs until a fault is over)
    faults: int  # consumer SIGKILLs (1), SIGTERM-during-rebalance rounds (2)
    fault_every_s: float  # time between those faults
    freeze_s: float  # broker SIGSTOPped this long (6); longer than the 6 s session timeout
    broker_down_s: float  # broker started this long after the services (5)
    slow_jobs: int  # jobs slower than max.poll.interval.ms (8)
    settle_s: float  # deadline for the last acknowledged job to be done with

    @property
    def stream_s(self) -> float:
        return self.jobs / self.rate


PROFILES = {
    "short": Profile("short", jobs=300, rate=40, faults=2, fault_every_s=2, freeze_s=10,
                     broker_down_s=10, slow_jobs=1, settle_s=120),
    "full": Profile("full", jobs=4000, rate=100, faults=5, fault_every_s=6, freeze_s=20,
                    broker_down_s=20, slow_jobs=4, settle_s=300),
}


def current_profile() -> Profile:
    name = os.environ.get(PROFILE_ENV, "short").strip().lower() or "short"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]


RESULTS: list[dict[str, Any]] = []


def write_report(rows: list[dict[str, Any]], path: Path = REPORT_PATH) -> str:
    """Write `rows` as JSON to `path`; return the table for a person."""
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return tabulate([[row.get(column, "") for column in COLUMNS] for row in rows], headers=COLUMNS)


# ---- reading the services' events ------------------------------------------------------------


class EventTail:
    """Reads a service's JSON events incrementally (whole lines only)."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self._offset = 0
        self.events: list[Event] = []

    def poll(self) -> list[Event]:
        with open(self.service.stdout_path, "rb") as stream:
            stream.seek(self._offset)
            chunk = stream.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        new = []
        for line in chunk[:end].splitlines():
            if line.startswith(b"{"):
                try:
                    new.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # not ours (e.g. a stray print)
        self.events += new
        return new


@dataclass
class Ledger:
    """Every job's fate in one scenario, from the services' events and the test's own sends."""

    scenario: str
    tails: list[EventTail] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    processed: Counter[str] = field(default_factory=Counter)
    records: Counter[tuple[str, int, int]] = field(default_factory=Counter)  # (id, partition, offset)
    dead: Counter[str] = field(default_factory=Counter)
    stopped_sent: int = 0  # `sent` from producers that logged service.stopped
    test_sent: int = 0
    _killed: dict[int, float] = field(default_factory=dict)  # service -> when SIGKILLed (epoch s)

    def watch(self, service: ServiceProcess) -> None:
        self.tails.append(EventTail(service))

    def killed(self, service: ServiceProcess) -> None:
        self._killed[id(service)] = time.time()

    def refresh(self) -> None:
        for tail in self.tails:
            for record in tail.poll():
                name = record.get("event")
                if name == "job.produced":
                    self.acked.add(record["id"])
                elif name == "job.processed":
                    self.processed[record["id"]] += 1
                    self.records[(record["id"], record["partition"], record["offset"])] += 1
                elif name == "job.dead_lettered":
                    self.dead[record.get("id") or f"key:{record.get('key')}"] += 1
                elif name == "service.stopped" and tail.service.name == "producer":
                    self.stopped_sent += int(record.get("sent", 0))

    def events(self, name: str, services: Iterable[ServiceProcess] | None = None) -> list[Event]:
        self.refresh()
        wanted = None if services is None else {id(s) for s in services}
        return [e for t in self.tails if wanted is None or id(t.service) in wanted
                for e in t.events if e.get("event") == name]

    def duplicate_origins(self) -> tuple[list[float], Counter[str]]:
        """Who did each twice-done job first, and why its offset was not committed: for the
        jobs first done by a consumer that was later SIGKILLed, how many seconds before the
        kill (a killed consumer commits nothing after its last auto-commit, every 1 s); the
        others counted by cause (a consumer whose partitions were lost, session timed out,
        could not commit what it did since; else "unexplained")."""
        twice = {k[0] for k, n in self.records.items() if n > 1} | {k for k, n in self.dead.items() if n > 1}
        first: dict[str, tuple[float, EventTail]] = {}
        for tail in self.tails:
            for record in tail.events:
                if record.get("event") not in ("job.processed", "job.dead_lettered"):
                    continue
                key = record.get("id") or f"key:{record.get('key')}"
                if key in twice:
                    at = datetime.fromisoformat(record["time"]).timestamp()
                    if key not in first or at < first[key][0]:
                        first[key] = (at, tail)
        before_kill: list[float] = []
        causes: Counter[str] = Counter()
        for at, tail in first.values():
            if id(tail.service) in self._killed:
                before_kill.append(self._killed[id(tail.service)] - at)
            elif any(e.get("event") == "partitions.revoked" and e.get("lost") for e in tail.events):
                causes["by consumers whose partitions were lost (session timeout)"] += 1
            else:
                causes["unexplained"] += 1
        return before_kill, causes

    def explain_duplicates(self) -> str:
        """`duplicate_origins` for a person: a SIGKILLed consumer's duplicates should all be
        from its last second or so (the window shown)."""
        before_kill, causes = self.duplicate_origins()
        parts = [f"{n} first done {why}" for why, n in causes.items()]
        if before_kill:
            parts.insert(0, f"{len(before_kill)} first done by SIGKILLed consumers in their last "
                            f"{max(before_kill):.1f} s")
        return "duplicates: " + ", ".join(parts)

    def outstanding(self) -> set[str]:
        """Acknowledged jobs not yet processed nor dead-lettered."""
        return self.acked - self.processed.keys() - self.dead.keys()

    def row(self, seconds: float, notes: str) -> dict[str, Any]:
        self.refresh()
        killed_acked = {e["id"] for t in self.tails if id(t.service) in self._killed
                        and t.service.name == "producer"
                        for e in t.events if e.get("event") == "job.produced"}
        orphans = (self.processed.keys() | self.dead.keys()) - self.acked  # acks that died unlogged
        sent = self.stopped_sent + self.test_sent + len(killed_acked) + len(orphans)
        duplicates = (sum(n - 1 for n in self.records.values())
                      + sum(n - 1 for n in self.dead.values()))
        if duplicates:
            notes = f"{notes}; {self.explain_duplicates()}"
        copies = Counter(job for job, _partition, _offset in self.records)  # distinct records per job
        in_topic_twice = sum(n - 1 for n in copies.values())
        if in_topic_twice:
            notes = f"{notes}; {in_topic_twice} job(s) written twice to the topic (librdkafka#4953)"
        return {"scenario": self.scenario, "sent": sent, "acked": len(self.acked),
                "processed_unique": len(self.processed), "dead_lettered": len(self.dead),
                "lost": len(self.outstanding()), "duplicates": duplicates,
                "in_topic_twice": in_topic_twice,
                "seconds": round(seconds, 1), "notes": notes}


# ---- one scenario's pipeline ------------------------------------------------------------------


class Run:
    """Topics, group and services of one scenario, and its ledger.

    Services are started with JSON logs and unique topic/group names; `problems` collects
    what must fail the test besides the ledger (a crash, an exit code, a broken invariant).
    """

    def __init__(self, scenario: str, bootstrap: str, profile: Profile) -> None:
        self.scenario = scenario
        self.bootstrap = bootstrap
        self.profile = profile
        suffix = uuid.uuid4().hex[:8]
        self.topic = f"rel-{scenario}-{suffix}"
        self.dlq = f"{self.topic}.dlq"
        self.group = f"group-{self.topic}"
        self.ledger = Ledger(scenario)
        self.services: list[ServiceProcess] = []
        self.killed: set[int] = set()
        self._signalled: set[int] = set()
        self.problems: list[str] = []
        self.started = time.monotonic()
        self.row: dict[str, Any] | None = None
        self.consumer_settings: dict[str, object] = {}  # every consumer's, e.g. its concurrency

    # -- services

    def settings(self, **extra: object) -> dict[str, object]:
        return {"kafka_bootstrap_servers": self.bootstrap, "jobs_topic": self.topic,
                "dlq_topic": self.dlq, "consumer_group": self.group, "kafka_wait_timeout_s": 60,
                "shutdown_timeout_s": 10, "log_level": "INFO"} | extra

    def start(self, command: str, *args: str, **extra: object) -> ServiceProcess:
        service = ServiceProcess(command, *args, **self.settings(**extra))
        self.services.append(service)
        self.ledger.watch(service)
        return service

    @property
    def share(self) -> bool:
        """The consumers are share-group members (CONSUMER_MODE=share)."""
        return self.consumer_settings.get("consumer_mode") == "share"

    def ensure_topics(self, partitions: int = 6, replication: int = 1,
                      min_insync: int | None = None) -> None:
        admin = self.start("topic-admin", "ensure", jobs_partitions=partitions,
                           replication_factor=replication,
                           consumer_mode="share" if self.share else "group")
        code = admin.wait(120)
        assert code == 0, f"topic-admin ensure exited {code}:\n{admin.tail()}"
        if min_insync is not None:
            set_min_insync(self.bootstrap, [self.topic, self.dlq], min_insync)
        if self.share:
            set_group_config(self.bootstrap, self.group, "share.record.lock.duration.ms", SHARE_LOCK_MS)

    def consumer(self, **extra: object) -> ServiceProcess:
        return self.start("consumer", **({"handler": PACED} | self.consumer_settings | extra))

    def killable_consumer(self) -> ServiceProcess:
        """A consumer whose death the group notices within seconds. A share group's session
        timeout is the broker's (a consumer may not set it): its records come back when their
        lock ends instead."""
        return self.consumer() if self.share else self.consumer(kafka_extra_config=SHORT_SESSION)

    def producer(self, jobs: int | None = None, workers: int = 2, **extra: object) -> ServiceProcess:
        """The producer service sending `jobs` (default: the profile's) at the profile's rate;
        `jobs=0` streams until stopped."""
        jobs = self.profile.jobs if jobs is None else jobs
        per_worker = -(-jobs // workers) if jobs else 0
        rate = round(self.profile.rate / workers, 3)
        return self.start("producer", **({"producer_workers": workers, "messages_per_worker": per_worker,
                                          "produce_rate": rate} | extra))

    def running(self, command: str) -> list[ServiceProcess]:
        return [s for s in self.services if s.name == command and s.process.poll() is None]

    def kill(self, service: ServiceProcess) -> None:
        """SIGKILL: the service gets no chance to commit, flush or log."""
        self.killed.add(id(service))
        self.ledger.killed(service)
        service.kill()

    def signal_stop(self, service: ServiceProcess) -> None:
        """One SIGTERM per service, like an orchestrator (a second one during the interpreter's
        exit, after the handlers are gone, would end the process with -15)."""
        if id(service) not in self._signalled and service.process.poll() is None:
            self._signalled.add(id(service))
            service.signal(signal.SIGTERM)

    def terminate(self, service: ServiceProcess, grace_s: float = 30.0) -> int:
        """SIGTERM (once) and wait (bounded); a non-zero exit is a problem."""
        self.signal_stop(service)
        code = service.wait(grace_s)
        if code != 0:
            self.problems.append(f"{service.name} exited {code} after SIGTERM:\n{service.tail()}")
        return code

    # -- waiting on the ledger

    def processed_count(self, services: Iterable[ServiceProcess] | None = None) -> int:
        return len(self.ledger.events("job.processed", services))

    def wait_processed(self, count: int, timeout: float = 120.0,
                       services: list[ServiceProcess] | None = None) -> None:
        wait_until(lambda: self.processed_count(services) >= count, timeout,
                   f"{count} job.processed events in {self.scenario}", poll=0.2)

    def wait_acked(self, count: int, timeout: float = 120.0) -> None:
        def enough() -> bool:
            self.ledger.refresh()
            return len(self.ledger.acked) >= count
        wait_until(enough, timeout, f"{count} acknowledged jobs in {self.scenario}", poll=0.2)

    def wait_assigned(self, service: ServiceProcess, timeout: float = 60.0) -> None:
        """Until `service` owns at least one partition (a share-group member: until it joined;
        librdkafka reports no assignment to a share consumer)."""
        if self.share:
            wait_until(lambda: bool(self.ledger.events("share.joined", [service])), timeout,
                       f"{service.name} to join the share group in {self.scenario}", poll=0.2)
            return
        wait_until(lambda: any(e.get("owned") for e in self.ledger.events("partitions.assigned", [service])),
                   timeout, f"{service.name} to be assigned partitions in {self.scenario}", poll=0.2)

    def settle(self, timeout: float | None = None) -> None:
        """Until the producers have exited and every acknowledged job is done with."""
        timeout = self.profile.settle_s if timeout is None else timeout

        def done() -> bool:
            self.ledger.refresh()
            if self.running("producer"):
                return False
            if not self.running("consumer"):
                raise AssertionError(f"no consumer left running in {self.scenario}")
            return not self.ledger.outstanding()

        try:
            wait_until(done, timeout, f"every acknowledged job done with in {self.scenario}", poll=0.3)
        except AssertionError as error:
            left = sorted(self.ledger.outstanding())
            self.problems.append(f"{error}; {len(left)} outstanding, e.g. {left[:5]}")

    # -- the end

    def finish(self, notes: str = "") -> dict[str, Any]:
        """Stop what still runs (SIGTERM), check exit codes, book the row (before any assert)."""
        for service in self.services:
            if service.process.poll() is None:
                self.terminate(service)
        for service in self.services:
            code = service.process.returncode
            if id(service) not in self.killed and code not in (0, None):
                problem = f"{service.name} exited {code}"
                if not any(p.startswith(problem) for p in self.problems):
                    self.problems.append(f"{problem}:\n{service.tail()}")
        self.row = self.ledger.row(time.monotonic() - self.started, notes)
        self.row["profile"] = self.profile.name
        RESULTS.append(self.row)
        self.keep_logs()
        return self.row

    def keep_logs(self) -> None:
        """With RELIABILITY_LOG_DIR set, copy every service's output to <dir>/<scenario>/."""
        root = os.environ.get("RELIABILITY_LOG_DIR")
        if not root:
            return
        folder = Path(root) / self.scenario
        folder.mkdir(parents=True, exist_ok=True)
        for number, service in enumerate(self.services, 1):
            (folder / f"{number:02d}-{service.name}.log").write_text(service.output + service.stderr)

    def kill_everything(self) -> None:
        for service in self.services:
            service.kill()


# ---- Kafka helpers ---------------------------------------------------------------------------


def set_group_config(bootstrap: str, group: str, name: str, value: object) -> None:
    """Set one group config (KIP-848/KIP-932 group configs, e.g. a share group's record lock)."""
    entry = ConfigEntry(name, str(value), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("group", group, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def set_min_insync(bootstrap: str, topics: list[str], value: int) -> None:
    """Set min.insync.replicas on `topics` (topic-admin creates with the cluster's default)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry("min.insync.replicas", str(value), incremental_operation=AlterConfigOpType.SET)
    resources = [ConfigResource("topic", topic, incremental_configs=[entry]) for topic in topics]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)

    def applied() -> bool:
        described = admin.describe_configs([ConfigResource("topic", t) for t in topics])
        return all(f.result(timeout=30)["min.insync.replicas"].value == str(value)
                   for f in described.values())
    wait_until(applied, 30, f"min.insync.replicas={value} on {topics}", poll=0.5)


def under_replicated(bootstrap: str, replicas: int) -> list[str]:
    """Partitions (of every topic) whose ISR is smaller than `replicas`, or that have no leader."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=10)
    short = []
    for name, topic in metadata.topics.items():
        for number, partition in topic.partitions.items():
            if partition.leader < 0 or len(partition.isrs) < min(replicas, len(partition.replicas)):
                short.append(f"{name}[{number}] isr={partition.isrs}")
    return short


def wait_fully_replicated(bootstrap: str, replicas: int, timeout: float = 120.0) -> None:
    last: list[str] = []

    def full() -> bool:
        nonlocal last
        try:
            last = under_replicated(bootstrap, replicas)
        except Exception as error:  # a broker restarting: ask again
            last = [repr(error)]
            return False
        return not last
    wait_until(full, timeout, f"every partition's ISR back to {replicas} (still: {last[:5]})", poll=0.5)


class PoisonSender:
    """A background thread producing invalid messages (not jobs) to the jobs topic at a rate.

    Each has a unique key `poison-<n>`; the ledger counts it as acknowledged on its delivery
    report and as dead-lettered by that key.
    """

    @staticmethod
    def value(n: int) -> bytes | None:
        kinds: list[bytes | None] = [
            b"this is not json %d" % n,
            b'{"id": "poison-%d"}' % n,  # JSON, but not a job
            None,  # no value at all
            b'{"id": "x", "key": "k", "producer": -1, "seq": 0, "created_at": "now"}',  # ill-typed
            b"\xff\xfe\x00 binary %d" % n,
        ]
        return kinds[n % len(kinds)]

    def __init__(self, run: Run, count: int, seconds: float) -> None:
        self._run = run
        self._count = count
        self._interval = seconds / max(1, count)
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._send_all, name="poison", daemon=True)

    def start(self) -> PoisonSender:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.errors.append(f"poison sender still running after {timeout:g} s")

    def _send_all(self) -> None:
        producer = Producer({"bootstrap.servers": self._run.bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 5})
        acked: list[str] = []

        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.errors.append(error.str())
            else:
                acked.append(f"key:{(message.key() or b'').decode()}")

        started = time.monotonic()
        for n in range(self._count):
            time.sleep(max(0.0, started + n * self._interval - time.monotonic()))
            producer.produce(self._run.topic, key=f"poison-{n}", value=self.value(n),
                             on_delivery=report)
            producer.poll(0)
        left = producer.flush(60)
        if left:
            self.errors.append(f"{left} poison message(s) unacknowledged")
        with self._lock:
            self._run.ledger.test_sent += self._count
            self._run.ledger.acked.update(acked)


# ---- the scenarios ---------------------------------------------------------------------------
# Each takes a fresh Run (and the cluster it may break), does its faults, settles and books
# its row with run.finish(); the test asserts on the row and on run.problems.


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def consumer_sigkill(run: Run) -> dict[str, Any]:
    """1. A consumer killed with SIGKILL mid-stream, several times; a new one started each time.

    Each kill lands in a settled group (the previous replacement owns partitions): while a
    group rebalances, the coordinator refuses commits, which would stretch what a kill
    re-delivers beyond the 1 s commit interval this scenario measures.
    """
    profile = run.profile
    run.ensure_topics()
    for consumer in [run.killable_consumer() for _ in range(2)]:
        run.wait_assigned(consumer)
    producer = run.producer(jobs=0)
    for _ in range(profile.faults):
        victim = run.running("consumer")[0]  # the oldest
        run.wait_processed(run.processed_count([victim]) + 5, services=[victim], timeout=60)
        _pause(profile.fault_every_s)
        run.kill(victim)
        replacement = run.killable_consumer()
        run.wait_assigned(replacement, timeout=60)
    _pause(profile.fault_every_s)
    run.terminate(producer)
    run.settle()
    return run.finish(f"{profile.faults} consumers SIGKILLed")


def sigterm_during_rebalance(run: Run) -> dict[str, Any]:
    """2. Consumers stopped with SIGTERM while a rebalance is under way: each round a consumer
    joins, and the oldest is stopped either as the newcomer sends its join (even rounds) or
    once the group has started moving partitions (odd rounds)."""
    profile = run.profile
    run.ensure_topics()
    for consumer in [run.consumer() for _ in range(3)]:
        run.wait_assigned(consumer)
    producer = run.producer(jobs=0)
    run.wait_processed(int(profile.rate))
    slow_exits = []
    for round_number in range(profile.faults):
        moves_before = len(run.ledger.events("partitions.revoked")) + len(
            run.ledger.events("partitions.assigned"))
        victim = run.running("consumer")[0]
        newcomer = run.consumer()
        newcomer.wait_for("kafka.ready", timeout=60)
        if round_number % 2:
            wait_until(lambda before=moves_before: len(run.ledger.events("partitions.revoked"))
                       + len(run.ledger.events("partitions.assigned")) > before,
                       30, "the rebalance to start moving partitions", poll=0.05)
        signalled = time.monotonic()
        run.terminate(victim)
        if time.monotonic() - signalled > 12:  # SHUTDOWN_TIMEOUT_S is 10
            slow_exits.append(round(time.monotonic() - signalled, 1))
        _pause(profile.fault_every_s / 2)
    if slow_exits:
        run.problems.append(f"consumers took {slow_exits} s to stop (SHUTDOWN_TIMEOUT_S=10)")
    run.terminate(producer)
    run.settle()
    return run.finish(f"{profile.faults} consumers SIGTERMed mid-rebalance")


def _replicated_stream(run: Run) -> ServiceProcess:
    """Topics with RF 3 and min.insync.replicas 2, two consumers assigned, a continuous
    producer, and two seconds' worth of jobs processed: the 3-node scenarios' starting point.
    Returns the producer."""
    run.ensure_topics(replication=3, min_insync=2)
    for consumer in [run.consumer() for _ in range(2)]:
        run.wait_assigned(consumer)
    producer = run.producer(jobs=0)
    run.wait_processed(int(run.profile.rate * 2))
    return producer


def leader_kill(run: Run, cluster: Any) -> dict[str, Any]:
    """3. The leader of partition 0 SIGKILLed on the 3-node cluster during produce and consume
    (RF 3, min.insync.replicas 2), then started again."""
    profile = run.profile
    producer = _replicated_stream(run)
    leader = cluster.leader_node(run.topic, 0)
    try:
        cluster.kill_node(leader)
        # A new leader is elected once the controller notices (broker.session.timeout.ms, 9 s);
        # meanwhile and after, the pipeline goes on with the two others.
        moved_to = cluster.leader_node(run.topic, 0, timeout=60)
        run.wait_processed(run.processed_count() + int(profile.rate), timeout=90)
    finally:
        if not cluster.node_alive(leader):
            cluster.start_node(leader)
    wait_fully_replicated(cluster.bootstrap_servers, 3)
    run.terminate(producer)
    run.settle()
    return run.finish(f"leader of partition 0 (node {leader}) SIGKILLed, node {moved_to} took over, "
                      "node restarted")


def rolling_restart(run: Run, cluster: Any) -> dict[str, Any]:
    """4. Every broker of the 3-node cluster stopped (SIGTERM) and started again, one at a time,
    each after the previous one is back in every ISR, while jobs flow."""
    profile = run.profile
    producer = _replicated_stream(run)
    phases: list[str] = []
    for node in range(3):
        began = time.monotonic()
        try:
            cluster.stop_node(node)
            stopped = time.monotonic()
            run.wait_processed(run.processed_count() + int(profile.rate / 2), timeout=90)
        finally:
            if not cluster.node_alive(node):
                cluster.start_node(node)
        started = time.monotonic()
        wait_fully_replicated(cluster.bootstrap_servers, 3)
        phases.append(f"{stopped - began:.0f}+{started - stopped:.0f}+{time.monotonic() - started:.0f}")
    run.terminate(producer)
    run.settle()
    return run.finish(f"3 brokers restarted one by one (stop+start+ISR s: {', '.join(phases)})")


def broker_down_at_start(run: Run, start_cluster: Callable[[], Any]) -> dict[str, Any]:
    """5. topic-admin, two consumers and the producer started while the broker is down; the
    broker comes up `broker_down_s` later (the services wait up to KAFKA_WAIT_TIMEOUT_S).
    Meanwhile one more consumer and producer are stopped with SIGTERM: they must exit 0
    within SHUTDOWN_TIMEOUT_S (10 s), not wait out KAFKA_WAIT_TIMEOUT_S."""
    profile = run.profile
    waiting = {"kafka_wait_timeout_s": 120}
    admin = run.start("topic-admin", "ensure", jobs_partitions=6, **waiting)
    for _ in range(2):
        run.consumer(**waiting)
    run.producer(**waiting)
    quitters = [run.consumer(**waiting), run.producer(**waiting)]
    _pause(profile.broker_down_s / 2)
    for quitter in quitters:  # SIGTERM while it waits for the broker, not before its handlers are in
        wait_until(lambda q=quitter: bool(run.ledger.events("kafka.waiting", [q])), 60,
                   f"{quitter.name} to wait for the broker in {run.scenario}", poll=0.2)
    for quitter in quitters:
        run.signal_stop(quitter)
    signalled = time.monotonic()
    for quitter in quitters:
        run.terminate(quitter, grace_s=30)
    if time.monotonic() - signalled > 12:
        run.problems.append(f"SIGTERM while waiting for the broker took {time.monotonic() - signalled:.0f} s")
    _pause(max(0.0, profile.broker_down_s - (time.monotonic() - run.started)))
    gone = [f"{s.name} exited {s.process.returncode}" for s in run.services
            if s.process.poll() is not None and s not in quitters]
    if gone:
        run.problems.append(f"before the broker was up: {gone}")
    start_cluster()
    code = admin.wait(120)
    if code != 0:
        run.problems.append(f"topic-admin exited {code}:\n{admin.tail()}")
    run.settle()
    return run.finish(f"broker started {profile.broker_down_s:g} s after the services; "
                      "a consumer and a producer SIGTERMed meanwhile")


def broker_frozen(run: Run, cluster: Any) -> dict[str, Any]:
    """6. The only broker SIGSTOPped for `freeze_s` (longer than the consumers' 6 s session
    timeout, and than its own 9 s broker.session.timeout.ms: its controller fences it on waking)
    mid-stream, then resumed. Every consumer must be back in the group, not only the group's
    work done: a consumer left stranded while the other took every partition went unnoticed
    (consumer_service.stranded)."""
    profile = run.profile
    run.ensure_topics()
    consumers = [run.consumer(kafka_extra_config=SHORT_SESSION) for _ in range(2)]
    for consumer in consumers:
        run.wait_assigned(consumer)
    producer = run.producer(jobs=0)
    run.wait_processed(int(profile.rate * 2))
    cluster.pause_node(0)
    try:
        _pause(profile.freeze_s)
    finally:
        cluster.resume_node(0)
    before = {member: len(run.ledger.events("partitions.assigned", [member])) for member in consumers}

    def back(member: ServiceProcess) -> bool:
        since = run.ledger.events("partitions.assigned", [member])[before[member]:]
        return any(event.get("owned") for event in since)

    for number, consumer in enumerate(consumers, 1):
        wait_until(partial(back, consumer), 90,
                   f"consumer {number} to own partitions after the freeze in {run.scenario}", poll=0.2)
    run.wait_processed(run.processed_count() + int(profile.rate * 2), timeout=90)
    run.terminate(producer)
    run.settle()
    return run.finish(f"broker frozen {profile.freeze_s:g} s (session timeout 6 s)")


def poison_flood(run: Run) -> dict[str, Any]:
    """7. Invalid messages, 10% of the stream, among the producer's valid jobs."""
    profile = run.profile
    run.ensure_topics()
    for consumer in [run.consumer() for _ in range(2)]:
        run.wait_assigned(consumer)
    poison = PoisonSender(run, profile.jobs // 9, profile.stream_s).start()
    run.producer()
    poison.join(profile.stream_s + 90)
    run.problems += poison.errors
    run.settle()
    row = run.finish(f"{profile.jobs // 9} poison messages (10%)")
    in_dlq = topic_size(run.bootstrap, run.dlq)
    if in_dlq != row["dead_lettered"]:
        run.problems.append(f"{in_dlq} messages in {run.dlq}, {row['dead_lettered']} dead-lettered")
    return row


def slow_handler(run: Run) -> dict[str, Any]:
    """8. Jobs whose handler runs longer than max.poll.interval.ms (6 s) among fast ones."""
    profile = run.profile
    per_worker = -(-profile.jobs // 2)
    slow = [f"p{1 + n % 2}-m{per_worker * (n + 1) // (profile.slow_jobs + 1)}"
            for n in range(profile.slow_jobs)]
    run.ensure_topics()
    consumers = [run.consumer(kafka_extra_config="max.poll.interval.ms=6000,session.timeout.ms=6000",
                              test_slow_keys=",".join(slow), test_slow_s=8) for _ in range(2)]
    for consumer in consumers:
        run.wait_assigned(consumer)
    revokes_before = len(run.ledger.events("partitions.revoked"))
    run.producer()
    run.settle()
    revokes = run.ledger.events("partitions.revoked")[revokes_before:]
    if revokes:
        run.problems.append(f"partitions revoked during slow jobs: {revokes}")
    timed_out = [e for e in run.ledger.events("kafka.error") + run.ledger.events("kafka.client")
                 if "max.poll" in str(e.get("message", "")).lower()]
    if timed_out:
        run.problems.append(f"max.poll.interval.ms exceeded: {timed_out[:3]}")
    durations = [e["duration_ms"] for e in run.ledger.events("job.processed") if e["key"] in slow]
    if len(durations) < len(slow) or min(durations) < 8000:
        run.problems.append(f"slow jobs {slow} processed in {durations} ms")
    return run.finish(f"{len(slow)} job(s) of 8 s, max.poll.interval.ms 6 s")


def scale_1_3_1(run: Run) -> dict[str, Any]:
    """9. One consumer, then three, then one again (two stopped with SIGTERM), mid-stream."""
    profile = run.profile
    run.ensure_topics()
    first = run.consumer()
    run.wait_assigned(first)
    producer = run.producer(jobs=0)
    run.wait_processed(int(profile.rate * 2))
    second, third = run.consumer(), run.consumer()
    run.wait_assigned(second)
    run.wait_assigned(third)
    run.wait_processed(run.processed_count() + int(profile.rate * 2))
    for service in (first, second):
        run.signal_stop(service)
    for service in (first, second):
        run.terminate(service)
    run.wait_processed(run.processed_count([third]) + int(profile.rate * 2), services=[third])
    run.terminate(producer)
    run.settle()
    return run.finish("1 -> 3 -> 1 consumers")


def producer_sigkill(run: Run) -> dict[str, Any]:
    """10. The producer SIGKILLed mid-stream and a new one started for the rest."""
    profile = run.profile
    run.ensure_topics()
    for consumer in [run.consumer() for _ in range(2)]:
        run.wait_assigned(consumer)
    first = run.producer()
    run.wait_acked(profile.jobs // 3)
    run.kill(first)
    run.producer(jobs=profile.jobs // 2)
    run.settle()
    return run.finish("producer SIGKILLed at a third, restarted")


def delayed_jobs_sigkill(run: Run) -> dict[str, Any]:
    """11. Delayed jobs parked in the delay tiers while consumers are SIGKILLed and replaced
    (each kill takes a member of the jobs group and of the tiers' mover group): every job runs,
    none before its time (issue 23)."""
    profile = run.profile
    delay_s = 15 if profile.name == "short" else 60
    run.ensure_topics()
    for consumer in [run.killable_consumer() for _ in range(2)]:
        run.wait_assigned(consumer)
    submitted_at = time.time()
    submit = run.start("producer", "submit", "--delay", str(delay_s), *(["{}"] * profile.jobs))
    code = submit.wait(120)
    assert code == 0, f"producer submit exited {code}:\n{submit.tail()}"
    ids = submit.output.split()
    run.ledger.acked.update(ids)
    run.ledger.test_sent += len(ids)
    for _ in range(profile.faults):  # while the jobs wait in the tiers
        _pause(min(profile.fault_every_s, delay_s / (profile.faults + 1)))
        victim = run.running("consumer")[0]  # the oldest
        run.kill(victim)
        run.wait_assigned(run.killable_consumer(), timeout=60)
    run.settle(delay_s + profile.settle_s)
    early = [e["id"] for e in run.ledger.events("job.processed")
             if datetime.fromisoformat(e["time"]).timestamp() < submitted_at + delay_s]
    if early:
        run.problems.append(f"{len(early)} delayed job(s) processed before their time, e.g. {early[:3]}")
    row = run.finish(f"{len(ids)} jobs delayed {delay_s} s; "
                     f"{profile.faults} consumers SIGKILLed while parked")
    # Here a job processed from two records is a job whose parked copy was moved twice: a killed
    # mover's successor moves again what it moved since its last commit (at-least-once).
    row["notes"] = row["notes"].replace("written twice to the topic (librdkafka#4953)",
                                        "run twice from two copies (moved again after a SIGKILL)")
    return row


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages in `topic` (sum of high - low watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for number in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, number), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()
