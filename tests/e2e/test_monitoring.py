"""End-to-end: `docker compose --profile monitoring up` on the real compose file.

Prometheus (the pinned prom/prometheus, or where no registry answers the stand-in built from
Debian's prometheus package: tests/e2e/engine.py) finds every replica through compose's DNS
after `--scale consumer=3`; every PromQL expression of the Grafana dashboard returns data while
the seed's jobs flow; the lag alert fires when the consumers are stopped while the producer runs,
and clears once they are back.

Test-only changes, so that it runs in minutes: the producer runs on at PRODUCE_RATE=5 per worker
(the seed's 20 jobs take 0.4 s, less than one 5 s scrape), and the alerting rules are
deploy/monitoring/prometheus/alerts.yml with every duration divided by 6 (`for: 5m` -> 50s,
`[2m]` -> 20s), mounted over the real ones by a compose override. Grafana is not started (it
cannot run here): tests/unit/test_monitoring.py checks the dashboard's JSON, and this test runs
its queries.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.engine import COMPOSE_FILE, REPO, log
from tests.service_runner import free_port, wait_until

pytestmark = pytest.mark.e2e

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "jobpipe.json"
SPEED_UP = 6


def fast_rules(path: Path) -> Path:
    """alerts.yml with every duration divided by SPEED_UP (minutes in, seconds out)."""
    text = (MONITORING / "prometheus" / "alerts.yml").read_text()
    text = re.sub(r"\bfor: (\d+)m\b", lambda m: f"for: {int(m[1]) * 60 // SPEED_UP}s", text)
    text = re.sub(r"\[(\d+)m\]", lambda m: f"[{int(m[1]) * 60 // SPEED_UP}s]", text)
    text = re.sub(r"\[(\d+)m:(\d+)s\]",  # a subquery's range and resolution
                  lambda m: f"[{int(m[1]) * 60 // SPEED_UP}s:{max(1, int(m[2]) // SPEED_UP)}s]", text)
    assert "m]" not in text and not re.search(r"for: \d+m", text), text
    path.write_text(text)
    path.chmod(0o644)
    return path


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def answers(self) -> bool:
        try:
            self.get("/api/v1/status/buildinfo")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return True

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.get("/api/v1/targets", state="active")["activeTargets"]
        return active

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def up_targets(prometheus: Prometheus) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for target in prometheus.targets():
        if target["health"] == "up":
            found.setdefault(target["labels"]["job"], []).append(target["labels"]["instance"])
    return found


def test_monitoring_profile_scrapes_every_replica_and_alerts_on_lag(make_stack: Any, tmp_path: Path) -> None:
    rules = fast_rules(tmp_path / "alerts.fast.yml")
    override = tmp_path / "monitoring.test.yml"
    override.write_text("services:\n  prometheus:\n    volumes:\n"
                        f"      - {rules}:/etc/prometheus/alerts.yml:ro\n")
    port = free_port()
    stack: Stack = make_stack(files=(COMPOSE_FILE, override), COMPOSE_PROFILES="monitoring",
                              PROMETHEUS_HOST_PORT=port, GRAFANA_HOST_PORT=free_port(),
                              MESSAGES_PER_WORKER=0, PRODUCE_RATE=5)
    # Everything but Grafana, which cannot run here.
    stack.up("--scale", "consumer=3", "kafka", "topic-admin", "consumer", "producer", "lag-exporter",
             "prometheus")
    prometheus = Prometheus(port)
    wait_until(prometheus.answers, 60, "Prometheus answering on 127.0.0.1", poll=1.0)

    # (1) Every replica, found through compose's DNS: job = the service, instance = the replica.
    def all_up() -> dict[str, list[str]] | None:
        found = up_targets(prometheus)
        ok = len(found.get("consumer", [])) == 3 and found.get("producer") and found.get("lag-exporter")
        return found if ok else None
    targets = wait_until(all_up, 120, "3 consumer replicas, the producer and the lag-exporter scraped",
                         poll=2.0)
    assert len(set(targets["consumer"])) == 3, targets
    assert all(instance.endswith(":9100") for job in ("consumer", "producer", "lag-exporter")
               for instance in targets[job]), targets
    # One partition per replica once the group has settled. The sum alone is no such sign: with
    # cooperative-sticky, two members own all 3 (2 + 1) before the third has joined, and
    # Prometheus scrapes each replica at its own moment.
    seen: list[list[float]] = []

    def one_each() -> bool:
        seen.append(sorted(float(s["value"][1])
                           for s in prometheus.query('consumer_partitions_owned{job="consumer"}')))
        return seen[-1] == [1.0, 1.0, 1.0]
    try:
        wait_until(one_each, 90, "each of the 3 replicas to own one partition", poll=2.0)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; partitions owned per replica, last seen: {seen[-3:]}") from None

    # (2) Every dashboard query returns data once the seed's jobs (and more) have flowed.
    wait_until(lambda: (r := prometheus.query('sum(jobs_processed_total{job="consumer"})'))
               and float(r[0]["value"][1]) >= 20, 90, "the seed's 20 jobs processed", poll=2.0)
    queries = dashboard_queries()

    def all_answer() -> dict[str, list[dict[str, Any]]] | None:
        results = {expr: prometheus.query(expr) for _title, expr in queries}
        empty = [expr for expr, result in results.items() if not result]
        numeric = all(not math.isnan(float(s["value"][1])) for result in results.values() for s in result)
        return results if not empty and numeric else None
    try:
        results = wait_until(all_answer, 120, "every dashboard query answering with numbers", poll=5.0)
    except AssertionError:
        report = {expr: prometheus.query(expr) for _title, expr in queries}
        raise AssertionError("dashboard queries:\n" + "\n".join(
            f"{expr}: {result}" for expr, result in report.items())) from None
    log("dashboard queries: " + "; ".join(f"{e} = {[s['value'][1] for s in r]}" for e, r in results.items()))
    processed_total = results['sum(rate(jobs_processed_total{job="consumer"}[1m]))']
    assert float(processed_total[0]["value"][1]) > 0

    # (3) Consumers stopped while the producer runs: the lag grows and the alert fires.
    assert not [a for a in prometheus.alerts("JobpipeLagGrowing") if a["state"] == "firing"]
    stack.compose("stop", "consumer", timeout=120)
    assert stack.state("producer") == [("running", 0)], "the producer must run on"

    def firing(name: str) -> list[dict[str, Any]] | None:
        found = [a for a in prometheus.alerts(name) if a["state"] == "firing"]
        return found or None
    fired = wait_until(lambda: firing("JobpipeLagGrowing"), 240, "JobpipeLagGrowing firing", poll=5.0)
    assert fired[0]["labels"]["topic"] == "jobs" and fired[0]["labels"]["group"] == "worker-group", fired
    log(f"JobpipeLagGrowing firing: {fired[0]['annotations']['description']}")
    wait_until(lambda: firing("JobpipeNoJobsProcessed"), 120, "JobpipeNoJobsProcessed firing", poll=5.0)

    # (4) Consumers back: the lag shrinks and the alert clears.
    stack.compose("start", "consumer", timeout=120)
    wait_until(lambda: not prometheus.alerts("JobpipeLagGrowing"), 240, "JobpipeLagGrowing cleared", poll=5.0)
    wait_until(lambda: not prometheus.alerts("JobpipeNoJobsProcessed"), 240, "JobpipeNoJobsProcessed cleared",
               poll=5.0)
