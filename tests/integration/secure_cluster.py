"""A Kafka node that asks who you are: a SASL_SSL listener (SCRAM-SHA-512), an SSL listener that
requires a client certificate (mutual TLS), and ACLs enforced by KRaft's StandardAuthorizer.

Everything secret is made at test time in a temporary folder and never committed: a CA and a
broker certificate for 127.0.0.1 (openssl), a client certificate whose key is encrypted (for
KAFKA_SSL_KEY_PASSWORD), and a second CA that signed nothing the broker has (an untrusted
broker, seen from a client). The node's PLAINTEXT listener, on 127.0.0.1 only, is the harness's
own: its principal (User:ANONYMOUS) is the super user that creates the SCRAM users and the ACLs
through the Admin API; the services under test only ever use the secured listeners.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from local_kafka import LocalKafkaCluster

from consumer_service.tier_mover import mover_group
from jobpipe.access import Need, check_access
from jobpipe.delays import tiers_of
from jobpipe.errors import KafkaRefused
from jobpipe.kafka_clients import admin_config
from jobpipe.settings import KafkaSettings
from tests.service_runner import wait_until

STORE_PASSWORD = "broker-store-secret"
KEY_PASSWORD = "client-key-secret"  # the client certificate's key is encrypted with it
CLIENT_CN = "jobpipe-client"
MTLS_PRINCIPAL = f"User:CN={CLIENT_CN}"


@dataclass(frozen=True)
class Files:
    ca: Path
    broker_store: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    other_ca: Path  # trusts nothing the broker has


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


def make_certificates(folder: Path) -> Files:
    """A CA, the broker's certificate (IP 127.0.0.1) in a PKCS12 store, a client certificate
    with an encrypted key, and an unrelated CA."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=jobpipe test {name}", cwd=folder)
    (folder / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, extension in (("broker", "/CN=localhost", ["-extfile", "broker.ext"]),
                                     ("client", f"/CN={CLIENT_CN}", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extension, cwd=folder)
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
             "-out", "broker.p12", "-passout", f"pass:{STORE_PASSWORD}", cwd=folder)
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
             "-out", "client.enc.key", cwd=folder)
    return Files(ca=folder / "ca.pem", broker_store=folder / "broker.p12", client_cert=folder / "client.pem",
                 client_key=folder / "client.enc.key", other_ca=folder / "other-ca.pem")


def broker_properties(files: Files) -> dict[str, object]:
    store = {"ssl.keystore.location": files.broker_store, "ssl.keystore.type": "PKCS12",
             "ssl.keystore.password": STORE_PASSWORD}
    props: dict[str, object] = {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",  # the harness's PLAINTEXT listener and the controller
        "allow.everyone.if.no.acl.found": "false",
        "listener.name.sasl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.mtls.ssl.truststore.location": files.ca,
        "listener.name.mtls.ssl.truststore.type": "PEM",
    }
    for listener in ("sasl", "mtls"):
        props |= {f"listener.name.{listener}.{name}": value for name, value in store.items()}
    return props


def start(folder: Path) -> tuple[LocalKafkaCluster, Files]:
    files = make_certificates(folder / "tls")
    cluster = LocalKafkaCluster(workdir=folder / "kafka", extra_listeners={"SASL": "SASL_SSL", "MTLS": "SSL"},
                                extra_properties=broker_properties(files))
    cluster.start()
    return cluster, files


class Security:
    """Users and ACLs on the secured node, through the harness's super-user listener."""

    def __init__(self, cluster: LocalKafkaCluster, files: Files) -> None:
        self.cluster = cluster
        self.files = files
        self.admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})

    def add_user(self, name: str, password: str) -> None:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
        upsert = UserScramCredentialUpsertion(name, info, password.encode())
        for future in self.admin.alter_user_scram_credentials([upsert], request_timeout=30).values():
            future.result()

    def allow(self, principal: str, operation: AclOperation, kind: ResourceType, name: str,
              pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> None:
        binding = AclBinding(kind, name, pattern, principal, "*", operation, AclPermissionType.ALLOW)
        for future in self.admin.create_acls([binding], request_timeout=30).values():
            future.result()

    def allow_producer(self, principal: str, topic: str) -> None:
        """WRITE on the topic is all an idempotent producer needs since Kafka 3.0 (KIP-679)."""
        self.allow(principal, AclOperation.WRITE, ResourceType.TOPIC, topic)

    def allow_consumer(self, principal: str, topic: str, group: str, dlq: str, *, tiers: bool = True) -> None:
        """What docs/security.md gives a consumer; `tiers=False` leaves out the delay tiers'."""
        self.allow(principal, AclOperation.READ, ResourceType.TOPIC, topic)
        self.allow(principal, AclOperation.READ, ResourceType.GROUP, group)
        self.allow_producer(principal, dlq)
        if tiers:
            self.allow_producer(principal, topic)  # the tier mover writes due jobs back
            for tier in tiers_of(topic):
                self.allow(principal, AclOperation.READ, ResourceType.TOPIC, tier.topic)
                self.allow_producer(principal, tier.topic)
            self.allow(principal, AclOperation.READ, ResourceType.GROUP, mover_group(group))

    def allow_admin(self, principal: str) -> None:
        """topic-admin: create and describe topics, describe groups (ensure, describe)."""
        for operation in (AclOperation.CREATE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
                          AclOperation.ALTER_CONFIGS):
            self.allow(principal, operation, ResourceType.TOPIC, "*")
        self.allow(principal, AclOperation.DESCRIBE, ResourceType.GROUP, "*")
        self.allow(principal, AclOperation.DESCRIBE, ResourceType.BROKER, "kafka-cluster")

    def wait_until_effective(self, settings: dict[str, object], needs: list[Need]) -> None:
        """Users and ACLs reach the broker through the metadata log, a moment after the Admin
        API answered: wait until this principal authenticates and holds `needs`."""
        config = KafkaSettings(**settings)  # type: ignore[arg-type]

        def effective() -> bool:
            probe = AdminClient(admin_config(config, "harness-probe") | {"log_level": 0})
            try:
                probe.list_topics(timeout=5)  # fails until the user's credentials are known
                check_access(config, needs)
            except (KafkaException, KafkaRefused):
                return False
            finally:
                del probe
            return True

        wait_until(effective, 30, f"{settings.get('kafka_sasl_username') or 'the client'} to hold {needs}",
                   poll=0.2)

    def sasl_settings(self, user: str, password: str, ca: Path | None = None) -> dict[str, object]:
        return {"kafka_bootstrap_servers": self.cluster.listener_bootstrap("SASL"),
                "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_sasl_username": user, "kafka_sasl_password": password,
                "kafka_ssl_ca_location": str(ca or self.files.ca)}

    def mtls_settings(self) -> dict[str, object]:
        return {"kafka_bootstrap_servers": self.cluster.listener_bootstrap("MTLS"),
                "kafka_security_protocol": "SSL", "kafka_ssl_ca_location": str(self.files.ca),
                "kafka_ssl_certificate_location": str(self.files.client_cert),
                "kafka_ssl_key_location": str(self.files.client_key), "kafka_ssl_key_password": KEY_PASSWORD}
