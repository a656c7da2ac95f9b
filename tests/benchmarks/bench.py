"""Benchmarks (issues 6 and 10): the services side by side with kcat, Kafka's own perf tools and
the seed's design in Go.

Every comparison runs in one go against the same broker, on topics made the same way (6
partitions, replication factor 1), with the same jobs:

- producer: the `producer` service, then `kcat -P`, the Go peer and Kafka's
  `ProducerPerformance`, fed the very bytes the service sent (read back from its topic). acks=all
  and linger 5 ms for all; idempotence on for all but the Go peer (kafka-go has none). Keys
  `producer_vs_kcat` and `producer_vs_go` = service msgs/s / kcat's (the Go peer's) msgs/s.
- consumer: the `consumer` service (one member, no-op handler, offsets committed after
  processing), `kcat -G` (a group member, auto-commit), the Go peer and `ConsumerPerformance`,
  each reading all of the service's jobs with a group of its own. Keys `consumer_vs_kcat`,
  `consumer_vs_go` (against the fair Go consumer below); `consumer_vs_go_raw` (no target)
  against the raw Go reference. The service, kcat and the fair Go consumer take turns
  `repeats` times; rows and keys use the median run, the report keeps each repeat's ratio and
  the spread ((highest - lowest) / median).
- the Go peer (tests/benchmarks/go_peer, built here with the machine's Go toolchain): the seed's
  design on its client, segmentio/kafka-go, set up as a Go user would for throughput. Producing:
  one kafka.Writer (Hash balancer, RequireAll, batches of up to 1,000 messages, 5 ms batch
  timeout) shared by 2 goroutines, each calling WriteMessages with 10,000 messages. Consuming,
  the fair row (`consume -handle -readers 1`): one kafka.Reader, the parallelism of one
  service member; each message decoded into a job struct with json.Unmarshal, handed to a
  no-op handler, and only then marked for the commit sent every second, as the service does.
  The raw reference: 2 kafka.Readers that decode nothing and commit what they read.
- latency: the producer at 1,000 jobs/s for 30 s, one consumer with a handler that records
  now - `created_at`; p50/p99/p99.9 over the jobs after the first second. Three runs: with
  LOG_LEVEL=WARNING and PRODUCER_LINGER_MS=0, the low-latency setting (key `e2e_p99_ms`); with
  LOG_LEVEL=WARNING and the default linger (key `e2e_p99_ms_default`); and with the defaults
  (INFO: a log line per job).
- inmemory vs a bare queue.Queue loop (tests/benchmarks/queue_baseline.py) with the same
  thread counts, capacity and job count. Key `inmemory_vs_queue`.
- scaling: 6 partitions, a handler that sleeps 5 ms per job, 1, 2 and 3 consumer processes.
  Key `scaling_1_to_3`.
- the peak RSS of every process (VmHWM, sampled while it runs and read once more at its end).

How rates are timed, and why the comparison is fair (each row's notes say it again):
- a service: from its first to its last counted job, on its /metrics counters read every
  POLL_S (50 ms), so Python's start-up and the group join are left out, as they are for the
  peers. The reads cost up to 50 ms at each end: the full profile's runs last several seconds
  (1,000,000 jobs; 2,000,000 in memory) so that is a few per cent; the short profile's runs
  last a fraction of a second and check the harness, not the speed.
- kcat -P: from process start to exit (it starts in milliseconds, and exit follows the last
  acknowledgement): its start-up counts against kcat, by tens of milliseconds in runs of
  seconds.
- kcat -G: from the first to the last chunk of its output, read by a thread of this process
  (on the same cores as everything else, like the services' scrapes): the group join is left
  out, as for the service.
- the Go peer by itself (producing: from reading the first line of the jobs file to the last
  acknowledgement; consuming: from the first message to the last, its readers starting once
  the group is stable with all of them owning partitions).
- the Java tools as they report themselves (ConsumerPerformance: its fetch rate, which leaves
  the group join out). References: they decode nothing and the producer sends no keys.
- the bare queue.Queue loop: from the first put to the last job handled, by itself.
Every run happens on the same machine, one at a time; the report records the machine (CPU
model, cores, memory, Python).

Services run with LOG_LEVEL=WARNING (no log line per job, as a high-volume deployment would
run them; kcat and the Java tools print nothing per message either), except for the last
latency run (INFO, the default).

Profiles (env BENCH_PROFILE): "short" (default; small counts, part of `make test`, checks the
harness and that nothing is lost, not the speed) and "full" (`make bench`: the issue's counts).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from tabulate import tabulate

from jobpipe.job import Job
from tests.observing import http_get, scrape
from tests.service_runner import BIN, REPO, die_with_parent, free_port, service_env, wait_until

PROFILE_ENV = "BENCH_PROFILE"
REPORT_PATH = REPO / "benchmark-report.json"
PARTITIONS = 6
POLL_S = 0.05
GO_PEER_SOURCE = Path(__file__).resolve().parent / "go_peer"
GO_PEER_BINARY = REPO / "build" / "bench" / "gopeer"  # build/ is git-ignored
GO_PRODUCER = "seed's design in Go (segmentio/kafka-go, 2 writers)"
GO_CONSUMER = "seed's design in Go (segmentio/kafka-go, 1 reader: decode, no-op handler, commit after)"
GO_CONSUMER_RAW = "seed's design in Go, raw reads (segmentio/kafka-go, 2 readers; reference)"
NOOP = "tests.handlers:noop"
# Issue 10's targets. e2e_p99_ms is taken with PRODUCER_LINGER_MS=0; e2e_p99_ms_default (the
# default linger) must be no worse than before issue 10: 13.7 ms in docs/performance.md's run of 2026-11-28.
TARGETS = {"producer_vs_kcat": (">=", 0.3), "producer_vs_go": (">=", 0.65),
           "consumer_vs_kcat": (">=", 0.9), "consumer_vs_go": (">=", 0.8),
           "inmemory_vs_queue": (">=", 0.9), "e2e_p99_ms": ("<=", 5.0),
           "e2e_p99_ms_default": ("<=", 13.7), "scaling_1_to_3": (">=", 2.5),
           # issue 11: CONSUMER_CONCURRENCY
           "concurrency_speedup": (">=", 20.0), "async_jobs_per_s": (">=", 20_000.0),
           # issue 15: CONSUMER_MODE=share
           "share_scaling_1_to_4": (">=", 3.5),
           # issue 22: share mode's own speed, and memory against docs/concurrency.md's bound
           "share_jobs_per_s": (">=", 50_000.0),
           "peak_rss_mb_mif100": ("<=", 68.1), "peak_rss_mb_mif1000": ("<=", 69.0)}
# Keys reported without a target: references that do not compare like with like.
REFERENCE_KEYS = ("consumer_vs_go_raw",)
# Same producer settings for every tool (the service's own are in jobpipe.kafka_clients).
PRODUCER_PROPS = {"acks": "all", "enable.idempotence": "true", "linger.ms": "5"}


class BenchmarkError(RuntimeError):
    """A benchmark could not be run or its outcome is wrong (jobs missing): not a slow result."""


@dataclass(frozen=True)
class Profile:
    name: str
    jobs: int  # producer and consumer comparisons
    latency_rate: int  # jobs/s
    latency_s: float
    inmemory_jobs: int
    scaling_jobs: int  # per run, 5 ms each
    async_jobs: int  # the async handler's run (the 32-slot run takes 10 x scaling_jobs)
    share_jobs: int  # one share-mode member, no-op handler
    waiting_jobs: int  # 1 KB jobs waiting while the memory row runs
    memory_jobs: int  # jobs the memory row processes (5 ms each) before it reads the peak
    repeats: int  # runs of each tool behind a headline consumer key (median, and the spread)


PROFILES = {
    "short": Profile("short", jobs=20_000, latency_rate=1000, latency_s=5, inmemory_jobs=20_000,
                     scaling_jobs=600, async_jobs=20_000, share_jobs=20_000, waiting_jobs=20_000,
                     memory_jobs=200, repeats=2),
    "full": Profile("full", jobs=1_000_000, latency_rate=1000, latency_s=30, inmemory_jobs=2_000_000,
                    scaling_jobs=3000, async_jobs=200_000, share_jobs=500_000,
                    waiting_jobs=100_000, memory_jobs=1000, repeats=3),
}


def current_profile() -> Profile:
    name = os.environ.get(PROFILE_ENV, "short").strip().lower() or "short"
    if name not in PROFILES:
        raise BenchmarkError(f"{PROFILE_ENV}={name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]


# ---- the report --------------------------------------------------------------------------------


@dataclass
class Row:
    """One tool's run in one comparison."""

    comparison: str
    tool: str
    messages: int
    seconds: float
    bytes: int = 0
    peak_rss_mb: float | None = None
    notes: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        megabytes_per_s = self.bytes / self.seconds / 1e6 if self.seconds > 0 and self.bytes else None
        return asdict(self) | {"msgs_per_s": round(self.rate),
                               "mb_per_s": round(megabytes_per_s, 2) if megabytes_per_s else None}


@dataclass
class Report:
    profile: Profile
    rows: list[Row] = field(default_factory=list)
    keys: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    # headline key -> its ratio in each repeat (the key itself is the ratio of the median rates)
    repeats: dict[str, list[float]] = field(default_factory=dict)

    def spread_pct(self, key: str) -> float | None:
        """(highest - lowest) / median of the key's repeats, in %; None with fewer than 2."""
        runs = self.repeats.get(key, [])
        if len(runs) < 2:
            return None
        return (max(runs) - min(runs)) / statistics.median(runs) * 100

    def note_rss(self, name: str, megabytes: float | None) -> None:
        if megabytes is not None:
            self.peak_rss_mb[name] = max(megabytes, self.peak_rss_mb.get(name, 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {
            **{key: round(value, 3) for key, value in self.keys.items()},
            "targets": {key: f"{op} {value:g}" for key, (op, value) in TARGETS.items()},
            "met": {key: _met(key, self.keys[key]) for key in TARGETS if key in self.keys},
            "e2e_latency_ms": self.latency_ms,
            "peak_rss_mb": self.peak_rss_mb,
            "repeats": {key: {"runs": [round(r, 3) for r in runs], "spread_pct": self.spread_pct(key)}
                        for key, runs in self.repeats.items()},
            "rows": [row.as_dict() for row in self.rows],
            "profile": self.profile.name,
            "machine": machine(),
        }

    def write(self, path: Path = REPORT_PATH) -> str:
        """Write the JSON report; return the tables for a person."""
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        rows = [[r.comparison, r.tool, r.messages, f"{r.seconds:.2f}", f"{r.rate:,.0f}",
                 f"{r.bytes / r.seconds / 1e6:.1f}" if r.bytes and r.seconds else "",
                 f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "", r.notes] for r in self.rows]
        keys = [[key, f"{self.keys[key]:.3g}", _target_text(key),
                 _yes(_met(key, self.keys[key])) if key in TARGETS else "", self._spread_text(key)]
                for key in [*TARGETS, *REFERENCE_KEYS] if key in self.keys]
        return "\n\n".join([
            tabulate(rows, headers=["comparison", "tool", "messages", "seconds", "msgs/s", "MB/s",
                                    "peak RSS MB", "notes"]),
            tabulate(keys, headers=["key", "value", "target", "met", "runs (spread)"]),
            f"profile {self.profile.name}; {machine()['summary']}",
        ])


    def _spread_text(self, key: str) -> str:
        runs, spread = self.repeats.get(key, []), self.spread_pct(key)
        if spread is None:
            return ""
        return f"{', '.join(f'{r:.3g}' for r in runs)} ({spread:.0f} %)"


def _target_text(key: str) -> str:
    if key not in TARGETS:
        return "(reference)"
    op, value = TARGETS[key]
    return f"{op} {value:g}"


def _yes(met: bool) -> str:
    return "yes" if met else "NO"


def _met(key: str, value: float) -> bool:
    op, target = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = os.cpu_count() or 0
    python = platform.python_version()
    return {"cpu": cpu, "cores": cores, "memory_gib": round(memory_gib, 1), "python": python,
            "summary": f"{cores} cores ({cpu}), {memory_gib:.0f} GiB, Python {platform.python_version()}"}


# ---- processes ------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


class Tracked:
    """A child process whose peak RSS is sampled while it runs; reaped with wait4, whose
    ru_maxrss gives the exact peak at exit."""

    def __init__(self, name: str, cmd: list[str], *, env: dict[str, str] | None = None,
                 stdin: IO[bytes] | None = None, stdout: IO[bytes] | int | None = None) -> None:
        self.name = name
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process)
        self._out_file: IO[bytes] | None = None
        if stdout is None:
            self._out_file = tempfile.TemporaryFile()  # noqa: SIM115 (idem)
            stdout = self._out_file
        self.process = subprocess.Popen(cmd, env=env, stdin=stdin, stdout=stdout, stderr=self._err, cwd=REPO,
                                        preexec_fn=die_with_parent(os.getpid()))  # noqa: PLW1509
        self.started = time.monotonic()
        self.peak_mb: float | None = None
        self.returncode: int | None = None

    def sample(self) -> bool:
        """Update the peak RSS; True while the process runs."""
        if self.returncode is not None:
            return False
        pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if pid == 0:
            self.peak_mb = max(self.peak_mb or 0.0, peak_rss_mb(self.process.pid) or 0.0)
            return True
        self.returncode = os.waitstatus_to_exitcode(status)
        self.process.returncode = self.returncode  # reaped here: Popen must not wait again
        self.peak_mb = max(self.peak_mb or 0.0, usage.ru_maxrss / 1024)
        return False

    def wait(self, timeout: float) -> int:
        wait_until(lambda: not self.sample(), timeout, f"{self.name} to exit\n{self.tail()}", poll=POLL_S)
        assert self.returncode is not None
        return self.returncode

    def stop(self, timeout: float = 30.0) -> int:
        if self.sample():
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.sample():
            self.process.kill()
            self.wait(10)

    def output(self) -> str:
        if self._out_file is None:
            return ""
        self._out_file.seek(0)
        return self._out_file.read().decode(errors="replace")

    def tail(self, lines: int = 15) -> str:
        self._err.seek(0)
        text = self.output() + self._err.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Service(Tracked):
    """A console script of this project, with METRICS_PORT on so its counters can be read."""

    def __init__(self, command: str, *args: str, **settings: object) -> None:
        self.port = free_port()
        env = service_env(**({"metrics_port": self.port, "log_level": "WARNING"} | settings))
        super().__init__(command, [str(BIN / command), *args], env=env)

    def counter(self, name: str) -> float:
        """Current value of counter `name` (e.g. jobs_processed_total); 0 before it answers."""
        return scrape(self.port, name) or 0.0

    def ready(self) -> bool:
        return http_get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)[0] == 200


def time_counter(services: list[Service], name: str, target: int, timeout: float) -> float:
    """Seconds from the first to the `target`-th count of `name`, summed over `services`."""
    first: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        total = sum(service.counter(name) for service in services)
        if total > 0 and first is None:
            first = now
        if total >= target:
            assert first is not None
            return max(now - first, POLL_S)
        for service in services:
            if not service.sample() and service.returncode not in (0, None):
                raise BenchmarkError(f"{service.name} exited {service.returncode} at {total:.0f}/{target} "
                                     f"{name}:\n{service.tail()}")
        if now >= deadline:
            raise BenchmarkError(f"{name} reached {total:.0f}/{target} in {timeout:g} s")
        time.sleep(POLL_S)


@contextmanager
def running(*processes: Tracked) -> Iterator[None]:
    """Kill whatever is still running when the block ends (stop() first inside for a clean end)."""
    try:
        yield
    finally:
        for process in processes:
            process.kill()


# ---- topics and tools -------------------------------------------------------------------------


class Kafka:
    """The broker under test, and the external tools pointed at it."""

    def __init__(self, bootstrap: str, kafka_libs: Path) -> None:
        self.bootstrap = bootstrap
        self.libs = kafka_libs
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.kcat = require_kcat()

    @cached_property
    def go_peer(self) -> str:
        """The Go peer, built once per run (the first time a comparison needs it)."""
        return build_go_peer()

    def topic(self, report: Report, purpose: str, partitions: int = PARTITIONS, **settings: object) -> str:
        """A new topic of PARTITIONS partitions, made by `topic-admin ensure` (its RSS is noted)."""
        name = f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
        admin = Service("topic-admin", "ensure", kafka_bootstrap_servers=self.bootstrap, jobs_topic=name,
                        dlq_topic=f"{name}.dlq", jobs_partitions=partitions, metrics_port=0, **settings)
        if admin.wait(120) != 0:
            raise BenchmarkError(f"topic-admin ensure {name} failed:\n{admin.tail()}")
        report.note_rss("topic-admin", admin.peak_mb)
        return name

    def end_offsets(self, topic: str) -> int:
        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-probe"})
        try:
            return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                       for p in range(PARTITIONS))
        finally:
            probe.close()

    def committed(self, topic: str, group: str) -> int:
        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            offsets = probe.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
            return sum(max(tp.offset, 0) for tp in offsets)
        finally:
            probe.close()

    def java(self, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BenchmarkError("java is not on PATH: the Java perf tools need Java 17+")
        return [java, "-Xmx1g", "-cp", f"{self.libs}/*", "-Dlog4j2.level=warn", main_class, *args]


def require_kcat() -> str:
    """kcat (Debian's 1.7.1): installed with apt-get when missing and running as root."""
    found = shutil.which("kcat")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchmarkError("kcat is not installed: run `apt-get install kcat` (Debian/Ubuntu) as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "kcat"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        if done.returncode != 0 and command[1] == "install":
            raise BenchmarkError(f"apt-get install kcat failed: {done.stderr.strip()[-500:]}")
    found = shutil.which("kcat")
    if not found:
        raise BenchmarkError("apt-get install kcat did not provide kcat")
    return found


def build_go_peer() -> str:
    """`go build` of tests/benchmarks/go_peer with the machine's Go toolchain; modules come from
    the Go module proxy (GOPROXY as set, else Go's default) and are checked against go.sum."""
    go = shutil.which("go")
    if go is None and os.access("/usr/local/go/bin/go", os.X_OK):  # the official tarball's place
        go = "/usr/local/go/bin/go"
    if go is None:
        raise BenchmarkError("go is not installed (not on PATH, nor /usr/local/go/bin/go): the Go peer row "
                             "needs Go 1.23+ and the Go module proxy")
    # A pure-Go static binary (no C compiler needed); go.mod and go.sum as committed; never a
    # toolchain download (an older Go fails here, saying which version go.mod needs).
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local",
               GOFLAGS="-mod=readonly -buildvcs=false -trimpath")
    GO_PEER_BINARY.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([go, "build", "-o", str(GO_PEER_BINARY), "."], cwd=GO_PEER_SOURCE, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"go build of {GO_PEER_SOURCE} took over 900 s") from None
    if done.returncode != 0:
        raise BenchmarkError(f"go build of {GO_PEER_SOURCE} failed (exit {done.returncode}, {go}):\n"
                             f"{(done.stdout + done.stderr).strip()[-2000:]}")
    return str(GO_PEER_BINARY)


def run_go_peer(kafka: Kafka, *args: str) -> tuple[dict[str, Any], Tracked]:
    """Run the Go peer to its end; its JSON result and the finished process (for its peak RSS)."""
    peer = Tracked(f"gopeer {args[0]}", [kafka.go_peer, *args, "-brokers", kafka.bootstrap])
    with running(peer):
        if peer.wait(900) != 0:
            raise BenchmarkError(f"gopeer {args[0]} exited {peer.returncode}:\n{peer.tail()}")
    lines = peer.output().strip().splitlines()
    try:
        return json.loads(lines[-1]), peer
    except (IndexError, json.JSONDecodeError):
        raise BenchmarkError(f"gopeer {args[0]} printed no result:\n{peer.tail()}") from None


# ---- 1. producer ---------------------------------------------------------------------------


def producer_comparison(kafka: Kafka, report: Report, workdir: Path) -> str:
    """Returns the topic the service filled first (read again by the consumer comparison).

    The service, kcat -P and the Go peer take turns `profile.repeats` times, each time into a
    new topic; rows and the headline keys use the median run, the report keeps each repeat's
    ratio."""
    jobs = report.profile.jobs
    service_s: list[float] = []
    kcat_s: list[float] = []
    go_s: list[float] = []
    peak: dict[str, float] = {}
    topic = ""
    keyed, values = workdir / "jobs.tsv", workdir / "values.txt"
    value_bytes = 0
    for repeat in range(report.profile.repeats):
        seconds, filled, service = _service_produce(kafka, report, jobs)
        service_s.append(seconds)
        if repeat == 0:
            topic = filled
            value_bytes = _dump_jobs(kafka, topic, jobs, keyed, values)
        seconds, kcat_peak = _kcat_produce(kafka, report, keyed, jobs)
        kcat_s.append(seconds)
        seconds, peer = _go_produce(kafka, report, keyed, jobs)
        go_s.append(seconds)
        for tool, megabytes in (("service", service.peak_mb), ("kcat", kcat_peak), ("go", peer.peak_mb)):
            peak[tool] = max(peak.get(tool, 0.0), megabytes or 0.0)
    runs = f"median of {report.profile.repeats}"
    median = statistics.median
    report.rows.append(Row("producer", "producer service (2 workers)", jobs, median(service_s), value_bytes,
                           peak["service"], f"{runs}; first to last acknowledgement on /metrics (read "
                           "every 50 ms); makes each job, keys, idempotence"))
    report.rows.append(Row("producer", "kcat -P (librdkafka, C)", jobs, median(kcat_s), value_bytes,
                           peak["kcat"], f"{runs}; process start to exit (its start-up counts against "
                           "it); the same bytes and keys, idempotence"))
    report.rows.append(Row("producer", GO_PRODUCER, jobs, median(go_s), value_bytes, peak["go"],
                           f"{runs}; first line read to last acknowledgement by itself; the same bytes "
                           "and keys, no idempotence (kafka-go has none)"))

    java_topic = kafka.topic(report, "produce-java")
    perf = Tracked("ProducerPerformance", kafka.java(
        "org.apache.kafka.tools.ProducerPerformance", "--topic", java_topic, "--num-records", str(jobs),
        "--payload-file", str(values), "--throughput", "-1", "--producer-props",
        f"bootstrap.servers={kafka.bootstrap}", *(f"{k}={v}" for k, v in PRODUCER_PROPS.items())))
    if perf.wait(600) != 0:
        raise BenchmarkError(f"ProducerPerformance failed:\n{perf.tail()}")
    summary = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", perf.output())
    if not summary or int(summary[-1][0]) != jobs:
        raise BenchmarkError(f"ProducerPerformance gave no summary for {jobs} records:\n{perf.tail()}")
    java_rate = float(summary[-1][1])
    report.rows.append(Row("producer", "kafka-producer-perf-test (Java)", jobs, jobs / java_rate, value_bytes,
                           perf.peak_mb, "as it reports (no keys: sticky partitioner)"))
    # A rate ratio (service msgs/s over the peer's) is the peer's seconds over the service's.
    report.keys["producer_vs_kcat"] = median(kcat_s) / median(service_s)
    report.keys["producer_vs_go"] = median(go_s) / median(service_s)
    report.repeats["producer_vs_kcat"] = [k / s for s, k in zip(service_s, kcat_s, strict=True)]
    report.repeats["producer_vs_go"] = [g / s for s, g in zip(service_s, go_s, strict=True)]
    return topic


def _service_produce(kafka: Kafka, report: Report, jobs: int) -> tuple[float, str, Service]:
    """The producer service (2 workers) into a new topic: seconds from its first to its `jobs`-th
    acknowledgement, the topic, and the finished process."""
    topic = kafka.topic(report, "produce-service")
    # Producing until stopped keeps its /metrics up: timed to the `jobs`-th acknowledgement, then
    # stopped (a few more jobs get out meanwhile; the references send exactly `jobs`).
    service = Service("producer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                      producer_workers=2, messages_per_worker=0)
    with running(service):
        seconds = time_counter([service], "jobs_produced_total", jobs, timeout=max(120.0, jobs / 2000))
        if service.stop() != 0:
            raise BenchmarkError(f"producer exited {service.returncode}:\n{service.tail()}")
    if kafka.end_offsets(topic) < jobs:
        raise BenchmarkError(f"{topic} holds {kafka.end_offsets(topic)} messages, {jobs} were acknowledged")
    report.note_rss("producer", service.peak_mb)
    return seconds, topic, service


def _dump_jobs(kafka: Kafka, topic: str, jobs: int, keyed: Path, values: Path) -> int:
    """The references send the very same bytes: the service's first `jobs` jobs, read back from
    `topic` into `keyed` (key TAB value lines) and `values` (values only). Returns the bytes of
    the values."""
    dump = Tracked("kcat -C (dump)", [kafka.kcat, "-C", "-b", kafka.bootstrap, "-t", topic, "-o", "beginning",
                                      "-c", str(jobs), "-e", "-q", "-f", "%k\t%s\n"], stdout=keyed.open("wb"))
    if dump.wait(300) != 0:
        raise BenchmarkError(f"kcat could not read {topic}:\n{dump.tail()}")
    value_bytes = 0
    with keyed.open("rb") as source, values.open("wb") as target:
        for line in source:
            value = line.split(b"\t", 1)[1]
            value_bytes += len(value) - 1
            target.write(value)
    return value_bytes


def _kcat_produce(kafka: Kafka, report: Report, keyed: Path, jobs: int) -> tuple[float, float | None]:
    """kcat -P sends `keyed` into a new topic: seconds from its start to its exit, peak RSS."""
    kcat_topic = kafka.topic(report, "produce-kcat")
    props = [arg for key, value in PRODUCER_PROPS.items() for arg in ("-X", f"{key}={value}")]
    kcat = Tracked("kcat -P", [kafka.kcat, "-P", "-b", kafka.bootstrap, "-t", kcat_topic, "-K", "\t", *props,
                               "-l", str(keyed)])
    if kcat.wait(600) != 0:
        raise BenchmarkError(f"kcat -P failed:\n{kcat.tail()}")
    kcat_seconds = time.monotonic() - kcat.started
    if kafka.end_offsets(kcat_topic) != jobs:
        raise BenchmarkError(f"kcat -P delivered {kafka.end_offsets(kcat_topic)} of {jobs}")
    return kcat_seconds, kcat.peak_mb


def _go_produce(kafka: Kafka, report: Report, keyed: Path, jobs: int) -> tuple[float, Tracked]:
    """The Go peer sends `keyed` into a new topic: its own seconds, and the finished process."""
    go_topic = kafka.topic(report, "produce-go")
    result, peer = run_go_peer(kafka, "produce", "-topic", go_topic, "-file", str(keyed), "-writers", "2",
                               "-per-write", "10000")
    if result["messages"] != jobs or kafka.end_offsets(go_topic) != jobs:
        raise BenchmarkError(f"gopeer produce sent {result['messages']} and delivered "
                             f"{kafka.end_offsets(go_topic)} of {jobs}")
    return float(result["seconds"]), peer


# ---- 2. consumer ---------------------------------------------------------------------------


def consumer_comparison(kafka: Kafka, report: Report, topic: str, value_bytes: int) -> None:
    """Every tool reads all of `topic` (the producer service's jobs), each time with a group of
    its own. The service, kcat -G and the fair Go consumer run `profile.repeats` times, taking
    turns (a slow spell of the shared machine hits each of them); their rows and the headline
    keys use the median run, and the report keeps every repeat's ratio (the spread)."""
    jobs = kafka.end_offsets(topic)
    value_bytes = value_bytes * jobs // report.profile.jobs
    service_s: list[float] = []
    kcat_s: list[float] = []
    go_s: list[float] = []
    peak: dict[str, float] = {}
    for _ in range(report.profile.repeats):
        seconds, service = _service_consume(kafka, topic, jobs)
        service_s.append(seconds)
        report.note_rss("consumer", service.peak_mb)
        seconds, kcat_peak = _kcat_consume(kafka, topic, jobs)
        kcat_s.append(seconds)
        seconds, peer = _go_consume(kafka, topic, jobs, handle=True)
        go_s.append(seconds)
        for tool, megabytes in (("service", service.peak_mb), ("kcat", kcat_peak), ("go", peer.peak_mb)):
            peak[tool] = max(peak.get(tool, 0.0), megabytes or 0.0)
    runs = f"median of {report.profile.repeats}"
    median = statistics.median
    report.rows.append(Row("consumer", "consumer service (1 worker, no-op handler)", jobs, median(service_s),
                           value_bytes, peak["service"],
                           f"{runs}; first to last processed on /metrics (read every 50 ms); decodes, "
                           "handles, commits after handling"))
    report.rows.append(Row("consumer", "kcat -G (librdkafka, C)", jobs, median(kcat_s), value_bytes,
                           peak["kcat"], f"{runs}; first to last output chunk (a reading thread); "
                           "no decoding, auto-commit of what it read"))
    report.rows.append(Row("consumer", GO_CONSUMER, jobs, median(go_s), value_bytes, peak["go"],
                           f"{runs}; first to last message by itself (group join left out); "
                           "json.Unmarshal into a job, no-op handler, commit after (1 s)"))

    raw_s, raw_peer = _go_consume(kafka, topic, jobs, handle=False)
    report.rows.append(Row("consumer", GO_CONSUMER_RAW, jobs, raw_s, value_bytes, raw_peer.peak_mb,
                           "first to last message by itself; raw bytes, commits as it reads: not the "
                           "same work (key consumer_vs_go_raw)"))

    perf = Tracked("ConsumerPerformance", kafka.java(
        "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", kafka.bootstrap, "--topic", topic,
        "--messages", str(jobs), "--group", f"bench-java-{uuid.uuid4().hex[:8]}", "--hide-header"))
    if perf.wait(600) != 0:
        raise BenchmarkError(f"ConsumerPerformance failed:\n{perf.tail()}")
    lines = [line for line in perf.output().splitlines() if line.count(",") >= 9]
    if not lines:
        raise BenchmarkError(f"ConsumerPerformance printed no result:\n{perf.tail()}")
    fields = [part.strip() for part in lines[-1].split(",")]
    consumed, fetch_rate = int(fields[4]), float(fields[9])
    if consumed < jobs:
        raise BenchmarkError(f"ConsumerPerformance read {consumed} of {jobs}")
    report.rows.append(Row("consumer", "kafka-consumer-perf-test (Java)", jobs, jobs / fetch_rate,
                           value_bytes, perf.peak_mb, "its fetch rate (group join left out); no decoding"))
    # A rate ratio (service msgs/s over the peer's) is the peer's seconds over the service's.
    report.keys["consumer_vs_kcat"] = median(kcat_s) / median(service_s)
    report.keys["consumer_vs_go"] = median(go_s) / median(service_s)
    report.keys["consumer_vs_go_raw"] = raw_s / median(service_s)
    report.repeats["consumer_vs_kcat"] = [k / s for s, k in zip(service_s, kcat_s, strict=True)]
    report.repeats["consumer_vs_go"] = [g / s for s, g in zip(service_s, go_s, strict=True)]


def _service_consume(kafka: Kafka, topic: str, jobs: int) -> tuple[float, Service]:
    """One consumer service member (no-op handler) through all of `topic`; seconds from its
    first to its last processed job, and the finished process."""
    group = f"bench-consumer-{uuid.uuid4().hex[:8]}"
    service = Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                      dlq_topic=f"{topic}.dlq", consumer_group=group, handler=NOOP)
    with running(service):
        seconds = time_counter([service], "jobs_processed_total", jobs, timeout=max(120.0, jobs / 1000))
        wait_until(lambda: kafka.committed(topic, group) == jobs, 30, "the consumer's final commit")
        if service.stop() != 0:
            raise BenchmarkError(f"consumer exited {service.returncode}:\n{service.tail()}")
    return seconds, service


def _go_consume(kafka: Kafka, topic: str, jobs: int, *, handle: bool) -> tuple[float, Tracked]:
    """The Go peer through all of `topic`: with `handle`, one reader that decodes each job, runs
    a no-op handler and commits after (the service member's work and parallelism); without,
    the raw reference (2 readers, bytes only). Its own seconds, and the finished process."""
    group = f"bench-go-{uuid.uuid4().hex[:8]}"
    how = ["-readers", "1", "-handle"] if handle else ["-readers", "2"]
    result, peer = run_go_peer(kafka, "consume", "-topic", topic, "-group", group, "-messages", str(jobs),
                               *how)
    if result["messages"] != jobs or kafka.committed(topic, group) != jobs:
        raise BenchmarkError(f"gopeer consume {' '.join(how)} read {result['messages']} of {jobs} and "
                             f"committed {kafka.committed(topic, group)}")
    return float(result["seconds"]), peer


def _kcat_consume(kafka: Kafka, topic: str, jobs: int) -> tuple[float, float | None]:
    """kcat as a group member to the end of every partition; timed on its output lines."""
    group = f"bench-kcat-{uuid.uuid4().hex[:8]}"
    kcat = Tracked("kcat -G", [kafka.kcat, "-b", kafka.bootstrap, "-G", group, "-o", "beginning", "-e", "-q",
                               "-f", "%k\t%s\n", topic], stdout=subprocess.PIPE)
    assert kcat.process.stdout is not None
    stream = kcat.process.stdout
    lines = 0
    first = last = 0.0
    outcome: dict[str, BaseException] = {}

    def read() -> None:
        nonlocal lines, first, last
        try:
            while chunk := stream.read1(1 << 20):
                now = time.monotonic()
                first = first or now
                lines += chunk.count(b"\n")
                last = now
        except BaseException as error:  # reported by the caller
            outcome["error"] = error

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with running(kcat):
        if kcat.wait(600) != 0:
            raise BenchmarkError(f"kcat -G failed:\n{kcat.tail()}")
        reader.join(30)
    if "error" in outcome or lines != jobs:
        raise BenchmarkError(f"kcat -G wrote {lines} of {jobs} messages {outcome or ''}")
    return max(last - first, POLL_S), kcat.peak_mb


# ---- 3. end-to-end latency ----------------------------------------------------------------


@dataclass(frozen=True)
class LatencyRun:
    log_level: str
    linger_ms: int | None  # PRODUCER_LINGER_MS; None: the producer's default
    key: str | None  # the report key given its p99, if any

    @property
    def label(self) -> str:
        linger = "" if self.linger_ms is None else f" PRODUCER_LINGER_MS={self.linger_ms}"
        return f"LOG_LEVEL={self.log_level}{linger}"


LATENCY_RUNS = (LatencyRun("WARNING", None, "e2e_p99_ms_default"),
                LatencyRun("WARNING", 0, "e2e_p99_ms"),  # the documented low-latency setting
                LatencyRun("INFO", None, None))


def latency(kafka: Kafka, report: Report, workdir: Path, run: LatencyRun) -> None:
    """Produce-to-processed latency with both services at `run.log_level` and the producer's
    linger at `run.linger_ms`. The keys come from the WARNING runs; the INFO run (a JSON line
    per job from each service, flushed to a file) is booked beside them: those writes stall the
    pipeline now and then on this machine."""
    profile = report.profile
    jobs = int(profile.latency_rate * profile.latency_s)
    topic = kafka.topic(report, "latency")
    record = workdir / f"latency-{run.log_level}-{run.linger_ms}.txt"
    group = f"bench-latency-{uuid.uuid4().hex[:8]}"
    consumer = Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                       dlq_topic=f"{topic}.dlq", consumer_group=group, log_level=run.log_level,
                       handler="tests.handlers:record_latency", bench_latency_file=record)
    linger_setting = {} if run.linger_ms is None else {"producer_linger_ms": run.linger_ms}
    producer = Service("producer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                       producer_workers=1, messages_per_worker=jobs, produce_rate=profile.latency_rate,
                       log_level=run.log_level, **linger_setting)
    with running(consumer, producer):
        wait_until(consumer.ready, 60, "the latency consumer to join its group")
        # Joined is not enough: on a topic this new the first assignment can be empty, and the
        # partitions come with the next metadata refresh (seen: 5 s of backlog at the start).
        wait_until(partial(_assignment_settled, kafka, group, 1), 60, "the consumer to own every partition")

        def recorded() -> bool:
            for service in (consumer, producer):
                if not service.sample() and service.returncode:
                    raise BenchmarkError(f"{service.name} exited {service.returncode}:\n{service.tail()}")
            return record.exists() and record.read_bytes().count(b"\n") >= jobs

        wait_until(recorded, profile.latency_s * 3 + 60, f"{jobs} recorded latencies")
        if producer.wait(60) != 0 or consumer.stop() != 0:
            raise BenchmarkError(f"latency run failed:\n{producer.tail()}\n{consumer.tail()}")
    samples = [line.split() for line in record.read_text().splitlines()]
    # Jobs of the first second are left out (connections and the topic's metadata are set up then).
    warm = sorted(float(ms) for seq, ms in samples if int(seq) >= profile.latency_rate)
    cuts = statistics.quantiles(warm, n=1000, method="inclusive")
    measured = {"p50": round(statistics.median(warm), 2), "p99": round(cuts[989], 2),
                "p99.9": round(cuts[998], 2), "max": round(warm[-1], 2), "jobs": len(warm),
                "rate_per_s": profile.latency_rate}
    report.latency_ms[run.label] = measured
    if run.key:
        report.keys[run.key] = cuts[989]
    linger = "default linger" if run.linger_ms is None else f"linger {run.linger_ms} ms"
    report.rows.append(Row("latency", f"producer -> consumer at {profile.latency_rate}/s, {run.log_level}, "
                                      f"{linger}", jobs,
                           profile.latency_s, 0, consumer.peak_mb,
                           f"p50 {measured['p50']} ms, p99 {measured['p99']} ms, "
                           f"p99.9 {measured['p99.9']} ms"))
    report.note_rss("consumer", consumer.peak_mb)
    report.note_rss("producer", producer.peak_mb)


# ---- 4. inmemory vs queue.Queue -----------------------------------------------------------


def inmemory_comparison(report: Report) -> None:
    jobs = report.profile.inmemory_jobs
    threads = {"producers": 2, "consumers": 2, "queue_capacity": 100}
    # Running until stopped keeps its /metrics up: timed to the `jobs`-th job processed.
    service = Service("inmemory", jobs_per_producer=0, handler=NOOP, **threads)
    with running(service):
        seconds = time_counter([service], "jobs_processed_total", jobs, timeout=max(120.0, jobs / 500))
        if service.stop() != 0:
            raise BenchmarkError(f"inmemory exited {service.returncode}:\n{service.tail()}")
    report.note_rss("inmemory", service.peak_mb)
    report.rows.append(Row("inmemory", "inmemory service (2 producers, 2 consumers)", jobs, seconds, 0,
                           service.peak_mb, "first to last processed on /metrics (read every 50 ms)"))

    shape = [str(threads[k]) for k in ("producers", "consumers", "queue_capacity")]
    command = [sys.executable, "-m", "tests.benchmarks.queue_baseline", str(jobs), *shape]
    bare = Tracked("queue baseline", command,
                   env=service_env())
    if bare.wait(600) != 0:
        raise BenchmarkError(f"queue baseline failed:\n{bare.tail()}")
    result = json.loads(bare.output().strip().splitlines()[-1])
    if result["processed"] != jobs:
        raise BenchmarkError(f"queue baseline processed {result['processed']} of {jobs}")
    report.rows.append(Row("inmemory", "bare queue.Queue loop (same threads)", jobs, result["seconds"], 0,
                           bare.peak_mb, "first put to last processed, by itself"))
    report.keys["inmemory_vs_queue"] = result["seconds"] / seconds


# ---- 5. scaling ------------------------------------------------------------------------------


def scaling(kafka: Kafka, report: Report) -> None:
    jobs = report.profile.scaling_jobs
    rates: dict[int, float] = {}
    for count in (1, 2, 3):
        topic = kafka.topic(report, f"scale{count}")
        group = f"bench-scale-{uuid.uuid4().hex[:8]}"
        consumers = [Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                             dlq_topic=f"{topic}.dlq", consumer_group=group, handler="tests.handlers:paced",
                             test_handler_sleep_ms=5) for _ in range(count)]
        with running(*consumers):
            for consumer in consumers:
                wait_until(consumer.ready, 60, f"consumer {consumers.index(consumer) + 1} of {count} to join")
            wait_until(partial(_assignment_settled, kafka, group, count), 60,
                       f"{PARTITIONS} partitions spread over {count} consumer(s)")
            producer = Service("producer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                               producer_workers=1, messages_per_worker=jobs)
            with running(producer):
                seconds = time_counter(consumers, "jobs_processed_total", jobs, timeout=jobs * 0.01 + 60)
                producer.wait(60)
            for consumer in consumers:
                if consumer.stop() != 0:
                    raise BenchmarkError(f"consumer exited {consumer.returncode}:\n{consumer.tail()}")
        rates[count] = jobs / seconds
        report.rows.append(Row("scaling", f"{count} consumer process(es), 5 ms handler", jobs, seconds, 0,
                               max(c.peak_mb or 0 for c in consumers), "first to last processed"))
    report.keys["scaling_1_to_3"] = rates[3] / rates[1]


@dataclass(frozen=True)
class ConcurrencyRun:
    label: str
    settings: dict[str, object]
    jobs: int


def concurrency(kafka: Kafka, report: Report) -> None:
    """One consumer process on 6 partitions of jobs with distinct keys, a handler that waits
    5 ms: jobs/s at CONSUMER_CONCURRENCY 1, at 32 (ORDERING=key) and with an `async def`
    handler at 256. The jobs are produced first, so only the consumer is measured."""
    profile = report.profile
    paced = {"handler": "tests.handlers:paced", "test_handler_sleep_ms": 5}
    runs = (ConcurrencyRun("1 slot, 5 ms handler", paced | {"consumer_concurrency": 1}, profile.scaling_jobs),
            ConcurrencyRun("32 slots, ORDERING=key, 5 ms handler",
                           paced | {"consumer_concurrency": 32, "ordering": "key"},
                           profile.scaling_jobs * 10),
            ConcurrencyRun("async def, 256 slots, asyncio.sleep(0.005)",
                           {"handler": "tests.handlers:async_sleep", "consumer_concurrency": 256,
                            "max_in_flight": 4096}, profile.async_jobs))
    topic = kafka.topic(report, "concurrency")
    total = max(run.jobs for run in runs)
    producer = Service("producer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                       producer_workers=2, messages_per_worker=total // 2)
    with running(producer):
        if producer.wait(600) != 0:
            raise BenchmarkError(f"producer exited {producer.returncode}:\n{producer.tail()}")
    rates: list[float] = []
    for run in runs:
        consumer = Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                           dlq_topic=f"{topic}.dlq", consumer_group=f"bench-conc-{uuid.uuid4().hex[:8]}",
                           **run.settings)
        with running(consumer):
            seconds = time_counter([consumer], "jobs_processed_total", run.jobs,
                                   timeout=run.jobs * 0.006 + 60)
            if consumer.stop() != 0:
                raise BenchmarkError(f"consumer exited {consumer.returncode}:\n{consumer.tail()}")
        rates.append(run.jobs / seconds)
        report.rows.append(Row("concurrency", f"1 consumer process, {run.label}", run.jobs, seconds, 0,
                               consumer.peak_mb, "first to last processed"))
    report.keys["concurrency_speedup"] = rates[1] / rates[0]
    report.keys["async_jobs_per_s"] = rates[2]


def share_scaling(kafka: Kafka, report: Report) -> None:
    """One partition, a handler that waits 5 ms, 1 then 4 consumer processes in share mode:
    jobs/s of 4 over 1 (a consumer group gets 1.0 here: one partition, one member). The jobs
    are produced first, one per record batch: a share group hands out whole batches, and jobs
    produced at a steady pace come one per batch."""
    jobs = report.profile.scaling_jobs
    rates: dict[int, float] = {}
    for count in (1, 4):
        group = f"bench-share-{uuid.uuid4().hex[:8]}"
        topic = kafka.topic(report, f"share{count}", partitions=1, consumer_mode="share",
                            consumer_group=group)
        producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 0})
        for seq in range(jobs):
            producer.produce(topic, key=f"p1-m{seq}", value=Job.new(1, seq).to_bytes())
            producer.flush(10)
        consumers = [Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                             dlq_topic=f"{topic}.dlq", consumer_group=group, consumer_mode="share",
                             handler="tests.handlers:paced", test_handler_sleep_ms=5) for _ in range(count)]
        with running(*consumers):
            seconds = time_counter(consumers, "jobs_processed_total", jobs, timeout=jobs * 0.01 + 60)
            for consumer in consumers:
                if consumer.stop() != 0:
                    raise BenchmarkError(f"consumer exited {consumer.returncode}:\n{consumer.tail()}")
        rates[count] = jobs / seconds
        report.rows.append(Row("share", f"{count} consumer process(es), share mode, 1 partition, "
                               "5 ms handler", jobs, seconds, 0, max(c.peak_mb or 0 for c in consumers),
                               "first to last processed"))
    report.keys["share_scaling_1_to_4"] = rates[4] / rates[1]


def _assignment_settled(kafka: Kafka, group: str, members: int) -> bool:
    """Every partition owned, by exactly `members` members (each with some)."""
    described = kafka.admin.describe_consumer_groups([group])[group].result(timeout=10)
    owned = [{tp.partition for tp in member.assignment.topic_partitions} for member in described.members]
    return (len(owned) == members and all(owned) and sum(len(o) for o in owned) == PARTITIONS
            and len(set().union(*owned)) == PARTITIONS)



def share_throughput(kafka: Kafka, report: Report) -> None:
    """One consumer process in share mode, no-op handler, 6 partitions: jobs/s from the first to
    the last processed. The jobs are produced first, in full record batches (linger 5 ms), so
    the member reads batches as a consumer group would."""
    jobs = report.profile.share_jobs
    group = f"bench-share-noop-{uuid.uuid4().hex[:8]}"
    topic = kafka.topic(report, "share-noop", consumer_mode="share", consumer_group=group)
    _produce_jobs(kafka, topic, jobs, payload_bytes=0)
    consumer = Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                       dlq_topic=f"{topic}.dlq", consumer_group=group, consumer_mode="share", handler=NOOP)
    with running(consumer):
        seconds = time_counter([consumer], "jobs_processed_total", jobs, timeout=jobs / 2000 + 60)
        if consumer.stop() != 0:
            raise BenchmarkError(f"consumer exited {consumer.returncode}:\n{consumer.tail()}")
    report.keys["share_jobs_per_s"] = jobs / seconds
    report.rows.append(Row("share", "1 consumer process, share mode, 6 partitions, no-op handler", jobs,
                           seconds, 0, consumer.peak_mb, "first to last processed"))


# docs/concurrency.md's memory bound: the process (about 55 MB; 60 here), librdkafka's prefetch
# of max(4 MB, 4 KB x MAX_IN_FLIGHT) capped at 64 MB plus one fetch response of that size, and
# the jobs held (MAX_IN_FLIGHT x job size).
PROCESS_MB = 60.0
WAITING_JOB_BYTES = 1024


def memory_bound_mb(max_in_flight: int, job_bytes: int = WAITING_JOB_BYTES) -> float:
    prefetch = min(max(4.0, 4 * max_in_flight / 1024), 64.0)
    return PROCESS_MB + 2 * prefetch + max_in_flight * job_bytes / 2**20


def memory(kafka: Kafka, report: Report) -> None:
    """Peak RSS of one consumer member with many 1 KB jobs waiting and a 5 ms handler, at
    MAX_IN_FLIGHT 100 and 1000 (keys peak_rss_mb_mif100 / _mif1000, against memory_bound_mb).
    Each run ends after the profile's memory_jobs (1,000 in the full profile: 5 s): by then the
    member holds its in-flight budget and librdkafka its prefetch, with most of the backlog still
    waiting on the broker."""
    topic = kafka.topic(report, "memory")
    _produce_jobs(kafka, topic, report.profile.waiting_jobs, payload_bytes=WAITING_JOB_BYTES)
    for max_in_flight in (100, 1000):
        consumer = Service("consumer", kafka_bootstrap_servers=kafka.bootstrap, jobs_topic=topic,
                           dlq_topic=f"{topic}.dlq", consumer_group=f"bench-mem-{uuid.uuid4().hex[:8]}",
                           handler="tests.handlers:paced", test_handler_sleep_ms=5,
                           max_in_flight=max_in_flight)
        with running(consumer):
            seconds = time_counter([consumer], "jobs_processed_total", report.profile.memory_jobs,
                                   timeout=120)
            if consumer.stop() != 0:
                raise BenchmarkError(f"consumer exited {consumer.returncode}:\n{consumer.tail()}")
        assert consumer.peak_mb is not None
        report.keys[f"peak_rss_mb_mif{max_in_flight}"] = consumer.peak_mb
        report.rows.append(Row("memory", f"1 consumer process, MAX_IN_FLIGHT={max_in_flight}, "
                               f"{report.profile.waiting_jobs:,} x 1 KB jobs waiting, 5 ms handler",
                               report.profile.memory_jobs,
                               seconds, 0, consumer.peak_mb,
                               f"bound {memory_bound_mb(max_in_flight):.1f} MB (docs/concurrency.md)"))


def _produce_jobs(kafka: Kafka, topic: str, jobs: int, payload_bytes: int) -> None:
    """`jobs` jobs with distinct keys, each with a payload of about `payload_bytes`."""
    filler = "x" * payload_bytes
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5, **PRODUCER_PROPS})
    for seq in range(jobs):
        job = Job.create({"pad": filler} if payload_bytes else {}, key=f"k{seq}")
        while True:
            try:
                producer.produce(topic, key=job.key, value=job.to_bytes())
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(60) != 0:
        raise BenchmarkError(f"{topic}: jobs not acknowledged within 60 s")
