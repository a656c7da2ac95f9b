"""End-to-end: deploy/compose.secure.yml on the real Compose. The broker asks for SASL_SSL
(SCRAM-SHA-512) with ACLs on; each service logs in as its own user holding the least ACLs; the
seed's 20 jobs are produced and processed; no secret reaches a log line (issue 12) nor a
container's environment (compose secrets, issue 25); `topic-admin redrive` and
`offsets --execute` work with topic-admin's ACLs (issue 25)."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from tests.e2e.conftest import OVERRIDE_SECURE, Stack
from tests.e2e.engine import COMPOSE_FILE, ensure_compose, log, run
from tests.e2e.test_compose import SEED_KEYS, wait_processed
from tests.observing import wait_until

pytestmark = pytest.mark.e2e

SECRETS = ("KAFKA_TLS_STORE_PASSWORD", "JOBPIPE_ADMIN_PASSWORD", "JOBPIPE_PRODUCER_PASSWORD",
           "JOBPIPE_CONSUMER_PASSWORD")


def test_the_secure_override_hands_its_secrets_over_as_files_only() -> None:
    """Every secret is a compose secret taken from the variable of its name: no service's
    environment holds one (`docker inspect` would show it)."""
    compose = ensure_compose()
    args = [compose, "--project-directory", str(COMPOSE_FILE.parent), "-f", str(COMPOSE_FILE),
            "-f", str(OVERRIDE_SECURE), "config", "--format", "json"]
    given = {name: f"value-of-{name}" for name in SECRETS} | {"PATH": "/usr/bin:/bin"}
    config = json.loads(run(args, timeout=60, env=given).stdout)
    assert {secret["environment"] for secret in config["secrets"].values()} == set(SECRETS)
    for name, service in config["services"].items():
        shown = json.dumps(service.get("environment", {}))
        assert not any(f"value-of-{secret}" in shown for secret in SECRETS), name
    for name in ("kafka", "topic-admin", "producer", "consumer", "kafka-users", "kafka-certs"):
        assert config["services"][name].get("secrets"), f"{name} gets no secret file"


def test_a_secret_left_unset_stops_up_naming_its_variable(make_stack: Any) -> None:
    """Compose hands the secrets over when it starts a container: one whose variable is unset
    stops `up` there, before the container runs, naming the variable."""
    stack = make_stack(files=(COMPOSE_FILE, OVERRIDE_SECURE))
    proc = stack.compose("up", "--no-build", "--pull", "never", "--no-deps", "kafka-certs", timeout=120,
                         check=False)
    assert proc.returncode != 0
    assert 'environment variable "KAFKA_TLS_STORE_PASSWORD" required by secret' in proc.stdout, proc.stdout
    assert all(state != "running" and code == 0 for state, code in stack.state("kafka-certs"))


def one_off(stack: Stack, *args: str, timeout: float = 120) -> None:
    """`docker compose run --rm topic-admin ARGS` as jobpipe-admin; it must exit 0."""
    proc = stack.compose("run", "--rm", "--no-deps", "-T", "topic-admin", *args, timeout=timeout,
                         check=False, split_stderr=True)
    command = " ".join(args)
    assert proc.returncode == 0, f"topic-admin {command}: exit {proc.returncode}\n{proc.stderr[-3000:]}"


def dead_letters(stack: Stack) -> int:
    return sum(len(found) for found in stack.events("consumer", "job.dead_lettered").values())


def committed_offsets(stack: Stack) -> dict[int, tuple[int, int | None]]:
    """Per partition of the jobs topic: (log start, the group's committed offset)."""
    for _attempt in range(4):  # podman's attach now and then misses a quick container's output
        proc = stack.compose("run", "--rm", "--no-deps", "-T", "topic-admin", "offsets", "--json",
                             timeout=120, split_stderr=True)
        if proc.stdout.strip().startswith("{"):
            rows = json.loads(proc.stdout)["partitions"]
            return {row["partition"]: (row["start"], row["committed"]) for row in rows}
    raise AssertionError(f"`topic-admin offsets --json` printed no JSON:\n{proc.stderr[-2000:]}")


def test_the_seed_runs_over_sasl_ssl_with_a_user_per_service(make_stack: Any) -> None:
    values = {name: secrets.token_hex(16) for name in SECRETS}
    stack = make_stack(files=(COMPOSE_FILE, OVERRIDE_SECURE), **values)
    log("secure seed: up")
    stack.up(timeout=600)  # kafka-users: ten JVM starts of Kafka's tools, slow on a loaded machine
    codes = stack.wait_exited("kafka-certs", "kafka-users", "topic-admin", "producer", timeout=240)
    assert codes and all(code == 0 for code in codes.values()), codes
    wait_processed(stack, SEED_KEYS, timeout=90)

    for service, user in (("topic-admin", "jobpipe-admin"), ("producer", "jobpipe-producer"),
                          ("consumer", "jobpipe-consumer")):
        started = [e for found in stack.events(service, "service.started").values() for e in found]
        assert started, service
        for event in started:
            config = event["config"]
            assert (config["kafka_security_protocol"], config["kafka_sasl_username"]) == ("SASL_SSL", user)
            assert config["kafka_bootstrap_servers"] == "kafka:19093"

    log("secure seed: processed; the redrive and offsets steps start")
    # Compose secrets: no password in any container's environment (what `docker inspect` shows).
    for container in stack.containers():
        inspect = [*stack.engine.cli, "inspect", "--format", "{{json .Config.Env}}", str(container["ID"])]
        inspected = run(inspect, timeout=60, env=stack.engine.environ()).stdout
        assert not [name for name, value in values.items() if value in inspected], container["Name"]

    # `topic-admin redrive` as jobpipe-admin: three messages that are not jobs (written through
    # the broker's loopback super-user listener) are dead-lettered, re-driven in one transaction
    # (the ledger topic created on the way), read again by the consumers and dead-lettered again.
    poison = ("printf 'not-a-job-1\\nnot-a-job-2\\nnot-a-job-3\\n' | "
              "/opt/kafka/bin/kafka-console-producer.sh --bootstrap-server 127.0.0.1:19092 --topic jobs")
    stack.compose("exec", "-T", "kafka", "sh", "-c", poison, timeout=120)
    wait_until(lambda: dead_letters(stack) >= 3, 60, "3 dead letters", poll=2.0)
    one_off(stack, "redrive", "--json")
    wait_until(lambda: dead_letters(stack) >= 6, 60, "the 3 re-driven copies dead-lettered again", poll=2.0)
    assert dead_letters(stack) == 6

    # `topic-admin offsets --execute` as jobpipe-admin: the group, its consumers stopped, goes back
    # to the start of every partition.
    stack.compose("stop", "consumer", timeout=120)
    one_off(stack, "offsets", "--to-earliest", "--execute")
    offsets = committed_offsets(stack)
    assert offsets and all(committed == start for start, committed in offsets.values()), offsets

    log("secure seed: the redrive and offsets steps done")
    lines = [line for found in stack.logs().values() for line in found]
    leaked = [name for name, value in values.items() if any(value in line for line in lines)]
    assert not leaked, f"secrets in the logs: {leaked}"
