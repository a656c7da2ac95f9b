"""Fixtures for the end-to-end tests: the real docker-compose.yml, run by the real Docker Compose v2.

* ``engine`` (session): Docker if one answers, else podman set up by tests/e2e/engine.py (apt
  packages, podman's own storage under the cache folder, `podman system service`), with the pinned
  Python base and Kafka image pulled, or stand-ins under localhost/jobpipe-test/ built where no
  registry answers, and the four service images built on that base. Slow once (minutes), then
  seconds. A failure FAILS the tests. The end of the run says which images it ran on.
* ``make_stack`` (function): ``make_stack(files=..., **settings)`` -> a :class:`Stack`, one compose
  project with its own name, network, volumes and free host ports; settings become the compose
  file's ``${VAR}``s. At teardown: on failure the project's logs are saved under
  build/e2e-logs/, and ``docker compose down -v`` always runs.

Every wait has a deadline (tests.service_runner.wait_until).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.engine import (
    COMPOSE_FILE,
    REPO,
    Engine,
    EngineError,
    HealthPump,
    log,
    prepare,
    remove_outside_paths,
    run,
    system_graphroot,
)
from tests.service_runner import free_port, wait_until

OVERRIDE_3_BROKERS = REPO / "deploy" / "compose.3-brokers.yml"
OVERRIDE_SECURE = REPO / "deploy" / "compose.secure.yml"
LOG_DIR = REPO / "build" / "e2e-logs"
Event = dict[str, Any]
ENGINE = pytest.StashKey[Engine]()
# Whether the system's podman storage existed before the engine was set up (test_system_storage).
SYSTEM_STORAGE_EXISTED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    started = time.monotonic()
    request.config.stash[SYSTEM_STORAGE_EXISTED] = system_graphroot().exists()
    problem = ""
    try:
        found = prepare(build=True)
    except EngineError as exc:
        problem = str(exc)
    if problem:
        remove_outside_paths(wait=30)
        pytest.fail(f"container engine not ready: {problem}", pytrace=False)
    request.config.stash[ENGINE] = found
    log(f"engine ready ({found.kind}) in {time.monotonic() - started:.0f}s")
    try:
        yield found
    finally:
        found.stop_service()
        remove_outside_paths(wait=30)  # what podman wrote outside the cache folder, if it did


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say which images the e2e tests ran on: the pinned ones, or stand-ins built here."""
    found = config.stash.get(ENGINE, None)
    if found is None:
        return
    terminalreporter.section("e2e container images")
    terminalreporter.write_line(f"engine: {found.kind}")
    for choice in found.images.values():
        terminalreporter.write_line(choice.describe())


@dataclass
class AttachedUp:
    """A foreground `docker compose up` and the lines it printed so far."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, name="attached-up", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        return list(self.lines)

    def wait(self, timeout: float) -> int:
        """Wait for `up` to end (after `stop`); killed (and the test fails) past `timeout`."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"`docker compose up` did not end within {timeout:g} s") from None
        if self._reader is not None:
            self._reader.join(10)
        return code


@dataclass
class Stack:
    """One compose project of docker-compose.yml (plus overrides) on the session's engine."""

    engine: Engine
    project: str
    files: list[Path]
    settings: dict[str, str]
    env_file: Path
    pump: HealthPump = field(init=False)
    attached: list[AttachedUp] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pump = HealthPump(self.engine, self.project)

    # ---- compose ---------------------------------------------------------------------------

    def _command(self, *args: str) -> list[str]:
        cmd = [*self.engine.compose, "--project-directory", str(REPO), "-p", self.project,
               "--env-file", str(self.env_file)]
        for file in self.files:
            cmd += ["-f", str(file)]
        return [*cmd, *args]

    def compose(self, *args: str, timeout: float = 120.0, check: bool = True, split_stderr: bool = False
                ) -> subprocess.CompletedProcess[str]:
        # A clean environment: only the engine's variables and this stack's settings reach the
        # compose file's ${VAR:-default}s, never what the caller's shell exported.
        return run(self._command(*args), timeout=timeout, check=check, split_stderr=split_stderr,
                   env=self.engine.environ(self.settings, clean=True), cwd=REPO)

    def attached_up(self, *args: str) -> AttachedUp:
        """`up` in the foreground, as a person runs it: what it prints is collected line by line."""
        self.pump.start()
        proc = subprocess.Popen(self._command("up", "--no-build", "--pull", "never", "--no-color", *args),
                                env=self.engine.environ(self.settings, clean=True), cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        up = AttachedUp(proc)
        self.attached.append(up)
        return up

    def up(self, *args: str, timeout: float = 300.0) -> None:
        """`up -d`: returns once kafka is healthy, topic-admin completed and the rest started."""
        self.pump.start()
        self.compose("up", "-d", "--no-build", "--pull", "never", *args, timeout=timeout)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180, check=False)

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """`ps -a` as dicts (Name, Service, State, ExitCode, ID, ...), sorted by name."""
        args = ["ps", "-a", "--format", "json"] + ([service] if service else [])
        text = self.compose(*args, timeout=60).stdout.strip()
        if not text:
            return []
        if text.startswith("["):
            rows: list[dict[str, Any]] = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return sorted(rows, key=lambda row: str(row["Name"]))

    def state(self, service: str) -> list[tuple[str, int]]:
        return [(str(c["State"]), int(c.get("ExitCode") or 0)) for c in self.containers(service)]

    def wait_exited(self, *services: str, timeout: float = 120.0) -> dict[str, int]:
        """Wait until every container of `services` has exited; return name -> exit code."""
        def exited() -> dict[str, int] | None:
            rows = [c for s in services for c in self.containers(s)]
            if rows and all(c["State"] == "exited" for c in rows):
                return {str(c["Name"]): int(c["ExitCode"]) for c in rows}
            return None
        result: dict[str, int] = wait_until(exited, timeout, f"{', '.join(services)} to exit", poll=1.0)
        return result

    # ---- logs and events ---------------------------------------------------------------------

    def logs(self, service: str | None = None) -> dict[str, list[str]]:
        """Log lines per container (compose's prefix, e.g. `consumer-2`)."""
        args = ["logs", "--no-color"] + ([service] if service else [])
        out: dict[str, list[str]] = {}
        for line in self.compose(*args, timeout=60).stdout.splitlines():
            prefix, sep, text = line.partition(" | ")
            if sep:
                out.setdefault(prefix.strip(), []).append(text)
        return out

    def events(self, service: str, name: str | None = None) -> dict[str, list[Event]]:
        """JSON log events (LOG_FORMAT=json) per container of `service`."""
        found: dict[str, list[Event]] = {}
        for container, lines in self.logs(service).items():
            events = found.setdefault(container, [])
            for text in lines:
                if not text.startswith("{"):
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if name is None or record.get("event") == name:
                    events.append(record)
        return found

    def processed_keys(self) -> dict[str, list[str]]:
        return {c: [e["key"] for e in events]
                for c, events in self.events("consumer", "job.processed").items()}

    def describe(self) -> dict[str, Any]:
        """`topic-admin describe --json` in a one-off container of the compose project."""
        # podman's attach now and then misses the output of a container that starts quickly
        # (stdout empty, exit 0): try again, a few times.
        for _attempt in range(4):
            proc = self.compose("run", "--rm", "--no-deps", "-T", "topic-admin", "describe", "--json",
                                timeout=120, split_stderr=True)
            with contextlib.suppress(json.JSONDecodeError):
                data: dict[str, Any] = json.loads(proc.stdout)  # results on stdout, logs on stderr
                return data
            log(f"describe printed no JSON (stdout {proc.stdout[:200]!r}); again")
        raise AssertionError(f"`topic-admin describe --json` printed no JSON:\n{proc.stdout}\n{proc.stderr}")

    def stop_container(self, name: str, timeout_s: int) -> float:
        """SIGTERM one container (not a whole service), `timeout_s` before SIGKILL; seconds taken."""
        started = time.monotonic()
        run([*self.engine.cli, "stop", "-t", str(timeout_s), name], timeout=timeout_s + 60,
            env=self.engine.environ())
        return time.monotonic() - started

    def save_logs(self, reason: str) -> Path:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        path = LOG_DIR / f"{self.project}.log"
        ps = self.compose("ps", "-a", timeout=60, check=False).stdout
        logs = self.compose("logs", "--no-color", "--timestamps", timeout=120, check=False).stdout
        health = json.dumps(self.pump.status, indent=1)
        path.write_text(f"{reason}\n\n== ps -a\n{ps}\n== healthchecks\n{health}\n\n== logs\n{logs}")
        return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def make_stack(engine: Engine, request: pytest.FixtureRequest, tmp_path: Path
               ) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(files: tuple[Path, ...] = (COMPOSE_FILE,), **settings: object) -> Stack:
        name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30]
        project = f"e2e-{name}-{uuid.uuid4().hex[:6]}"
        env_file = tmp_path / "empty.env"  # not the repo's .env: the tests set what they mean
        env_file.write_text("")
        values = {"KAFKA_HOST_PORT": str(free_port()), "KAFKA_2_HOST_PORT": str(free_port()),
                  "KAFKA_3_HOST_PORT": str(free_port()), "LOG_FORMAT": "json"}
        values |= {key.upper(): str(value) for key, value in settings.items()}
        stack = Stack(engine, project, list(files), values, env_file)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        failed = request.node.stash.get(_FAILED, True)
        for stack in made:
            try:
                if failed:
                    path = stack.save_logs(f"{request.node.nodeid} failed")
                    log(f"logs of {stack.project}: {path}")
            finally:
                stack.pump.stop()
                stack.down()
                for up in stack.attached:  # a foreground `up` ends once its containers are gone
                    with contextlib.suppress(AssertionError):
                        up.wait(30)
