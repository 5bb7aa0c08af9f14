"""Mutual TLS through a polyglot client: `crm certs` makes a CA and per-service
certificates, crm-contact serves with them (client certificates required), and a
Python grpcio client presenting the pipeline's certificate creates and reads a
contact. Without a certificate, or in plaintext, it is refused. The plaintext health
listener (``server.health_addr``) answers probes and serves nothing else.

The process runs on the embedded SQLite default: this test is about the transport.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import socket
import subprocess
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import _LISTENING, _RUNNING, BIN_DIR, ServiceProcess, _start, mint_token
from crm.contact.v1 import contact_service_pb2_grpc, contacts_pb2

CONTACT = "crm.contact.v1.ContactService"
TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(sp: ServiceProcess, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            line = sp.stdout_lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"{sp.name} exited before listening\n" + sp.log_tail())
        sp.stdout_seen.append(line)
        match = _LISTENING.match(line)
        if match:
            sp.host, sp.port = match.group(1), int(match.group(2))
            return
    pytest.fail(f"{sp.name} did not listen in time\n" + sp.log_tail())


@pytest.fixture(scope="module")
def mtls_contact(tmp_path_factory):
    certs = tmp_path_factory.mktemp("certs")
    made = subprocess.run(
        [str(BIN_DIR / "crm"), "certs", "--out", str(certs), "--days", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    secret = secrets.token_urlsafe(48)
    health_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM__")}
    env.update(
        {
            "CRM__SERVER__ADDR": "127.0.0.1:0",
            "CRM__SERVER__HEALTH_ADDR": f"127.0.0.1:{health_port}",
            "CRM__SERVER__TLS_CERT_FILE": str(certs / "contact" / "tls.crt"),
            "CRM__SERVER__TLS_KEY_FILE": str(certs / "contact" / "tls.key"),
            "CRM__SERVER__TLS_CLIENT_CA_FILE": str(certs / "contact" / "ca.crt"),
            "CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS": "100",
            "CRM__DATA_DIR": str(tmp_path_factory.mktemp("mtls_data")),
            "CRM__AUTH__HS256_SECRET": secret,
            "CRM__CACHE__BACKEND": "memory",
        }
    )
    sp = _start("crm-contact", env, tmp_path_factory.mktemp("mtls_logs"))
    try:
        _wait_listening(sp, time.monotonic() + 30)
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while True:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=CONTACT), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("crm-contact did not report SERVING on its health port\n" + sp.log_tail())
                time.sleep(0.05)
        yield sp, certs, secret, health_port
    finally:
        if sp.proc.poll() is None:
            sp.proc.send_signal(signal.SIGTERM)
        rc = sp.proc.wait(timeout=30)
        if sp in _RUNNING:
            _RUNNING.remove(sp)
    assert rc == 0, f"crm-contact exited with {rc}\n" + sp.log_tail()


def _credentials(certs, client: str | None) -> grpc.ChannelCredentials:
    root = (certs / "ca.crt").read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=(certs / client / "tls.key").read_bytes(),
        certificate_chain=(certs / client / "tls.crt").read_bytes(),
    )


def test_a_client_with_a_service_certificate_is_served(mtls_contact):
    sp, certs, secret, _ = mtls_contact
    tenant = f"mtls-{uuid.uuid4().hex[:8]}"
    metadata = (("authorization", f"Bearer {mint_token(secret, tenant, ['admin'])}"),)
    # The certificate names localhost, so that is the name the client checks.
    with grpc.secure_channel(f"localhost:{sp.port}", _credentials(certs, "pipeline")) as channel:
        stub = contact_service_pb2_grpc.ContactServiceStub(channel)
        created = stub.CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(
                    given_name="Tilda",
                    family_name="Secure",
                    emails=[contacts_pb2.EmailAddress(address="tilda@tls.example")],
                )
            ),
            metadata=metadata,
            timeout=TIMEOUT_S,
        )
        fetched = stub.GetContact(
            contacts_pb2.GetContactRequest(name=created.name), metadata=metadata, timeout=TIMEOUT_S
        )
        assert fetched.family_name == "Secure"
        assert fetched.emails[0].address == "tilda@tls.example"


@pytest.mark.parametrize("how", ["no client certificate", "plaintext"])
def test_a_client_without_a_certificate_is_refused(mtls_contact, how):
    sp, certs, _, _ = mtls_contact
    if how == "plaintext":
        channel = grpc.insecure_channel(f"127.0.0.1:{sp.port}")
    else:
        channel = grpc.secure_channel(f"localhost:{sp.port}", _credentials(certs, None))
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value


def test_the_health_listener_serves_only_health(mtls_contact):
    sp, _, secret, health_port = mtls_contact
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = contact_service_pb2_grpc.ContactServiceStub(channel)
        metadata = (("authorization", f"Bearer {mint_token(secret, 'mtls', ['admin'])}"),)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetContact(contacts_pb2.GetContactRequest(name="contacts/x"), metadata=metadata, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
