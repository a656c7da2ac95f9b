"""deploy/monitoring: Prometheus' configuration and alerting rules pass promtool (check config,
check rules, and the rules' own unit tests in alerts.test.yml); the Grafana dashboard is one
screen of valid panels whose queries parse and use only metrics the services serve; compose's
`monitoring` profile wires it all up (DNS discovery of every scraped service, 127.0.0.1 only,
pinned images).

promtool is Debian's (package `prometheus`, the version the e2e tests' Prometheus stand-in
runs): found on PATH, else unpacked once from the .deb (`apt-get download`, no install, nothing
started) into ${KAFKA_CACHE_DIR:-~/.cache/jobpipe}/promtool/. If neither works the tests FAIL
with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.engine import ensure_compose

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "jobpipe.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
COMPOSE = REPO / "docker-compose.yml"
SCRAPED = ("consumer", "producer", "inmemory", "lag-exporter")
# What the services serve (tests/unit/test_metrics.py checks the list against the registry),
# plus what Prometheus makes itself.
SERVED = {"jobs_produced_total", "jobs_produce_failed_total", "jobs_processed_total", "jobs_failed_total",
          "jobs_retried_total", "jobs_dead_lettered_total", "job_processing_seconds_bucket",
          "job_end_to_end_seconds_bucket", "consumer_lag", "consumer_partitions_owned",
          "inmemory_queue_depth", "service_ready", "consumer_group_lag", "consumer_group_members",
          "consumer_group_lag_updated_timestamp_seconds", "jobs_dead_letters_waiting", "up", "ALERTS",
          "jobs_parked_total", "delayed_job_late_seconds_bucket"}
PANEL_TYPES = {"timeseries", "stat", "bargauge", "gauge", "table", "state-timeline"}
SCREEN_ROWS = 24  # grid units of 30 px: one 1080p screen under Grafana's header


def _cache() -> Path:
    return Path(os.environ.get("KAFKA_CACHE_DIR") or Path.home() / ".cache" / "jobpipe") / "promtool"


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def locate_promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    cached = sorted(_cache().glob("*/usr/bin/promtool"))
    if cached:
        return str(cached[-1])
    problems = []
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found")
    if problems:
        pytest.fail(f"promtool not found and cannot be fetched ({', '.join(problems)}): install Debian's "
                    "`prometheus` package (or put promtool on PATH)", pytrace=False)
    with tempfile.TemporaryDirectory() as work:
        proc = _run(["apt-get", "download", "prometheus"], cwd=Path(work))
        if proc.returncode != 0 and os.geteuid() == 0:  # no package lists yet on a new machine
            _run(["apt-get", "update", "-qq"], timeout=600)
            proc = _run(["apt-get", "download", "prometheus"], cwd=Path(work))
        debs = list(Path(work).glob("prometheus_*.deb"))
        if proc.returncode != 0 or not debs:
            pytest.fail(f"promtool not found, and `apt-get download prometheus` failed (exit "
                        f"{proc.returncode}): {proc.stderr.strip()[-500:]}", pytrace=False)
        target = _cache() / debs[0].stem
        partial = Path(tempfile.mkdtemp(prefix="promtool.", dir=_cache().parent if _cache().parent.exists()
                                        else None))
        unpacked = _run(["dpkg-deb", "-x", str(debs[0]), str(partial)])
        if unpacked.returncode != 0:
            pytest.fail(f"dpkg-deb -x {debs[0].name}: {unpacked.stderr.strip()[-500:]}", pytrace=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(partial), str(target))
    return str(target / "usr" / "bin" / "promtool")


@pytest.fixture(scope="session")
def promtool() -> str:
    return locate_promtool()


def check(promtool: str, *args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    proc = _run([promtool, *args], cwd=cwd, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{out}"
    return out


def test_prometheus_config_and_rules_pass_promtool(promtool: str) -> None:
    assert "SUCCESS" in check(promtool, "check", "config", "prometheus.yml")
    out = check(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS: 7 rules found" in out, out


def test_alerting_rules_fire_as_their_unit_tests_say(promtool: str) -> None:
    assert "SUCCESS" in check(promtool, "test", "rules", "alerts.test.yml")


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    rules = re.split(r"^      - alert: ", text, flags=re.MULTILINE)[1:]
    found = {rule.split()[0]: rule for rule in rules}
    assert set(found) == {"JobpipeLagGrowing", "JobpipeDeadLetters", "JobpipeProduceFailures",
                          "JobpipeConsumerReplicaDown", "JobpipeConsumerReplicaGone",
                          "JobpipeNoJobsProcessed", "JobpipeLagUnknown"}
    assert "\n        for: 5m\n" in found["JobpipeLagGrowing"]
    for name, rule in found.items():
        assert re.search(r"^          severity: (warning|critical)$", rule, re.MULTILINE), name
        assert "summary:" in rule and "description:" in rule, name


def compose_config(profile: str = "monitoring") -> dict[str, Any]:
    """`docker compose config` of docker-compose.yml with `profile` active and no variable set."""
    proc = subprocess.run([ensure_compose(), "--project-directory", str(REPO), "-f", str(COMPOSE), "config",
                           "--format", "json"], capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(Path.home()),
                               "COMPOSE_PROFILES": profile})
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_prometheus_finds_every_replica_through_compose_dns() -> None:
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    services = compose_config()["services"]
    for service in SCRAPED:
        block = (f"  - job_name: {service}\n    dns_sd_configs:\n      - names: [{service}]\n"
                 f"        type: A\n        port: 9100\n        refresh_interval: 5s\n")
        assert block in text, f"{service}: DNS discovery of every replica on port 9100"
        assert services[service]["environment"]["METRICS_PORT"] == "9100", service
    # job = the service, instance = the replica's address: no relabelling changes them.
    assert "relabel_configs" not in text
    assert re.search(r"^rule_files:\n  - alerts\.yml", text, re.MULTILINE)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def expressions() -> Iterator[tuple[str, str]]:
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_the_dashboard_is_one_screen_of_valid_panels() -> None:
    board = dashboard()
    assert board["uid"] == "jobpipe" and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["editable"] is False
    assert board["templating"] == {"list": []}
    datasource_uids = set(re.findall(r"^    uid: (\S+)$", DATASOURCES.read_text(), re.MULTILINE))
    cells: set[tuple[int, int]] = set()
    ids = set()
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"] and panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["datasource"] == {"type": "prometheus", "uid": panel["datasource"]["uid"]}
        assert panel["datasource"]["uid"] in datasource_uids
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("x", "y", "w", "h")), grid
        assert grid["x"] + grid["w"] <= 24 and grid["y"] + grid["h"] <= SCREEN_ROWS, (panel["title"], grid)
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    text = " ".join(expr for _title, expr in expressions())
    wanted = {"produced per replica and total": r"jobs_produced_total",
              "processed per replica and total": r"sum by \(instance\) \(rate\(jobs_processed_total",
              "end-to-end latency": r"job_end_to_end_seconds_bucket",
              "lag per partition": r"sum by \(topic, partition\) \(consumer_group_lag\)",
              "retries": r"jobs_retried_total", "dead letters": r"jobs_dead_lettered_total",
              "handler duration percentiles": r"histogram_quantile\(0\.99, sum by \(le\) "
                                              r"\(rate\(job_processing_seconds_bucket",
              "partitions owned per replica": r"consumer_partitions_owned",
              "up": r"\bup\{", "ready": r"service_ready",
              "parked jobs": r"jobs_parked_total", "late fires": r"delayed_job_late_seconds_bucket"}
    missing = [what for what, pattern in wanted.items() if not re.search(pattern, text)]
    assert not missing, missing


def test_dashboard_queries_parse_and_use_only_served_metrics(promtool: str, tmp_path: Path) -> None:
    """Each expression as a recording rule: `promtool check rules` parses it as PromQL."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, (_t, expr) in enumerate(expressions())]}]}
    (tmp_path / "dashboard.yml").write_text(json.dumps(rules, indent=1))  # JSON is YAML
    check(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    keywords = {"sum", "by", "rate", "histogram_quantile", "count", "or", "vector", "le", "instance",
                "topic", "partition", "job", "alertstate", "firing", "consumer", "producer", "inmemory",
                "lag", "exporter", "m", "tier"}
    for title, expr in expressions():
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r'"[^"]*"', "", expr))) - keywords
        assert names <= SERVED, (title, names - SERVED)


def test_compose_monitoring_profile() -> None:
    assert {"prometheus", "grafana", "lag-exporter"}.isdisjoint(compose_config("")["services"])
    services = compose_config()["services"]
    text = COMPOSE.read_text()
    assert "image: ${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.3}" in text
    assert re.search(r"image: \$\{GRAFANA_IMAGE:-grafana/grafana:\d+\.\d+\.\d+\}", text)
    for name in ("prometheus", "grafana"):
        assert all(port["host_ip"] == "127.0.0.1" for port in services[name]["ports"]), name
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:-" in text
    mounts = {(m["source"], m["target"], m.get("read_only", False)) for m in services["grafana"]["volumes"]}
    assert (str(MONITORING / "grafana" / "provisioning"), "/etc/grafana/provisioning", True) in mounts
    assert (str(MONITORING / "grafana" / "dashboards"), "/etc/grafana/dashboards", True) in mounts
    provider = (MONITORING / "grafana" / "provisioning" / "dashboards" / "jobpipe.yml").read_text()
    assert "      path: /etc/grafana/dashboards\n" in provider
