#!/usr/bin/env python3
"""A real Apache Kafka (KRaft) cluster on localhost, from Maven Central jars.

Runs from the project's venv: confluent-kafka answers the readiness and leader checks.

* The Kafka version is pinned once, as ``<kafka.version>`` in ``deploy/kafka/pom.xml``;
  :func:`kafka_version` parses it from there.
* :func:`ensure_jars` copies the pom's dependencies with Maven into
  ``${KAFKA_CACHE_DIR:-$HOME/.cache/jobpipe}/kafka-<version>/libs`` (outside git). The whole
  ``kafka-<version>`` directory is built under a temporary name and renamed into place, so an
  interrupted download never leaves a half cache; a file lock serialises concurrent callers.
* :class:`LocalKafkaCluster` runs N combined broker+controller nodes (static
  ``controller.quorum.voters``), each a ``java ... kafka.Kafka server.properties`` child.

No orphan JVMs: every java child is started with ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (it dies
with the Python process, even when that is SIGKILLed), in its own session (so a terminal's
Ctrl-C reaches Python only, which then stops the cluster cleanly), and an ``atexit`` hook stops
every cluster still running. PDEATHSIG fires when the *thread* that started the child exits:
start / restart nodes from the main thread (or from a thread that outlives the cluster); a
warning is emitted otherwise.

CLI::

    python deploy/kafka/local_kafka.py run [--nodes N] [--port 9092]   # foreground, Ctrl-C stops
    python deploy/kafka/local_kafka.py fetch                           # only download the jars
    python deploy/kafka/local_kafka.py version                         # print the pinned version

Environment: ``KAFKA_CACHE_DIR`` (jar cache root), ``KAFKA_KEEP_DATA`` (keep the temporary
work dir with data and logs after stop).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

HERE = Path(__file__).resolve().parent
POM_FILE = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.yaml"

DEFAULT_START_TIMEOUT = 90.0
STOP_GRACE_SECONDS = 20.0
MIN_JAVA_MAJOR = 17

__all__ = [
    "KafkaStartError",
    "KafkaToolingMissing",
    "LocalKafkaCluster",
    "LocalKafkaError",
    "broker_api_versions",
    "cache_dir",
    "ensure_jars",
    "file_lock",
    "kafka_version",
    "wait_for_kafka",
]


class LocalKafkaError(RuntimeError):
    """Base error of this module."""


class KafkaToolingMissing(LocalKafkaError):
    """Java or Maven is not available; the message is one line naming what is missing."""


class KafkaStartError(LocalKafkaError):
    """A node failed to start (died, or the cluster did not become ready before the deadline)."""


# --------------------------------------------------------------------------- version & jars


def kafka_version(pom: Path = POM_FILE) -> str:
    """The Kafka version pinned as ``<properties><kafka.version>`` in ``pom.xml``."""
    root = ET.parse(pom).getroot()
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    element = root.find(f"{ns}properties/{ns}kafka.version")
    if element is None or not (element.text or "").strip():
        raise LocalKafkaError(f"no <properties><kafka.version> in {pom}")
    return (element.text or "").strip()


def cache_dir(version: str | None = None) -> Path:
    """``${KAFKA_CACHE_DIR:-$HOME/.cache/jobpipe}/kafka-<version>`` (holds ``libs/``)."""
    root = os.environ.get("KAFKA_CACHE_DIR") or str(Path.home() / ".cache" / "jobpipe")
    return Path(root).expanduser() / f"kafka-{version or kafka_version()}"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaToolingMissing(f"{tool} not found on PATH")
    return path


@functools.cache
def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaToolingMissing(f"java on PATH does not run ({java}: {exc})") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise KafkaToolingMissing(f"cannot tell the version of java on PATH ({java})")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x"
        major = int(match.group(2))
    return major


def _require_java() -> str:
    java = _require("java")
    major = _java_major(java)
    if major < MIN_JAVA_MAJOR:
        raise KafkaToolingMissing(
            f"java {MIN_JAVA_MAJOR}+ required for Kafka {kafka_version()}, found java {major}"
        )
    return java


def _pom_digest() -> str:
    return hashlib.sha256(POM_FILE.read_bytes()).hexdigest()


def _cache_complete(target: Path, version: str, digest: str) -> bool:
    try:
        recorded = (target / "pom.sha256").read_text().strip()
    except OSError:
        return False
    return recorded == digest and (target / "libs" / f"kafka_2.13-{version}.jar").is_file()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing): serialises concurrent set-ups."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_jars(timeout: float = 1800.0) -> Path:
    """Return the ``libs`` directory of the pinned Kafka, downloading it with Maven on first use.

    Raises :class:`KafkaToolingMissing` ("java not found on PATH" / "mvn not found on PATH")
    when a tool needed is absent: java always (the jars are useless without it, and Maven runs
    on it), mvn only when the cache is missing or stale (the cache records the pom's sha256).
    """
    _require_java()
    version = kafka_version()
    digest = _pom_digest()
    target = cache_dir(version)
    if _cache_complete(target, version, digest):
        return target / "libs"
    mvn = _require("mvn")
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f"kafka-{version}.lock"):
        if _cache_complete(target, version, digest):  # another process did it meanwhile
            return target / "libs"
        # Under the lock, leftovers of interrupted runs are stale.
        for stale in target.parent.glob(f"kafka-{version}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in target.parent.glob(f"kafka-{version}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"kafka-{version}.tmp-", dir=target.parent))
        try:
            cmd = [
                mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM_FILE),
                "dependency:copy-dependencies", f"-DoutputDirectory={tmp / 'libs'}",
            ]  # fmt: skip
            proc = _spawn(cmd, cwd=HERE, stdout=subprocess.PIPE)
            try:
                output, _ = proc.communicate(timeout=timeout)
            except BaseException:
                _kill_and_reap(proc)
                raise
            if proc.returncode != 0:
                text = output.decode(errors="replace").strip().splitlines()[-30:]
                raise LocalKafkaError(
                    f"mvn dependency:copy-dependencies failed (exit {proc.returncode}):\n" + "\n".join(text)
                )
            if not (tmp / "libs" / f"kafka_2.13-{version}.jar").is_file():
                raise LocalKafkaError(f"mvn did not produce kafka_2.13-{version}.jar")
            (tmp / "pom.sha256").write_text(digest + "\n")
            old: Path | None = None
            if target.exists():  # stale (pom changed): swap it out
                old = target.parent / f"kafka-{version}.old-{uuid.uuid4().hex[:8]}"
                target.rename(old)
            tmp.rename(target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target / "libs"


# --------------------------------------------------------------------------- child processes

_PR_SET_PDEATHSIG = 1
_prctl: Any = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
        _prctl.argtypes = [
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        _prctl.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        _prctl = None


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the forked child (before exec) asks for SIGKILL when the thread that
    started it goes away, so nothing a test run starts outlives it, even when it is killed."""

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # parent already died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _spawn(
    cmd: Sequence[str],
    *,
    cwd: Path,
    stdout: IO[bytes] | int,
) -> subprocess.Popen[bytes]:
    if threading.current_thread() is not threading.main_thread():
        warnings.warn(
            "local_kafka starts a child outside the main thread: PR_SET_PDEATHSIG will kill it "
            "when this thread exits",
            RuntimeWarning,
            stacklevel=3,
        )
    return subprocess.Popen(
        list(cmd),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # The whole point: PR_SET_PDEATHSIG must be set in the child. The hook only calls an
        # already-resolved libc function and os.getppid/os.kill (no imports, no locks).
        preexec_fn=die_with_parent(os.getpid()),  # noqa: PLW1509
        close_fds=True,
    )


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- talking to the cluster


def _parse_servers(bootstrap_servers: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for raw in bootstrap_servers.split(","):
        item = raw.strip().split("://", 1)[-1]
        if not item:
            continue
        host, _, port = item.rpartition(":")
        out.append((host.strip("[]") or "localhost", int(port)))
    if not out:
        raise ValueError(f"no servers in {bootstrap_servers!r}")
    return out


def broker_api_versions(bootstrap_servers: str, timeout: float = 60.0) -> str:
    """Kafka's own ``BrokerApiVersionsCommand`` (from the pinned kafka-tools jars) against the
    cluster: one line per broker listing each API's supported version range."""
    libs = ensure_jars()
    done = subprocess.run(
        [_require_java(), "-Xmx256m", "-cp", f"{libs}/*",
         "org.apache.kafka.tools.BrokerApiVersionsCommand", "--bootstrap-server", bootstrap_servers],
        capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or "-> ERROR" in done.stdout:
        raise LocalKafkaError(f"BrokerApiVersionsCommand failed: {done.stdout[-500:]}{done.stderr[-500:]}")
    return done.stdout


@dataclass
class _Metadata:
    brokers: dict[int, tuple[str, int]] = field(default_factory=dict)
    # (topic, partition) -> leader broker id (-1 while none)
    leaders: dict[tuple[str, int], int] = field(default_factory=dict)


def _fetch_metadata(topics: Sequence[str], timeout: float, admin: Any) -> _Metadata:
    """Brokers and partition leaders through confluent-kafka's AdminClient."""
    if not topics:
        md = admin.list_topics(timeout=timeout)
        return _Metadata(brokers={b.id: (b.host, b.port) for b in md.brokers.values()})
    result = _Metadata()
    for topic in topics:
        md = admin.list_topics(topic=topic, timeout=timeout)
        result.brokers = {b.id: (b.host, b.port) for b in md.brokers.values()}
        tmeta = md.topics.get(topic)
        if tmeta is not None and tmeta.error is None:
            for pid, pmeta in tmeta.partitions.items():
                result.leaders[(topic, pid)] = pmeta.leader
    return result


def _new_admin(bootstrap_servers: str) -> Any:
    """A quiet confluent-kafka AdminClient (the script runs from the project's venv)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(
        {
            "bootstrap.servers": bootstrap_servers,
            "log_level": 0,  # connection-refused noise while brokers come up
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 500,
            "socket.connection.setup.timeout.ms": 3000,
        }
    )


def _port_open(address: tuple[str, int], timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_kafka(bootstrap_servers: str, min_brokers: int = 1, timeout: float = 30.0) -> set[int]:
    """Wait until the cluster answers a metadata request listing >= ``min_brokers`` brokers.

    Returns the broker ids; raises :class:`TimeoutError` at the deadline.
    """
    deadline = time.monotonic() + timeout
    admin = _new_admin(bootstrap_servers)
    last: object = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"Kafka at {bootstrap_servers} did not answer a metadata request with "
                f">= {min_brokers} broker(s) within {timeout:.0f}s (last: {last})"
            )
        if any(_port_open(a) for a in _parse_servers(bootstrap_servers)):
            try:
                meta = _fetch_metadata((), min(2.0, remaining), admin)
                if len(meta.brokers) >= min_brokers:
                    return set(meta.brokers)
                last = f"{len(meta.brokers)} broker(s)"
            except Exception as exc:
                last = exc
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


# --------------------------------------------------------------------------- the cluster


def _random_cluster_id() -> str:
    """Like Kafka's Uuid.randomUuid().toString(): url-safe base64, no padding, no leading '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _free_ports(count: int) -> list[int]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_WORKDIR_PREFIX = "local-kafka-"
_OWNER_FILE = "owner.pid"


def _sweep_stale_workdirs() -> None:
    """Remove temporary workdirs left by processes that died without stopping (e.g. SIGKILL)."""
    for workdir in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*"):
        try:
            owner = int((workdir / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or kept on purpose (KAFKA_KEEP_DATA)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(workdir, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's


def _prop_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


@dataclass
class _Node:
    index: int
    port: int
    controller_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    log_handle: IO[bytes] | None = None
    paused: bool = False
    listener_ports: dict[str, int] = field(default_factory=dict)  # the extra listeners' ports

    @property
    def node_id(self) -> int:
        return self.index + 1

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "stdout.log"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tails(self) -> str:
        return (
            f"--- {self.stdout_log} (tail) ---\n{_tail(self.stdout_log)}\n"
            f"--- {self.server_log} (tail) ---\n{_tail(self.server_log)}"
        )


_LIVE: set[LocalKafkaCluster] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all_clusters() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.stop()


atexit.register(_stop_all_clusters)


class LocalKafkaCluster:
    """``nodes`` combined broker+controller Kafka nodes on 127.0.0.1 (node ids 1..N).

    Node *index* ``i`` (0-based) is broker id ``i + 1``. Use as a context manager, or call
    :meth:`start` / :meth:`stop`. Ports are free ports picked at start unless ``ports`` (broker
    ports, one per node) is given; controller ports are always picked. ``extra_properties``
    override/extend every node's server.properties; ``features`` sets feature levels at format
    time. ``workdir=None`` means a temporary
    directory removed by :meth:`stop` (kept when env ``KAFKA_KEEP_DATA`` is set); a given
    ``workdir`` is never removed (it is reused as is on a later start).

    Children are started from the calling thread: use the main thread (see module doc).
    """

    def __init__(
        self,
        nodes: int = 1,
        workdir: str | os.PathLike[str] | None = None,
        heap: str = "512m",
        *,
        extra_properties: Mapping[str, object] | None = None,
        ports: Sequence[int] | None = None,
        advertised_host: str = "127.0.0.1",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        extra_listeners: Mapping[str, str] | None = None,
        features: Mapping[str, int] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        if ports is not None and len(ports) != nodes:
            raise ValueError("ports must give one broker port per node")
        self.node_count = nodes
        self.heap = heap
        self.extra_properties: dict[str, object] = dict(extra_properties or {})
        # name -> security protocol of listeners beside PLAINTEXT (e.g. {"SECURE": "SASL_SSL"}):
        # each node gets a free port for each; configure them with `listener.name.<name>.*`
        # in extra_properties. PLAINTEXT stays the inter-broker listener.
        self.extra_listeners: dict[str, str] = {
            name.upper(): protocol for name, protocol in (extra_listeners or {}).items()}
        # feature -> level set when the storage is formatted (e.g. {"share.version": 0}: a cluster
        # without share groups, like one upgraded from Kafka 3.x); the release's defaults otherwise.
        self.features: dict[str, int] = dict(features or {})
        self.advertised_host = advertised_host
        self.start_timeout = start_timeout
        self._requested_ports = list(ports) if ports is not None else None
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._nodes: list[_Node] = []
        self._libs: Path | None = None
        self._java: str = "java"
        self._admin: Any = None
        self._lock = threading.RLock()
        self.cluster_id = _random_cluster_id()

    # -- context manager
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalKafkaCluster nodes={self.node_count} {state} {self.bootstrap_servers or ''}>"

    # -- properties
    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:port,..."`` for all nodes (empty before start)."""
        return ",".join(f"{self.advertised_host}:{n.port}" for n in self._nodes)

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def libs_dir(self) -> Path | None:
        return self._libs

    @property
    def running(self) -> bool:
        return any(n.alive() for n in self._nodes)

    @property
    def pids(self) -> list[int | None]:
        return [n.proc.pid if n.proc is not None else None for n in self._nodes]

    def listener_bootstrap(self, name: str) -> str:
        """``"127.0.0.1:port,..."`` of extra listener ``name`` on all nodes."""
        return ",".join(f"{self.advertised_host}:{n.listener_ports[name.upper()]}" for n in self._nodes)

    def node_bootstrap(self, i: int) -> str:
        return f"{self.advertised_host}:{self._node(i).port}"

    def node_pid(self, i: int) -> int | None:
        proc = self._node(i).proc
        return proc.pid if proc is not None else None

    def node_alive(self, i: int) -> bool:
        return self._node(i).alive()

    def node_log(self, i: int) -> Path:
        """The node's log4j ``server.log`` (INFO)."""
        return self._node(i).server_log

    def node_stdout_log(self, i: int) -> Path:
        """The node's stdout/stderr (WARN and above, JVM errors)."""
        return self._node(i).stdout_log

    # -- lifecycle
    def start(self) -> Self:
        """Format storage, start every node, wait until all brokers are registered."""
        with self._lock:
            if self.running:
                return self
            self._libs = ensure_jars()
            self._java = _require_java()
            self._prepare()
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self._format_all()
                for node in self._nodes:
                    self._launch(node)
                self._wait_registered(self._nodes, self.bootstrap_servers, self.start_timeout)
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """SIGTERM every node, wait up to 20 s, then SIGKILL. Idempotent."""
        with self._lock:
            self._terminate([n for n in self._nodes if n.proc is not None])
            with _LIVE_LOCK:
                _LIVE.discard(self)
            self._admin = None
            if self._workdir is not None and self._owns_workdir:
                if os.environ.get("KAFKA_KEEP_DATA"):
                    (self._workdir / _OWNER_FILE).unlink(missing_ok=True)  # not swept later
                else:
                    shutil.rmtree(self._workdir, ignore_errors=True)
                self._owns_workdir = False

    def kill_node(self, i: int, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Send ``sig`` to node ``i``; for SIGKILL/SIGTERM/SIGINT/SIGHUP wait (20 s) until it exits."""
        with self._lock:
            node = self._node(i)
            if not node.alive() or node.proc is None:
                return
            node.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                if node.paused and sig != signal.SIGKILL:
                    node.proc.send_signal(signal.SIGCONT)
                if wait:
                    node.proc.wait(timeout=STOP_GRACE_SECONDS)
                node.paused = False
                self._close_log(node)

    def stop_node(self, i: int) -> None:
        """Graceful stop of node ``i`` (SIGTERM, 20 s, then SIGKILL)."""
        with self._lock:
            self._terminate([self._node(i)])

    def start_node(self, i: int, timeout: float | None = None) -> None:
        """Restart node ``i`` (same config, ports and data dir); wait until it is registered."""
        with self._lock:
            node = self._node(i)
            if node.alive():
                raise LocalKafkaError(f"node {i} is already running")
            if self._workdir is None or not node.config.exists():
                raise LocalKafkaError("cluster was never started or its workdir is gone")
            with _LIVE_LOCK:
                _LIVE.add(self)
            self._launch(node)
            self._wait_registered([node], self.node_bootstrap(i), timeout or self.start_timeout)

    def pause_node(self, i: int) -> None:
        """SIGSTOP node ``i`` (a hung broker: sockets stay open, nothing answers)."""
        with self._lock:
            node = self._node(i)
            if node.alive() and node.proc is not None:
                node.proc.send_signal(signal.SIGSTOP)
                node.paused = True

    def resume_node(self, i: int) -> None:
        """SIGCONT node ``i``."""
        with self._lock:
            node = self._node(i)
            if node.alive() and node.proc is not None:
                node.proc.send_signal(signal.SIGCONT)
            node.paused = False

    def leader_node(self, topic: str, partition: int, timeout: float = 30.0) -> int:
        """Index of the node leading ``topic``/``partition``, as the cluster's metadata says.

        Waits (up to ``timeout``) until the named leader is a running node. A paused node, or
        one killed without controlled shutdown, stays the leader in the metadata until
        ``broker.session.timeout.ms`` (default 9 s) expires: fault tests that wait for a
        failover should loop until the result changes (or lower that setting through
        ``extra_properties``).
        """
        deadline = time.monotonic() + timeout
        last: object = "no metadata"
        while True:
            live = [n for n in self._nodes if n.alive() and not n.paused]
            if live:
                try:
                    meta = _fetch_metadata([topic], 2.0, self._get_admin())
                    leader = meta.leaders.get((topic, partition), -1)
                    index = leader - 1
                    if 0 <= index < len(self._nodes) and self._nodes[index].alive():
                        return index
                    last = f"leader={leader}"
                except Exception as exc:
                    last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no live leader for {topic}[{partition}] within {timeout}s ({last})")
            time.sleep(0.2)

    # -- internals
    def _node(self, i: int) -> _Node:
        if not 0 <= i < len(self._nodes):
            raise IndexError(f"no node {i} (cluster has {len(self._nodes)} started node(s))")
        return self._nodes[i]

    def _get_admin(self) -> Any:
        if self._admin is None:
            self._admin = _new_admin(self.bootstrap_servers)
        return self._admin

    def _prepare(self) -> None:
        if self._workdir_arg is not None:
            self._workdir = self._workdir_arg.resolve()
            self._workdir.mkdir(parents=True, exist_ok=True)
            self._owns_workdir = False
        else:
            _sweep_stale_workdirs()
            self._workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
            (self._workdir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
            self._owns_workdir = True
        if self._requested_ports is not None:
            busy = [p for p in self._requested_ports if not _port_free(p)]
            if busy:
                raise KafkaStartError(f"port(s) {busy} already in use on 127.0.0.1")
            broker_ports = list(self._requested_ports)
            controller_ports = [p for p in _free_ports(self.node_count * 2) if p not in broker_ports]
            controller_ports = controller_ports[: self.node_count]
        else:
            ports = _free_ports(self.node_count * 2)
            broker_ports, controller_ports = (
                ports[: self.node_count],
                ports[self.node_count :],
            )
        self._nodes = [
            _Node(i, broker_ports[i], controller_ports[i], self._workdir / f"node-{i}")
            for i in range(self.node_count)
        ]
        extra_ports = iter(_free_ports(self.node_count * len(self.extra_listeners)))
        for node in self._nodes:
            node.listener_ports = {name: next(extra_ports) for name in self.extra_listeners}
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self._nodes)
        rf = min(3, self.node_count)
        for node in self._nodes:
            node.log_dir.mkdir(parents=True, exist_ok=True)
            node.data_dir.mkdir(parents=True, exist_ok=True)
            extra = node.listener_ports
            props: dict[str, object] = {
                "process.roles": "broker,controller",
                "node.id": node.node_id,
                "controller.quorum.voters": voters,
                "listeners": ",".join([f"PLAINTEXT://127.0.0.1:{node.port}",
                                       f"CONTROLLER://127.0.0.1:{node.controller_port}",
                                       *(f"{name}://127.0.0.1:{port}" for name, port in extra.items())]),
                "advertised.listeners": ",".join([
                    f"PLAINTEXT://{self.advertised_host}:{node.port}",
                    *(f"{name}://{self.advertised_host}:{port}" for name, port in extra.items())]),
                "inter.broker.listener.name": "PLAINTEXT",
                "controller.listener.names": "CONTROLLER",
                "listener.security.protocol.map": ",".join([
                    "CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT",
                    *(f"{name}:{protocol}" for name, protocol in self.extra_listeners.items())]),
                "log.dirs": node.data_dir,
                "num.partitions": 1,
                "offsets.topic.replication.factor": rf,
                "transaction.state.log.replication.factor": rf,
                "transaction.state.log.min.isr": 1,
                "share.coordinator.state.topic.replication.factor": rf,
                "share.coordinator.state.topic.min.isr": 1,
                # Lets a test give a share group a record lock of a second or two (default
                # minimum 15 s), so a crashed member's records come back within a test's wait.
                "group.share.min.record.lock.duration.ms": 1000,
                "min.insync.replicas": 1,
                "group.initial.rebalance.delay.ms": 0,
                "auto.create.topics.enable": False,
            }
            props.update(self.extra_properties)
            lines = [f"# written by deploy/kafka/local_kafka.py (Kafka {kafka_version()})"]
            lines += [f"{key}={_prop_value(value)}" for key, value in props.items()]
            node.config.write_text("\n".join(lines) + "\n")

    def _java_cmd(self, node: _Node, main: str, *args: str) -> list[str]:
        assert self._libs is not None
        return [
            self._java,
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={node.log_dir}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{self._libs}/*",
            main,
            *args,
        ]

    def _format_all(self) -> None:
        procs: list[tuple[_Node, subprocess.Popen[bytes], IO[bytes]]] = []
        try:
            for node in self._nodes:
                out = open(node.log_dir / "format.log", "wb")  # noqa: SIM115 - closed below
                cmd = self._java_cmd(
                    node, "kafka.tools.StorageTool",
                    "format", "-t", self.cluster_id, "-c", str(node.config), "--ignore-formatted",
                    *(arg for name, level in self.features.items()
                      for arg in ("--feature", f"{name}={level}")),
                )  # fmt: skip
                procs.append((node, _spawn(cmd, cwd=node.directory, stdout=out), out))
            deadline = time.monotonic() + self.start_timeout
            for node, proc, _ in procs:
                try:
                    rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired as exc:
                    raise KafkaStartError(f"storage format of node {node.index} timed out") from exc
                if rc != 0:
                    raise KafkaStartError(
                        f"storage format of node {node.index} failed (exit {rc}):\n"
                        + _tail(node.log_dir / "format.log")
                    )
        finally:
            for _, proc, handle in procs:
                if proc.poll() is None:
                    _kill_and_reap(proc)
                handle.close()

    def _launch(self, node: _Node) -> None:
        self._close_log(node)
        node.log_handle = open(node.stdout_log, "ab")  # noqa: SIM115 - closed in _close_log
        node.paused = False
        node.proc = _spawn(
            self._java_cmd(node, "kafka.Kafka", str(node.config)),
            cwd=node.directory,
            stdout=node.log_handle,
        )

    def _wait_registered(self, nodes: Sequence[_Node], bootstrap: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {n.node_id for n in nodes}
        admin = _new_admin(bootstrap)
        addresses = [("127.0.0.1", n.port) for n in nodes]
        last: object = "no answer yet"
        while True:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise KafkaStartError(
                        f"Kafka node {node.index} (pid {node.proc.pid}) exited with code "
                        f"{node.proc.returncode} during start\n{node.tails()}"
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tails = "\n".join(n.tails() for n in nodes)
                raise KafkaStartError(
                    f"Kafka ({bootstrap}) not ready within {timeout:.0f}s: brokers {sorted(wanted)} "
                    f"not all registered (last: {last})\n{tails}"
                )
            if all(_port_open(a) for a in addresses):
                try:
                    meta = _fetch_metadata((), min(2.0, remaining), admin)
                    if wanted <= set(meta.brokers):
                        return
                    last = f"registered brokers {sorted(meta.brokers)}"
                except Exception as exc:
                    last = exc
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def _terminate(self, nodes: Sequence[_Node]) -> None:
        running = [n for n in nodes if n.alive()]
        for node in running:
            assert node.proc is not None
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGTERM)
                if node.paused:
                    node.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for node in running:
            assert node.proc is not None
            try:
                node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_and_reap(node.proc)
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:  # pragma: no cover
                _kill_and_reap(node.proc)
            node.paused = False
            self._close_log(node)

    @staticmethod
    def _close_log(node: _Node) -> None:
        if node.log_handle is not None:
            node.log_handle.close()
            node.log_handle = None


# --------------------------------------------------------------------------- CLI


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def _cmd_run(args: argparse.Namespace) -> int:
    ports = [args.port + i for i in range(args.nodes)]
    cluster = LocalKafkaCluster(
        args.nodes,
        workdir=args.workdir,
        heap=args.heap,
        ports=ports,
        advertised_host=args.host,
        start_timeout=args.timeout,
    )
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        print(
            f"starting Apache Kafka {kafka_version()} ({args.nodes} node(s)) ...",
            flush=True,
        )
        started = time.monotonic()
        cluster.start()
        print(
            f"Kafka {kafka_version()} ready in {time.monotonic() - started:.1f}s; "
            f"workdir {cluster.workdir}\n"
            f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}\n"
            "Ctrl-C (or SIGTERM) stops it.",
            flush=True,
        )
        while True:
            dead = [i for i in range(args.nodes) if not cluster.node_alive(i)]
            if dead:
                for i in dead:
                    print(
                        f"node {i} died. {cluster.node_stdout_log(i)} (tail):\n"
                        f"{_tail(cluster.node_stdout_log(i))}\n"
                        f"{cluster.node_log(i)} (tail):\n{_tail(cluster.node_log(i))}",
                        file=sys.stderr,
                    )
                return 1
            time.sleep(1.0)
    except _Interrupted as exc:
        print(f"{exc}: stopping Kafka ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cluster.workdir is not None:
            cluster.stop()
            print("Kafka stopped.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="local_kafka.py",
        description="Apache Kafka (KRaft) from Maven Central jars.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a cluster in the foreground until Ctrl-C/SIGTERM")
    run.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    run.add_argument(
        "--port",
        type=int,
        default=9092,
        help="broker port of node 0; node i gets port+i",
    )
    run.add_argument("--host", default="localhost", help="advertised host (default localhost)")
    run.add_argument("--heap", default="512m", help="JVM -Xmx per node (default 512m)")
    run.add_argument("--workdir", default=None, help="data/log directory (default: temporary)")
    run.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, help="start deadline, s")
    sub.add_parser("fetch", help="only download the jars into the cache")
    sub.add_parser("version", help="print the pinned Kafka version")
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            print(kafka_version())
            return 0
        if args.command == "fetch":
            started = time.monotonic()
            libs = ensure_jars()
            print(f"{libs} ({time.monotonic() - started:.1f}s)")
            return 0
        return _cmd_run(args)
    except KafkaToolingMissing as exc:
        print(f"local_kafka: {exc}", file=sys.stderr)
        return 2
    except LocalKafkaError as exc:
        print(f"local_kafka: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
