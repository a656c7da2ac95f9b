"""deploy/helm/jobpipe, checked on paper with the real tools (no cluster runs here):

- Helm's own `lint` and `template` (Helm v4, built from its Go module at the pinned version)
  pass for each values file in deploy/helm/values/;
- every rendered object decodes strictly into the Go type its cluster reads it with
  (k8s.io/api, KEDA's v1alpha1, prometheus-operator's monitoring/v1), and KEDA trigger
  metadata against KEDA's own scaler schema: a misspelt field fails (the fixtures prove it);
- checkov finds nothing but the checks skipped, with reasons, in deploy/helm/checkov-skips.txt;
- each service's environment is exactly the fields of its pydantic settings class, and the
  rendered values pass that class;
- what the chart promises: probes, grace period above SHUTDOWN_TIMEOUT_S, non-root,
  read-only root, the KEDA ceiling at the partition count in group mode, secrets only by
  reference, the ensure hook, the alert rules of deploy/monitoring.

Building helmcheck and installing checkov happen once per machine (helm_tools.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from consumer_service.settings import ConsumerSettings
from producer_service.settings import ProducerSettings
from tests.deploy import helm_tools
from topic_admin_service.settings import TopicAdminSettings

CHART = helm_tools.HELM_DIR / "jobpipe"
VALUES = helm_tools.HELM_DIR / "values"
FIXTURES = Path(__file__).parent / "fixtures"
ALERTS = helm_tools.REPO / "deploy" / "monitoring" / "prometheus" / "alerts.yml"
SKIPS = helm_tools.HELM_DIR / "checkov-skips.txt"
# The three shapes users need, and a test-only one that sets every secret (mutual TLS).
VALUE_FILES = {"demo": VALUES / "demo.yaml", "secured": VALUES / "secured.yaml",
               "share": VALUES / "share.yaml", "mtls": FIXTURES / "values-mtls.yaml"}
SETTINGS: dict[str, type[BaseSettings]] = {
    "topic-admin": TopicAdminSettings, "consumer": ConsumerSettings, "producer": ProducerSettings,
    "lag-exporter": ConsumerSettings}
# The services' secrets: the chart passes only the files (a Secret's keys mounted read-only),
# never the values in the environment.
SECRETS = {"KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"}
SECRET_FILES = {"KAFKA_SASL_PASSWORD_FILE": "/etc/jobpipe/secrets/sasl-password",
                "KAFKA_SSL_KEY_PASSWORD_FILE": "/etc/jobpipe/secrets/ssl-key-password"}
NAMESPACE = "jobpipe"
# The first test may build helmcheck (a cold Go build: minutes on a busy 2-core machine) or wait
# for the build `make test` started in the background.
pytestmark = pytest.mark.timeout(1800)


@dataclass(frozen=True)
class Rendered:
    name: str
    manifest: Path
    objects: list[dict[str, Any]]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{self.name}: {len(found)} {kind} named *{name_suffix}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)


@pytest.fixture(scope="session")
def helmcheck() -> Path:
    return helm_tools.build_helmcheck()[0]


@pytest.fixture(scope="session")
def keda_schema(helmcheck: Path) -> Path:
    return helm_tools.keda_scalers_schema()


def helm(helmcheck: Path, *args: str) -> helm_tools.subprocess.CompletedProcess[str]:
    return helm_tools.run([str(helmcheck), "helm", *args], cwd=helm_tools.REPO)


def template(helmcheck: Path, *args: str) -> helm_tools.subprocess.CompletedProcess[str]:
    return helm(helmcheck, "template", "jobpipe", str(CHART), "--namespace", NAMESPACE, *args)


@pytest.fixture(scope="session")
def rendered(helmcheck: Path, keda_schema: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Rendered]:
    """Each values file rendered by `helm template` and decoded strictly (the decoding must pass)."""
    out = tmp_path_factory.mktemp("rendered")
    result = {}
    for name, values in VALUE_FILES.items():
        proc = template(helmcheck, "-f", str(values))
        assert proc.returncode == 0, f"helm template -f {values.name}:\n{proc.stderr}"
        manifest = out / f"{name}.yaml"
        manifest.write_text(proc.stdout)
        dump = out / f"{name}.json"
        decoded = helm_tools.run([str(helmcheck), "decode", "--keda-scalers", str(keda_schema),
                                  "--json-out", str(dump), str(manifest)])
        assert decoded.returncode == 0, f"{name}: rendered objects do not decode strictly:\n{decoded.stderr}"
        result[name] = Rendered(name, manifest, json.loads(dump.read_text()))
    return result


@pytest.mark.parametrize("values", ["demo", "secured", "share"])
def test_helm_lint_passes(helmcheck: Path, values: str) -> None:
    proc = helm(helmcheck, "lint", str(CHART), "--namespace", NAMESPACE, "-f", str(VALUE_FILES[values]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout
    assert "[WARNING]" not in proc.stdout, proc.stdout


def test_each_shape_renders_what_it_needs(rendered: dict[str, Rendered]) -> None:
    common = ["ConfigMap", "ConfigMap", "Deployment", "Job", "NetworkPolicy", "PodDisruptionBudget",
              "ScaledObject", "Service"]
    assert rendered["demo"].kinds() == sorted([*common, "ConfigMap", "Deployment", "Job", "Service"])
    assert rendered["secured"].kinds() == sorted([
        *common, "ConfigMap", "Deployment", "Job", "Service", "TriggerAuthentication", "ServiceMonitor",
        "PrometheusRule"])
    # Share mode: no lag exporter (a share group has no committed offsets to read lag from).
    assert rendered["share"].kinds() == sorted([*common, "ConfigMap", "Job", "ServiceMonitor"])
    for shape in rendered.values():
        assert all(o["metadata"].get("namespace") == NAMESPACE for o in shape.objects)


@pytest.mark.parametrize("fixture, expected", [
    ("misspelt-deployment.yaml", 'Deployment/misspelt: error unmarshaling JSON: while decoding JSON: '
                                 'json: unknown field "terminationGracePeriodSecond"'),
    ("misspelt-scaledobject.yaml", 'ScaledObject/misspelt: error unmarshaling JSON: while decoding JSON: '
                                   'json: unknown field "maxReplicasCount"'),
    ("misspelt-trigger-metadata.yaml",
     'ScaledObject/misspelt: trigger kafka: unknown metadata "lagTreshold"'),
    ("misspelt-prometheusrule.yaml", 'PrometheusRule/misspelt: error unmarshaling JSON: while decoding JSON: '
                                     'json: unknown field "alerts"'),
])
def test_a_misspelt_field_fails_the_decoding(helmcheck: Path, keda_schema: Path, fixture: str,
                                             expected: str) -> None:
    proc = helm_tools.run([str(helmcheck), "decode", "--keda-scalers", str(keda_schema),
                           str(FIXTURES / fixture)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_an_unknown_kind_fails_the_decoding(helmcheck: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "unknown.yaml"
    manifest.write_text("apiVersion: keda.sh/v1alpha1\nkind: ScaledObjekt\nmetadata: {name: x}\n")
    proc = helm_tools.run([str(helmcheck), "decode", str(manifest)])
    assert proc.returncode == 1 and "a kind no known API has" in proc.stderr, proc.stderr


def containers(shape: Rendered) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(component, pod spec, container) of every workload."""
    for obj in shape.objects:
        if obj["kind"] in ("Deployment", "Job"):
            pod = obj["spec"]["template"]
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            for container in pod["spec"]["containers"]:
                yield component, pod["spec"], container


def environment(shape: Rendered, container: dict[str, Any]) -> dict[str, str | None]:
    """The container's variables: its ConfigMaps' data, then `env` (secrets as None)."""
    variables: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        config_map = shape.one("ConfigMap", source["configMapRef"]["name"])
        variables.update(config_map["data"])
    for item in container.get("env", []):
        assert SECRET_FILES.get(item["name"]) == item.get("value"), (
            f"{item['name']}: only secret files go in env")
        variables[item["name"]] = None
    return variables


@pytest.mark.parametrize("values", list(VALUE_FILES))
def test_environment_is_exactly_the_services_settings(rendered: dict[str, Rendered], values: str) -> None:
    shape = rendered[values]
    seen = set()
    for component, _, container in containers(shape):
        seen.add(component)
        settings = {name.upper() for name in SETTINGS[component].model_fields}
        names = set(environment(shape, container))
        unset_secrets = SECRETS | (set() if values == "mtls" else set(SECRET_FILES) - names)
        assert names == settings - unset_secrets, (
            f"{values}/{component}: missing from the chart {sorted(settings - unset_secrets - names)}, "
            f"not a setting {sorted(names - settings)} "
            "(deploy/helm/jobpipe/templates/_helpers.tpl lists them)")
    assert seen >= {"topic-admin", "consumer", "producer"}, seen


@pytest.mark.parametrize("values", list(VALUE_FILES))
def test_rendered_settings_are_valid_for_the_services(rendered: dict[str, Rendered], values: str) -> None:
    shape = rendered[values]
    for component, _, container in containers(shape):
        # a password file the chart names stands for the password the service would read from it
        variables = {name.removesuffix("_FILE").lower(): ("a-secret" if name in SECRET_FILES else value)
                     for name, value in environment(shape, container).items()}
        SETTINGS[component](**variables)  # raises on any value the service would refuse (exit 2)


@pytest.mark.parametrize("values", list(VALUE_FILES))
def test_pods_are_non_root_read_only_and_bounded(rendered: dict[str, Rendered], values: str) -> None:
    for component, pod, container in containers(rendered[values]):
        where = f"{values}/{component}"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
        assert pod["automountServiceAccountToken"] is False, where
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}, where
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, where


@pytest.mark.parametrize("values", ["demo", "secured", "share"])
def test_consumer_probes_and_grace_period(rendered: dict[str, Rendered], values: str) -> None:
    shape = rendered[values]
    deployment = shape.one("Deployment", "-consumer")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    timeout = float(shape.one("ConfigMap", "-consumer")["data"]["SHUTDOWN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > timeout
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    pdb = shape.one("PodDisruptionBudget", "-consumer")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("values", ["demo", "secured", "mtls"])
def test_group_mode_scales_on_lag_up_to_the_partition_count(rendered: dict[str, Rendered],
                                                            values: str) -> None:
    shape = rendered[values]
    scaled = shape.one("ScaledObject", "-consumer")
    consumer = shape.one("ConfigMap", "-consumer")["data"]
    partitions = int(shape.one("ConfigMap", "-topic-admin")["data"]["JOBS_PARTITIONS"])
    workers = int(consumer["CONSUMER_WORKERS"])
    # A group member beyond the partition count gets no partition.
    assert scaled["spec"]["maxReplicaCount"] == math.ceil(partitions / workers)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == consumer["CONSUMER_GROUP"]
    assert trigger["metadata"]["topic"] == consumer["JOBS_TOPIC"]
    assert trigger["metadata"]["bootstrapServers"] == consumer["KAFKA_BOOTSTRAP_SERVERS"]
    assert trigger["metadata"]["offsetResetPolicy"] == "earliest"


def test_secured_scaler_authenticates_as_the_consumer(rendered: dict[str, Rendered]) -> None:
    shape = rendered["secured"]
    (trigger,) = shape.one("ScaledObject", "-consumer")["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    auth = shape.one("TriggerAuthentication", "-kafka")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret_refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert secret_refs == {"password": ("jobpipe-kafka", "consumer-password"),
                           "ca": ("jobpipe-kafka", "ca.crt")}
    (username,) = auth["spec"]["configMapTargetRef"]
    assert shape.one("ConfigMap", username["name"])["data"][username["key"]] == "jobpipe-consumer"


def test_share_mode_scales_past_the_partition_count_on_prometheus(rendered: dict[str, Rendered]) -> None:
    shape = rendered["share"]
    scaled = shape.one("ScaledObject", "-consumer")
    partitions = int(shape.one("ConfigMap", "-topic-admin")["data"]["JOBS_PARTITIONS"])
    assert scaled["spec"]["maxReplicaCount"] > partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "job_processing_seconds_sum" in trigger["metadata"]["query"]
    assert f'namespace="{NAMESPACE}"' in trigger["metadata"]["query"]


def test_secrets_are_only_referenced(rendered: dict[str, Rendered], helmcheck: Path) -> None:
    for shape in rendered.values():
        assert "Secret" not in shape.kinds()
        text = shape.manifest.read_text()
        assert "a-secret" not in text and not re.search(r"PASSWORD: ", text)
    proc = template(helmcheck, "--set", "config.KAFKA_SASL_PASSWORD=hunter2")
    assert proc.returncode != 0 and "secrets never go in values" in proc.stderr, proc.stderr
    proc = template(helmcheck, "--set", "kafkaAuth.saslPasswordKey.consumer=password")
    assert proc.returncode != 0 and "kafkaAuth.existingSecret" in proc.stderr, proc.stderr


def test_a_misspelt_setting_fails_the_render(helmcheck: Path) -> None:
    proc = template(helmcheck, "--set", "config.MAX_ATEMPTS=3")
    assert proc.returncode != 0, proc.stdout
    assert "MAX_ATEMPTS is not a setting of any jobpipe service" in proc.stderr, proc.stderr


def test_topics_are_ensured_before_install_and_upgrade(rendered: dict[str, Rendered]) -> None:
    shape = rendered["demo"]
    job = shape.one("Job", "-topic-admin-ensure")
    config = shape.one("ConfigMap", "-topic-admin")
    for hooked in (job, config):
        assert hooked["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    # Its settings exist before it runs.
    assert int(config["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["ensure"]


def test_prometheus_rule_is_the_alerts_file(rendered: dict[str, Rendered]) -> None:
    link = CHART / "files" / "alerts.yml"
    assert link.is_symlink() and link.resolve() == ALERTS.resolve(), "a link, not a copy"
    rule = rendered["secured"].one("PrometheusRule")
    rendered_alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert rendered_alerts == re.findall(r"^\s+- alert: (\S+)$", ALERTS.read_text(), re.MULTILINE)
    assert any("{{ $labels.group }}" in r["annotations"]["summary"] for g in rule["spec"]["groups"]
               for r in g["rules"]), "Prometheus templates must reach the rules unrendered by Helm"
    # The rules' `job` names are the Services' component label (ServiceMonitor jobLabel).
    monitor = rendered["secured"].one("ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/component"
    components = {s["metadata"]["labels"]["app.kubernetes.io/component"]
                  for s in rendered["secured"].objects if s["kind"] == "Service"}
    assert components == {"consumer", "lag-exporter"}


def skipped_checks() -> dict[str, str]:
    skips = {}
    for line in SKIPS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            check, _, reason = line.partition(" ")
            assert reason.strip(), f"{SKIPS.name}: {check} has no reason"
            skips[check] = reason.strip()
    return skips


def test_checkov_finds_nothing_but_the_written_down_skips(rendered: dict[str, Rendered]) -> None:
    checkov, _ = helm_tools.install_checkov()
    manifests = rendered["demo"].manifest.parent
    skips = skipped_checks()
    proc = helm_tools.run([str(checkov), "--directory", str(manifests), "--framework", "kubernetes",
                           "--skip-check", ",".join(skips), "--output", "json", "--compact", "--quiet",
                           "--skip-download"], timeout=600)
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith(("{", "[")) else None
    assert report is not None, f"checkov exit {proc.returncode}: {proc.stderr[-2000:]}{proc.stdout[-2000:]}"
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"], c["file_path"])
              for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert not failed, f"checkov: {failed}"
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert passed > 100, f"checkov checked almost nothing ({passed} passed)"
