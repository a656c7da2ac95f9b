"""Running the real console scripts as subprocesses and reading their JSON log events.

Every wait here has a deadline; polling a condition with a short pause is the only waiting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from local_kafka import die_with_parent  # re-exported: every child of a test run dies with it

from tests.observing import Event, wait_until  # wait_until also re-exported: imported from here

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_env(**settings: object) -> dict[str, str]:
    """The test process's environment plus JSON logs, the repo on PYTHONPATH (tests.handlers)
    and the given settings (names upper-cased)."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {"LOG_FORMAT": "json", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env |= {name.upper(): str(value) for name, value in settings.items()}
    return env


class ServiceProcess:
    """One service started as its console script; stdout (JSON events) goes to a file.

    Every service a test starts is stopped by something that runs whatever the test's outcome:
    the `pipeline` fixture for the Kafka services, or `with ServiceProcess(...) as service:`."""

    def __init__(self, command: str, *args: str, **settings: object) -> None:
        self.name = command
        out_fd, self._out_path = tempfile.mkstemp(prefix=f"{command}-", suffix=".log")
        err_fd, self._err_path = tempfile.mkstemp(prefix=f"{command}-", suffix=".err")
        self.started = time.monotonic()
        with os.fdopen(out_fd, "wb") as out, os.fdopen(err_fd, "wb") as err:
            self.process = subprocess.Popen([str(BIN / command), *args], env=service_env(**settings),
                                            stdout=out, stderr=err, cwd=REPO,
                                            preexec_fn=die_with_parent(os.getpid()))  # noqa: PLW1509

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        """Leaving the block (an assertion failed, or the test is done) kills what still runs."""
        self.kill()

    @property
    def stdout_path(self) -> Path:
        """Where the service's stdout (its JSON events) is written, for incremental readers."""
        return Path(self._out_path)

    @property
    def output(self) -> str:
        return Path(self._out_path).read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return Path(self._err_path).read_text(errors="replace")

    def events(self, name: str | None = None) -> list[Event]:
        """JSON log events, from stdout (topic-admin: from stderr, its stdout being results)."""
        found = []
        for line in self.output.splitlines() + self.stderr.splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line still being written
            if name is None or record.get("event") == name:
                found.append(record)
        return found

    def wait_for(self, name: str, count: int = 1, timeout: float = 60.0,
                 where: Callable[[Event], bool] = lambda _e: True) -> list[Event]:
        def enough() -> list[Event] | None:
            matching = [e for e in self.events(name) if where(e)]
            if len(matching) >= count:
                return matching
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode} before {count} "
                                     f"{name} event(s):\n{self.tail()}")
            return None
        return wait_until(enough, timeout, f"{count} {name} event(s) from {self.name}\n{self.tail()}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"{self.name} still running after {timeout:g} s:\n{self.tail()}") from None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def tail(self, lines: int = 15) -> str:
        return "\n".join((self.output.splitlines() + self.stderr.splitlines())[-lines:])


def run_to_end(command: str, *args: str, timeout: float = 120.0, **settings: object) -> ServiceProcess:
    """Run a service until it exits by itself (at most `timeout` s)."""
    service = ServiceProcess(command, *args, **settings)
    service.wait(timeout)
    return service
