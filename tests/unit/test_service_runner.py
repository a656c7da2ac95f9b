"""The test harness itself: a service a test run starts dies with the run, even when the run is
killed (issue 11: consumers outlived a killed pytest, retrying a broker that had gone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.service_runner import REPO, wait_until


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_service_started_by_a_killed_test_run_dies_with_it() -> None:
    run = f"""
import sys, time
sys.path[:0] = [{str(REPO)!r}, {str(REPO / "deploy" / "kafka")!r}]
from tests.service_runner import ServiceProcess
service = ServiceProcess("consumer", kafka_bootstrap_servers="127.0.0.1:1", kafka_wait_timeout_s=120)
print(service.process.pid, flush=True)
time.sleep(120)
"""
    test_run = subprocess.Popen([sys.executable, "-c", run], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert test_run.stdout is not None
        pid = int(test_run.stdout.readline())
        assert not gone(pid), "the consumer is waiting for its broker"
    finally:
        test_run.kill()
        test_run.wait(10)
    wait_until(lambda: gone(pid), 10, f"the consumer (pid {pid}) to die with the killed test run")
