"""End-to-end: deploy/compose.secure.yml on the real Compose. The broker asks for SASL_SSL
(SCRAM-SHA-512) with ACLs on; each service logs in as its own user holding the least ACLs; the
seed's 20 jobs are produced and processed; no secret reaches a log line (issue 12)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.e2e.conftest import OVERRIDE_SECURE
from tests.e2e.engine import COMPOSE_FILE, ensure_compose, run
from tests.e2e.test_compose import SEED_KEYS, wait_processed

pytestmark = pytest.mark.e2e

SECRETS = ("KAFKA_TLS_STORE_PASSWORD", "JOBPIPE_ADMIN_PASSWORD", "JOBPIPE_PRODUCER_PASSWORD",
           "JOBPIPE_CONSUMER_PASSWORD")


def test_the_secure_override_refuses_to_start_without_its_secrets() -> None:
    compose = ensure_compose()
    args = [compose, "--project-directory", str(COMPOSE_FILE.parent), "-f", str(COMPOSE_FILE),
            "-f", str(OVERRIDE_SECURE), "config", "--quiet"]
    missing = run(args, timeout=60, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert missing.returncode != 0, "compose refuses to run without the secrets"
    assert "required variable" in missing.stdout and any(name in missing.stdout for name in SECRETS)
    given = {name: "x" for name in SECRETS} | {"PATH": "/usr/bin:/bin"}
    run(args, timeout=60, env=given)


def test_the_seed_runs_over_sasl_ssl_with_a_user_per_service(make_stack: Any) -> None:
    values = {name: secrets.token_hex(16) for name in SECRETS}
    stack = make_stack(files=(COMPOSE_FILE, OVERRIDE_SECURE), **values)
    stack.up(timeout=420)
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
    lines = [line for found in stack.logs().values() for line in found]
    leaked = [name for name, value in values.items() if any(value in line for line in lines)]
    assert not leaked, f"secrets in the logs: {leaked}"
