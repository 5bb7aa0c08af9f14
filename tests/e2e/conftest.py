"""Fixtures of the end-to-end polyglot client test.

At session start the Python stubs are generated from ``<repo>/proto/crm`` into a
temporary directory (never into the repo) and put on ``sys.path``. The session
fixtures then create a fresh Postgres database, start the four services as separate
processes on ephemeral ports against it (and against Redis), and on teardown stop them
with SIGTERM, require a clean exit (code 0) and drop the database.

Environment:
    CRM_BIN_DIR   directory holding crm-contact, crm-pipeline, crm-ticket and
                  crm-analytics (default: <repo>/target/debug)
    CRM_E2E_PG_HOST / CRM_E2E_PG_PORT / CRM_E2E_PG_USER   (default 127.0.0.1 / 5432 / postgres)
    CRM_E2E_REDIS_URL                                     (default redis://127.0.0.1:6379)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
BIN_DIR = Path(os.environ.get("CRM_BIN_DIR") or REPO / "target" / "debug")

PG_HOST = os.environ.get("CRM_E2E_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("CRM_E2E_PG_PORT", "5432"))
PG_USER = os.environ.get("CRM_E2E_PG_USER", "postgres")
REDIS_URL = os.environ.get("CRM_E2E_REDIS_URL", "redis://127.0.0.1:6379")

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 30.0
# Each package's service definition must be among the compiled files.
REQUIRED_PROTO_FILES = [f"crm/{svc}/v1/{svc}_service.proto" for svc in ("contact", "pipeline", "ticket", "analytics")]

# name of the binary -> fully qualified gRPC service it serves
SERVICES = {
    "crm-contact": "crm.contact.v1.ContactService",
    "crm-pipeline": "crm.pipeline.v1.PipelineService",
    "crm-ticket": "crm.ticket.v1.TicketService",
    "crm-analytics": "crm.analytics.v1.AnalyticsService",
}

_STUB_DIR: str | None = None
# Every process this session started, so a failing test can show their logs.
_RUNNING: list["ServiceProcess"] = []


# --------------------------------------------------------------------------------------
# Stub generation (before collection, so test modules can import the stubs at the top)
# --------------------------------------------------------------------------------------


def _grpc_tools_include() -> str:
    """The well-known types (google/protobuf/*.proto) bundled with grpc_tools."""
    try:
        from importlib.resources import files

        return str(files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover - very old Pythons
        import pkg_resources

        return pkg_resources.resource_filename("grpc_tools", "_proto")


def _generate_stubs(out_dir: str) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "crm").rglob("*.proto"))
    missing = [f for f in REQUIRED_PROTO_FILES if not (PROTO_ROOT / f).exists()]
    if missing:
        raise pytest.UsageError(
            f"service definitions missing under {PROTO_ROOT}: {missing}"
        )
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={_grpc_tools_include()}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise pytest.UsageError(f"grpc_tools.protoc failed with exit code {rc}: {' '.join(args)}")


def pytest_sessionstart(session: pytest.Session) -> None:
    global _STUB_DIR
    _STUB_DIR = tempfile.mkdtemp(prefix="crm_e2e_stubs_")
    _generate_stubs(_STUB_DIR)
    sys.path.insert(0, _STUB_DIR)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _STUB_DIR:
        shutil.rmtree(_STUB_DIR, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Logs of the services on failure
# --------------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in _RUNNING:
            report.sections.append((f"{proc.name} stderr (tail)", proc.log_tail()))


# --------------------------------------------------------------------------------------
# Postgres and Redis
# --------------------------------------------------------------------------------------


def psql(sql: str, database: str = "postgres") -> str:
    """Runs one statement through the `psql` client; fails the test loudly on error."""
    cmd = [
        "psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", database,
        "-v", "ON_ERROR_STOP=1", "-X", "-q", "-t", "-A", "-c", sql,
    ]
    env = dict(os.environ, PGCONNECT_TIMEOUT="5")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    except FileNotFoundError:
        pytest.fail("the `psql` client is not installed; it is needed to create the test database")
    except subprocess.TimeoutExpired:
        pytest.fail(f"psql timed out running {sql!r} against {PG_HOST}:{PG_PORT}")
    if done.returncode != 0:
        pytest.fail(
            f"psql failed (exit {done.returncode}) running {sql!r} against "
            f"{PG_HOST}:{PG_PORT} as {PG_USER}:\n{done.stderr.strip()}"
        )
    return done.stdout.strip()


def _check_redis(url: str) -> None:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    problem = None
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            sock.settimeout(5)
            reply = sock.recv(64)
    except OSError as err:
        problem = str(err)
    if problem is not None:
        pytest.fail(f"Redis at {host}:{port} does not answer: {problem}")
    # An auth-protected Redis answers -NOAUTH; the services would fail too.
    if not reply.startswith(b"+PONG"):
        pytest.fail(f"Redis at {host}:{port} answered PING with {reply!r}, not +PONG")


@pytest.fixture(scope="session")
def database():
    """A fresh database for this run; dropped (WITH (FORCE)) at the end."""
    version = psql("SHOW server_version_num")
    _check_redis(REDIS_URL)
    name = f"crm_e2e_{secrets.token_hex(6)}"
    psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        # FORCE needs PostgreSQL 13+; older servers get a plain DROP.
        force = " WITH (FORCE)" if int(version or 0) >= 130000 else ""
        psql(f'DROP DATABASE IF EXISTS "{name}"{force}')


# --------------------------------------------------------------------------------------
# The service processes
# --------------------------------------------------------------------------------------

_LISTENING = re.compile(r"^listening on (\S+):(\d+)\s*$")


@dataclass
class ServiceProcess:
    name: str
    grpc_service: str
    proc: subprocess.Popen
    log_path: Path
    stdout_lines: "queue.Queue[str | None]" = field(default_factory=queue.Queue)
    stdout_seen: list[str] = field(default_factory=list)
    host: str = ""
    port: int = 0

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def log_tail(self, max_chars: int = 20_000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as err:
            return f"<cannot read {self.log_path}: {err}>"
        out = "".join(line + "\n" for line in self.stdout_seen)
        return (f"--- stdout ---\n{out}--- stderr ({self.log_path}) ---\n" + text[-max_chars:])


def _pump_stdout(sp: ServiceProcess) -> None:
    assert sp.proc.stdout is not None
    for line in sp.proc.stdout:
        sp.stdout_lines.put(line.rstrip("\n"))
    sp.stdout_lines.put(None)


def _start(name: str, env: dict[str, str], log_dir: Path) -> ServiceProcess:
    binary = BIN_DIR / name
    if not os.access(binary, os.X_OK):
        pytest.fail(f"service binary {binary} is missing or not executable (set CRM_BIN_DIR)")
    log_path = log_dir / f"{name}.stderr.log"
    log_file = open(log_path, "wb")
    try:
        proc = subprocess.Popen(
            [str(binary)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            bufsize=1,
            start_new_session=True,  # a Ctrl-C of pytest must not reach the services
        )
    finally:
        log_file.close()
    sp = ServiceProcess(name=name, grpc_service=SERVICES[name], proc=proc, log_path=log_path)
    _RUNNING.append(sp)
    threading.Thread(target=_pump_stdout, args=(sp,), name=f"{name}-stdout", daemon=True).start()
    return sp


def _await_listening(sp: ServiceProcess) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(
                f"{sp.name} did not print 'listening on ...' within {STARTUP_TIMEOUT_S:.0f} s\n"
                + sp.log_tail()
            )
        try:
            line = sp.stdout_lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:  # stdout closed: the process is gone
            rc = sp.proc.wait(timeout=5)
            pytest.fail(f"{sp.name} exited with code {rc} before it was serving\n" + sp.log_tail())
        sp.stdout_seen.append(line)
        match = _LISTENING.match(line)
        if match:
            sp.host, sp.port = match.group(1), int(match.group(2))
            assert sp.port > 0, f"{sp.name} reported port 0: {line!r}"
            _await_serving(sp, deadline)
            return


def _await_serving(sp: ServiceProcess, deadline: float) -> None:
    """The port opens at once; like a readiness probe, wait for health to say SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{sp.host}:{sp.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if sp.proc.poll() is not None:
                pytest.fail(f"{sp.name} exited with code {sp.proc.returncode} before serving\n" + sp.log_tail())
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=sp.grpc_service), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    pytest.fail(f"{sp.name} did not report SERVING within {STARTUP_TIMEOUT_S:.0f} s\n" + sp.log_tail())


def _stop_all(procs: list[ServiceProcess]) -> list[str]:
    """SIGTERM to every process, then wait for each; returns the problems found."""
    problems = []
    for sp in procs:
        if sp.proc.poll() is None:
            sp.proc.send_signal(signal.SIGTERM)
        else:
            problems.append(f"{sp.name} had already exited with code {sp.proc.returncode} before SIGTERM")
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    for sp in procs:
        try:
            rc = sp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            sp.proc.kill()
            sp.proc.wait(timeout=10)
            problems.append(f"{sp.name} did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of SIGTERM (killed)")
            continue
        if rc != 0 and not any(p.startswith(f"{sp.name} had already") for p in problems):
            problems.append(f"{sp.name} exited with code {rc} after SIGTERM, expected 0")
    return problems


@dataclass
class Suite:
    secret: str
    data_dir: Path
    database: str
    procs: dict[str, ServiceProcess]

    def target(self, name: str) -> str:
        return self.procs[name].target


@pytest.fixture(scope="session")
def suite(database, tmp_path_factory):
    """The four services, running as separate processes against one fresh database."""
    data_dir = tmp_path_factory.mktemp("crm_data")
    log_dir = tmp_path_factory.mktemp("crm_logs")
    secret = secrets.token_urlsafe(48)  # 64 characters
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CRM__")}
    base_env.update(
        {
            "CRM__SERVER__ADDR": "127.0.0.1:0",
            "CRM__DATABASE__URL": f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}",
            "CRM__CACHE__BACKEND": "redis",
            "CRM__CACHE__REDIS_URL": REDIS_URL,
            "CRM__AUTH__HS256_SECRET": secret,
            "CRM__DATA_DIR": str(data_dir),
            "CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS": "100",
            "CRM__TELEMETRY__LOG_FORMAT": "json",
            # Verbose, so that the log scan sees everything the services would say.
            "CRM__TELEMETRY__LOG_LEVEL": "debug",
        }
    )
    procs: dict[str, ServiceProcess] = {}
    try:
        # contact first: it is the one the others may call, and the migrations of the
        # four services should not all race at once.
        procs["crm-contact"] = _start("crm-contact", base_env, log_dir)
        _await_listening(procs["crm-contact"])
        others_env = dict(base_env, CRM__CLIENTS__CONTACT=f"http://{procs['crm-contact'].target}")
        for name in ("crm-pipeline", "crm-ticket", "crm-analytics"):
            procs[name] = _start(name, others_env, log_dir)
        for name in ("crm-pipeline", "crm-ticket", "crm-analytics"):
            _await_listening(procs[name])
        yield Suite(secret=secret, data_dir=data_dir, database=database, procs=procs)
    except BaseException:
        # Startup failed: do not leave processes behind (the failure is already reported).
        for sp in procs.values():
            if sp.proc.poll() is None:
                sp.proc.kill()
                sp.proc.wait(timeout=10)
        raise
    else:
        problems = _stop_all(list(procs.values()))
        if problems:
            logs = "\n\n".join(f"===== {sp.name} =====\n{sp.log_tail()}" for sp in procs.values())
            pytest.fail("graceful shutdown failed:\n  " + "\n  ".join(problems) + "\n\n" + logs)
    finally:
        for sp in procs.values():
            if sp in _RUNNING:
                _RUNNING.remove(sp)


# --------------------------------------------------------------------------------------
# Tokens, minted in Python (HS256 JWT, no JWT library)
# --------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(secret: str, tenant: str, roles: list[str], sub: str = "e2e-user", ttl_s: int = 3600) -> str:
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "sub": sub,
        "tenant": tenant,
        "roles": roles,
        "exp": now + ttl_s,
        "iss": "crm",
        "aud": "crm",
        "iat": now,
    }
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


@dataclass
class Tenant:
    name: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@pytest.fixture(scope="session")
def tenant_a(suite) -> Tenant:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    return Tenant(name, mint_token(suite.secret, name, ["admin"], sub="alice"))


@pytest.fixture(scope="session")
def tenant_b(suite) -> Tenant:
    name = f"globex-{uuid.uuid4().hex[:8]}"
    return Tenant(name, mint_token(suite.secret, name, ["admin"], sub="bob"))
