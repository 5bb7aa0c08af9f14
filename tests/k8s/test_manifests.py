"""Offline checks of the Kubernetes manifests (k8s/) that schemas and checkov cannot make.

Every overlay under k8s/overlays/ is rendered with `kubectl kustomize`, then:

* every `CRM__…` variable a CRM container gets (literal env, secretKeyRef, and the keys of
  the ConfigMaps/Secrets it reads through envFrom) is a real configuration key, taken from
  `crm config show` (CRM_BIN_DIR, default target/debug) — the binaries refuse unknown keys;
* each CRM workload's environment, with the secrets filled in, loads: `crm config show`
  run with exactly that environment exits 0 and shows the values the cluster needs;
* Deployments set the required secrets, gRPC probes name their health entries (readiness:
  the service's name; startup and liveness: `liveness`) on the port that serves them in
  plaintext (server.health_addr when set, else server.addr),
  the grace period outlasts the drain, pods run under the restricted security context;
* overlays with TLS (CRM__SERVER__TLS_CERT_FILE) run mutual TLS everywhere: server and
  clients both, client certificates required, every TLS file on Secret crm-tls-<service>,
  probes on the plaintext health port, and the Secret keys are those `crm certs` writes;
* headless Services, HPA/PDB/replicas per overlay, the migration Job, labels, namespaces;
* the NetworkPolicies allow exactly the edges of the service DAG (a small evaluator of
  NetworkPolicy semantics over a model of the pods, tenants, DNS and data stores), and
  nothing reaches the plaintext health port;
* the Dockerfile copies every workspace member's manifest and ships the binaries the
  manifests run.

Run: python3 -m pytest tests/k8s -q -p no:cacheprovider   (needs kubectl and a built `crm`)
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
BIN_DIR = Path(os.environ.get("CRM_BIN_DIR") or ROOT / "target" / "debug")

# The service binaries, their Deployment and their gRPC health service name.
SERVICES = {
    "contact": ("crm-contact", "crm.contact.v1.ContactService"),
    "pipeline": ("crm-pipeline", "crm.pipeline.v1.PipelineService"),
    "ticket": ("crm-ticket", "crm.ticket.v1.TicketService"),
    "analytics": ("crm-analytics", "crm.analytics.v1.AnalyticsService"),
}
BINARIES = {"crm", *(binary for binary, _ in SERVICES.values())}
# Callers of each service inside the suite (the DAG), besides the tenants.
DAG = {"pipeline": ["contact"], "ticket": ["contact"], "analytics": ["contact", "pipeline", "ticket"]}
# The keys of Secret crm-secrets the manifests may reference (documented in k8s/README.md).
SECRET_KEYS = {"database-url", "redis-url", "hs256-secret", "page-token-secret", "jwks.json"}
# Stand-ins for secrets created out of band (prod), to load the configuration with.
PLACEHOLDER_SECRETS = {
    "database-url": "postgres://crm:placeholder@db.example.internal:5432/crm",
    "redis-url": "redis://:placeholder@cache.example.internal:6379/0",
    "hs256-secret": "placeholder-hs256-secret-0123456789abcdef",
    "page-token-secret": "placeholder-page-token-secret-0123456789",
}
REQUIRED_KEYS = {"CRM__DATABASE__URL", "CRM__CACHE__REDIS_URL", "CRM__AUTH__PAGE_TOKEN_SECRET"}
AUTH_KEYS = {"CRM__AUTH__HS256_SECRET", "CRM__AUTH__JWKS_FILE"}
# What every CRM workload must be told in the cluster (README "Configuration").
CLUSTER_CONFIG = {
    "server.addr": "0.0.0.0:50051",
    "telemetry.log_format": "json",
    "cache.backend": "redis",
    "database.migrate_on_start": False,
    "clients.contact": "dns:///contact:50051",
    "clients.pipeline": "dns:///pipeline:50051",
    "clients.ticket": "dns:///ticket:50051",
    "telemetry.otlp_endpoint": "http://otel-collector:4317",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}
UID = 65532
# Mutual TLS (component mtls): which overlays have it, the variables naming its files, and
# the keys of Secret crm-tls-<service> (a kubernetes.io/tls Secret plus ca.crt, as written
# by `crm certs` and by cert-manager).
EXPECTED_TLS = {"dev": False, "prod": True}
TLS_FILE_VAR = re.compile(r"CRM__(SERVER|CLIENTS)__TLS_[A-Z_]*FILE")
MTLS_KEYS = {
    "CRM__SERVER__TLS_CERT_FILE", "CRM__SERVER__TLS_KEY_FILE", "CRM__SERVER__TLS_CLIENT_CA_FILE",
    "CRM__CLIENTS__TLS_CA_FILE", "CRM__CLIENTS__TLS_CERT_FILE", "CRM__CLIENTS__TLS_KEY_FILE",
}
TLS_SECRET_KEYS = {"ca.crt", "tls.crt", "tls.key"}


# --- rendering and the real configuration keys -------------------------------------------


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl is needed to render the overlays (kubectl kustomize)")
    return kubectl


_RENDERED: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        result = subprocess.run(
            [_kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
        _RENDERED[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _RENDERED[overlay]


def crm_binary() -> Path:
    path = BIN_DIR / "crm"
    if not path.is_file():
        pytest.fail(f"{path} not found: build it (cargo build --bins) or set CRM_BIN_DIR")
    return path


def config_show(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`crm config show` with exactly `env` (plus PATH/HOME), outside the repository."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    return subprocess.run(
        [str(crm_binary()), "config", "show"],
        env={**base, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


def flatten(value, prefix: str = "CRM") -> dict[str, object]:
    """{"server": {"addr": x}, "data_dir": y} -> {CRM__SERVER__ADDR: x, CRM__DATA_DIR: y}."""
    out: dict[str, object] = {}
    for key, item in value.items():
        name = f"{prefix}__{key.upper()}"
        if isinstance(item, dict):
            out.update(flatten(item, name))
        else:
            out[name] = item
    return out


@pytest.fixture(scope="session")
def defaults(tmp_path_factory) -> dict[str, object]:
    result = config_show({}, tmp_path_factory.mktemp("config"))
    assert result.returncode == 0, result.stderr
    return flatten(json.loads(result.stdout))


@pytest.fixture(scope="session")
def real_keys(defaults) -> set[str]:
    keys = set(defaults)
    # Sanity: the README's keys are there, so the flattening is right.
    assert {"CRM__SERVER__ADDR", "CRM__DATA_DIR", "CRM__DATABASE__URL", "CRM__AUTH__JWKS_FILE"} <= keys
    return keys


# --- helpers over rendered objects -------------------------------------------------------


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "Pod":
        return spec
    if workload["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    if workload["kind"] == "Pod":
        return workload["metadata"].get("labels", {})
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def is_crm_container(container: dict) -> bool:
    command = container.get("command") or []
    return bool(command) and command[0] in BINARIES


def crm_workloads(docs: list[dict]) -> list[dict]:
    """Workloads with at least one container running a CRM binary."""
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS and any(map(is_crm_container, containers(d)))]


def service_deployments(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for name in SERVICES:
        out.append((name, one(docs, "Deployment", name)))
    return out


def secret_data(secret: dict) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def container_env(docs: list[dict], container: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The environment a container gets: (name -> value, name -> where it comes from).

    envFrom ConfigMaps and Secrets are resolved from the rendered objects; secretKeyRef on a
    Secret that is not rendered (created out of band) gets a placeholder value.
    """
    env: dict[str, str] = {}
    source: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        prefix = ref.get("prefix", "")
        if "configMapRef" in ref:
            name = ref["configMapRef"]["name"]
            found = find(docs, "ConfigMap", name)
            assert found or ref["configMapRef"].get("optional"), f"envFrom ConfigMap {name} is not rendered"
            for obj in found:
                for key, value in (obj.get("data") or {}).items():
                    env[prefix + key] = str(value)
                    source[prefix + key] = f"ConfigMap {name}"
        if "secretRef" in ref:
            name = ref["secretRef"]["name"]
            found = find(docs, "Secret", name)
            assert found, f"envFrom Secret {name} is not rendered, its keys cannot be checked"
            for key, value in secret_data(found[0]).items():
                env[prefix + key] = value
                source[prefix + key] = f"Secret {name}"
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
            source[name] = "value"
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            found = find(docs, "Secret", ref["name"])
            if found:
                data = secret_data(found[0])
                assert ref["key"] in data, f"{name}: Secret {ref['name']} has no key {ref['key']}"
                env[name] = data[ref["key"]]
            else:
                assert ref["name"] == "crm-secrets", f"{name}: unknown out-of-band Secret {ref['name']}"
                assert ref["key"] in PLACEHOLDER_SECRETS, f"{name}: undocumented key {ref['key']}"
                env[name] = PLACEHOLDER_SECRETS[ref["key"]]
            source[name] = f"Secret {ref['name']} key {ref['key']}"
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[name] = str(one(docs, "ConfigMap", ref["name"])["data"][ref["key"]])
            source[name] = f"ConfigMap {ref['name']} key {ref['key']}"
        else:
            env[name] = ""
            source[name] = "fieldRef/resourceFieldRef"
    return env, source


def effective(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def addr_port(addr: str) -> int:
    """The port of a listen address (`0.0.0.0:50051`, `[::]:50052`)."""
    match = re.fullmatch(r"(?:\[[0-9a-fA-F:.]*\]|[^:\[\]]*):(\d+)", addr.strip())
    assert match, f"not a host:port listen address: {addr!r}"
    return int(match[1])


def server_container(deployment: dict) -> dict:
    (container,) = [c for c in pod_spec(deployment)["containers"] if is_crm_container(c)]
    return container


def uses_tls(docs: list[dict]) -> bool:
    """Whether any service Deployment of the overlay serves TLS."""
    return any(
        "CRM__SERVER__TLS_CERT_FILE" in container_env(docs, server_container(d))[0]
        for _, d in service_deployments(docs)
    )


# --- configuration keys ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_crm_variable_is_a_real_config_key(overlay, real_keys):
    docs = render(overlay)
    seen: dict[str, str] = {}
    for workload in docs:
        if workload["kind"] not in WORKLOAD_KINDS:
            continue
        for container in containers(workload):
            env, source = container_env(docs, container)
            for name in env:
                if name.startswith("CRM__"):
                    seen[name] = f"{workload['kind']}/{workload['metadata']['name']} ({source[name]})"
    # Keys of any ConfigMap, even one no container reads yet.
    for cm in find(docs, "ConfigMap"):
        for key in cm.get("data") or {}:
            if key.startswith("CRM__"):
                seen.setdefault(key, f"ConfigMap/{cm['metadata']['name']}")
    assert REQUIRED_KEYS <= set(seen), f"missing: {REQUIRED_KEYS - set(seen)}"
    unknown = {name: where for name, where in seen.items() if name not in real_keys}
    assert not unknown, f"not configuration keys (the binaries would refuse to start): {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_crm_workload_environment_loads(overlay, tmp_path):
    """The whole environment of each CRM container, secrets filled in, is accepted by the
    configuration loader (types, enums, validation) and gives the cluster values."""
    docs = render(overlay)
    workloads = crm_workloads(docs)
    assert {w["metadata"]["name"] for w in workloads} >= set(SERVICES) | {"crm-migrate"}
    for workload in workloads:
        for container in filter(is_crm_container, containers(workload)):
            env, _ = container_env(docs, container)
            crm_env = {k: v for k, v in env.items() if k.startswith("CRM__")}
            result = config_show(crm_env, tmp_path)
            where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
            assert result.returncode == 0, f"{where}: crm config show refused the environment:\n{result.stderr}"
            config = json.loads(result.stdout)
            for dotted, wanted in CLUSTER_CONFIG.items():
                assert effective(config, dotted) == wanted, f"{where}: {dotted} = {effective(config, dotted)!r}"
            assert effective(config, "database.url").startswith("postgres://"), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_set_the_required_secrets(overlay):
    docs = render(overlay)
    for name, deployment in service_deployments(docs):
        server = [c for c in containers(deployment) if is_crm_container(c)]
        assert len(server) == 1, f"{name}: expected one CRM container"
        container = server[0]
        env, source = container_env(docs, container)
        missing = REQUIRED_KEYS - set(env)
        assert not missing, f"{overlay}: {name} lacks {missing}"
        assert env.keys() & AUTH_KEYS, f"{overlay}: {name} sets neither of {AUTH_KEYS}"
        for key in REQUIRED_KEYS | (env.keys() & {"CRM__AUTH__HS256_SECRET"}):
            assert source[key].startswith("Secret "), f"{overlay}: {name}: {key} must come from a Secret, not {source[key]}"
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in SECRET_KEYS, f"{name}: undocumented secret key {ref['key']}"
        if "CRM__AUTH__JWKS_FILE" in env:
            # The file must be on a mounted Secret/ConfigMap volume that carries it.
            path = Path(env["CRM__AUTH__JWKS_FILE"])
            volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
            mounts = [m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
            assert mounts, f"{overlay}: {name}: no volume mounted over {path}"
            volume = volumes[mounts[0]["name"]]
            relative = str(path.relative_to(mounts[0]["mountPath"]))
            source_ = volume.get("secret") or volume.get("configMap")
            assert source_, f"{name}: JWKS volume is neither a Secret nor a ConfigMap"
            items = source_.get("items")
            assert items is None or relative in {i["path"] for i in items}, f"{name}: {relative} not in the volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_in_a_job_not_at_start(overlay):
    docs = render(overlay)
    job = one(docs, "Job", "crm-migrate")
    (container,) = [c for c in containers(job) if is_crm_container(c)]
    assert container["command"][:2] == ["crm", "migrate"]
    assert job["spec"].get("backoffLimit", 0) >= 1
    assert job["spec"].get("ttlSecondsAfterFinished") is not None
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    env, _ = container_env(docs, container)
    assert "CRM__DATABASE__URL" in env
    for name, deployment in service_deployments(docs):
        denv, _ = container_env(docs, pod_spec(deployment)["containers"][0])
        assert denv.get("CRM__DATABASE__MIGRATE_ON_START") == "false", name


# --- probes, shutdown, security ----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_probes_name_the_service(overlay):
    docs = render(overlay)
    for name, deployment in service_deployments(docs):
        binary, health = SERVICES[name]
        container = server_container(deployment)
        assert container["command"] == [binary], f"{name} runs {container['command']}"
        ports = {p["containerPort"]: p for p in container["ports"]}
        assert ports[50051].get("name") == "grpc"
        env, _ = container_env(docs, container)
        # kubelet's gRPC probes speak plaintext only: with TLS on the main port they must
        # ask the plaintext health listener (server.health_addr).
        if "CRM__SERVER__TLS_CERT_FILE" in env:
            assert env.get("CRM__SERVER__HEALTH_ADDR"), f"{overlay}: {name}: TLS on 50051 but no plaintext health_addr for the probes"
        probe_port = addr_port(env.get("CRM__SERVER__HEALTH_ADDR") or env["CRM__SERVER__ADDR"])
        assert probe_port in ports, f"{overlay}: {name}: probe port {probe_port} is not a container port"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{overlay}: {name} has no {probe}"
            grpc = container[probe].get("grpc")
            assert grpc, f"{overlay}: {name} {probe} is not a gRPC probe"
            assert grpc["port"] == probe_port, f"{overlay}: {name} {probe} port {grpc['port']}, not {probe_port}"
            # Readiness follows the service (NOT_SERVING until its database answers);
            # startup and liveness follow the process, so waiting never restarts it.
            expected = health if probe == "readinessProbe" else "liveness"
            assert grpc.get("service") == expected, f"{name} {probe} service {grpc.get('service')!r}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_the_drain(overlay, defaults):
    docs = render(overlay)
    for name, deployment in service_deployments(docs):
        env, _ = container_env(docs, pod_spec(deployment)["containers"][0])
        delay_ms = int(env.get("CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS", defaults["CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS"]))
        timeout_s = int(env.get("CRM__SERVER__SHUTDOWN_TIMEOUT_S", defaults["CRM__SERVER__SHUTDOWN_TIMEOUT_S"]))
        grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
        assert grace > 27, f"{overlay}: {name} terminationGracePeriodSeconds {grace}"
        assert grace > delay_ms / 1000 + timeout_s, (
            f"{overlay}: {name} grace {grace}s <= drain delay {delay_ms} ms + shutdown timeout {timeout_s} s"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crm_pods_run_restricted(overlay):
    docs = render(overlay)
    for workload in crm_workloads(docs):
        name = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (UID, UID, UID), name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        sa = one(docs, "ServiceAccount", spec["serviceAccountName"])
        assert sa.get("automountServiceAccountToken") is False, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(workload):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert not sc.get("privileged"), name
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: no emptyDir on /tmp"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_spread_over_nodes_and_zones(overlay):
    docs = render(overlay)
    for name, deployment in service_deployments(docs):
        spec = pod_spec(deployment)
        constraints = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
        assert set(constraints) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        for constraint in constraints.values():
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
            selector = constraint["labelSelector"]["matchLabels"]
            assert selector.items() <= pod_labels(deployment).items(), name


# --- mutual TLS ---------------------------------------------------------------------------


def _file_mode(source: dict, key: str) -> int:
    for item in source.get("items") or []:
        if item["key"] == key and "mode" in item:
            return item["mode"]
    return source.get("defaultMode", 0o644)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mtls_files_probes_and_both_sides(overlay, tmp_path):
    """With TLS on (CRM__SERVER__TLS_CERT_FILE in a Deployment), it is mutual TLS on every
    service: each TLS file is on the service's own Secret crm-tls-<name>, the probes ask
    the plaintext health port, server and clients both use TLS and the server requires
    client certificates."""
    docs = render(overlay)
    tls = uses_tls(docs)
    if overlay in EXPECTED_TLS:
        assert tls == EXPECTED_TLS[overlay], f"{overlay}: TLS {'on' if tls else 'off'}, expected {EXPECTED_TLS[overlay]}"
    if not tls:
        pytest.skip(f"{overlay} runs plaintext gRPC")
    (namespace,) = find(docs, "Namespace")
    # What `crm certs` writes per service: the Secret keys the volumes below must project.
    certs = tmp_path / "certs"
    result = subprocess.run(
        [str(crm_binary()), "certs", "--out", str(certs), "--namespace", namespace["metadata"]["name"],
         *(arg for name in SERVICES for arg in ("--service", name))],
        env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME")},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"crm certs failed:\n{result.stderr}"

    for workload in crm_workloads(docs):
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        is_service = workload["kind"] == "Deployment" and workload["metadata"]["name"] in SERVICES
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in filter(is_crm_container, containers(workload)):
            env, source = container_env(docs, container)
            if is_service:
                # Partial TLS does not work: a TLS client cannot call a plaintext server.
                missing = {k for k in MTLS_KEYS if not env.get(k)}
                assert not missing, f"{where}: mutual TLS needs {sorted(missing)}"
            # Every TLS file is on a read-only Secret volume carrying it: for a service its
            # own crm-tls-<name>, so that its certificate names it.
            for var, value in env.items():
                if not TLS_FILE_VAR.fullmatch(var) or not value:
                    continue
                path = Path(value)
                assert path.is_absolute(), f"{where}: {var}={value} is not absolute"
                mounts = sorted(
                    (m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])),
                    key=lambda m: len(m["mountPath"]),
                )
                assert mounts, f"{where}: {var}={value}: no volume mounted over it"
                mount = mounts[-1]
                assert mount.get("readOnly") is True, f"{where}: {mount['mountPath']} is not read-only"
                assert not mount.get("subPath"), f"{where}: {var}: subPath mounts miss Secret updates"
                secret = volumes[mount["name"]].get("secret")
                assert secret, f"{where}: {var}: volume {mount['name']} is not a Secret"
                if is_service:
                    wanted = f"crm-tls-{workload['metadata']['name']}"
                    assert secret["secretName"] == wanted, f"{where}: {var} on Secret {secret['secretName']}, not {wanted}"
                relative = str(path.relative_to(mount["mountPath"]))
                items = secret.get("items")
                key = relative if items is None else {i["path"]: i["key"] for i in items}.get(relative)
                assert key in TLS_SECRET_KEYS, f"{where}: {var}: {relative} is not one of the keys {sorted(TLS_SECRET_KEYS)}"
                if is_service:
                    assert (certs / workload["metadata"]["name"] / key).is_file(), f"{where}: `crm certs` writes no {key}"
                # Readable by the pod (files are root-owned, group fsGroup); the key by no one else.
                mode = _file_mode(secret, key)
                pod = spec["securityContext"]
                assert mode & 0o004 or (mode & 0o040 and pod.get("fsGroup") is not None), f"{where}: {key} mode {mode:o} unreadable"
                if key == "tls.key":
                    assert not mode & 0o007, f"{where}: tls.key mode {mode:o} is world-readable"
            if not is_service:
                continue

            # The loader accepts it and really turns both sides on.
            crm_env = {k: v for k, v in env.items() if k.startswith("CRM__")}
            result = config_show(crm_env, tmp_path)
            assert result.returncode == 0, f"{where}: crm config show refused the environment:\n{result.stderr}"
            config = json.loads(result.stdout)
            for dotted in ("server.tls_cert_file", "server.tls_key_file", "server.tls_client_ca_file",
                           "clients.tls_ca_file", "clients.tls_cert_file", "clients.tls_key_file"):
                assert str(effective(config, dotted)).strip(), f"{where}: {dotted} is empty"
            # Targets must not name plaintext http:// (refused when TLS is set).
            for target in ("contact", "pipeline", "ticket"):
                value = effective(config, f"clients.{target}")
                assert not value.startswith("http://"), f"{where}: clients.{target} = {value} is plaintext"

            # Probes on the plaintext health listener, a port of its own, not on the Service.
            health = addr_port(effective(config, "server.health_addr"))
            assert health != addr_port(effective(config, "server.addr")), f"{where}: health_addr on the TLS port"
            ports = {p["containerPort"]: p for p in container["ports"]}
            assert ports.get(health, {}).get("name") == "health", f"{where}: no container port health {health}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == health, f"{where}: {probe} not on {health}"
            service = one(docs, "Service", workload["metadata"]["name"])
            assert health not in {p["port"] for p in service["spec"]["ports"]}, f"{where}: plaintext health port on the Service"


# --- services, scaling, images, labels ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_services_match_the_client_targets(overlay):
    docs = render(overlay)
    for name, deployment in service_deployments(docs):
        service = one(docs, "Service", name)
        assert service["spec"].get("clusterIP") == "None", f"{name} must be headless"
        (port,) = service["spec"]["ports"]
        assert (port["port"], port["name"], port.get("appProtocol")) == (50051, "grpc", "grpc")
        assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    # Every dns:/// client target names a rendered headless Service on its port.
    env, _ = container_env(docs, pod_spec(one(docs, "Deployment", "analytics"))["containers"][0])
    for key in ("CRM__CLIENTS__CONTACT", "CRM__CLIENTS__PIPELINE", "CRM__CLIENTS__TICKET"):
        match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", env[key])
        assert match, f"{key}={env[key]}"
        service = one(docs, "Service", match[1])
        assert service["spec"].get("clusterIP") == "None"
        assert int(match[2]) in {p["port"] for p in service["spec"]["ports"]}


EXPECTED_SCALE = {
    # overlay: (replicas, HPA min, HPA max)
    "dev": (1, 1, 2),
    "prod": (3, 3, 20),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_autoscaling_and_disruption_budgets(overlay):
    docs = render(overlay)
    for name, deployment in service_deployments(docs):
        hpa = one(docs, "HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        replicas = deployment["spec"].get("replicas", 1)
        low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
        assert low <= replicas <= high, f"{overlay}: {name} replicas {replicas} outside HPA {low}-{high}"
        if overlay in EXPECTED_SCALE:
            assert (replicas, low, high) == EXPECTED_SCALE[overlay], f"{overlay}: {name}"
        pdb = one(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
        # A drain must be possible at the minimum scale, and must keep a quorum above it.
        if "minAvailable" in pdb["spec"]:
            assert pdb["spec"]["minAvailable"] < low, f"{overlay}: {name} PDB blocks drains at {low} replicas"
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1
        if overlay == "prod":
            assert pdb["spec"].get("minAvailable") == 2
        if overlay == "dev":
            assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"].get("minAvailable") == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images(overlay):
    docs = render(overlay)
    for workload in crm_workloads(docs):
        for container in filter(is_crm_container, containers(workload)):
            image = container["image"]
            assert image != "crm", f"{overlay}: the overlay must set the image"
            if overlay == "prod":
                assert re.fullmatch(r"registry\.example\.com/crm@sha256:[0-9a-f]{64}", image), image
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        for container in containers(workload):
            assert not container["image"].endswith(":latest") and ("@" in container["image"] or ":" in container["image"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_and_labels(overlay):
    docs = render(overlay)
    (namespace,) = find(docs, "Namespace")
    ns = namespace["metadata"]["name"]
    if overlay == "dev":
        assert ns == "crm-dev"
    if overlay == "prod":
        assert ns == "crm"
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] != "Namespace":
            assert meta.get("namespace") == ns, f"{doc['kind']}/{meta['name']} in {meta.get('namespace')}"
            assert meta.get("labels", {}).get("app.kubernetes.io/name"), f"{doc['kind']}/{meta['name']}"
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "crm", f"{doc['kind']}/{meta['name']}"
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        labels = pod_labels(workload)
        assert labels.get("app.kubernetes.io/part-of") == "crm" and labels.get("app.kubernetes.io/name")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_skips_carry_reasons(overlay):
    for doc in render(overlay):
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV2?_K8S_\d+=[^=]{20,}", value), f"{doc['metadata']['name']}: {key}: {value}"


# --- network policies --------------------------------------------------------------------

TENANT_NS = "tenant-a"
OTHER_NS = "elsewhere"
POD_IPS = ipaddress.ip_network("10.244.0.0/16")


def _selects(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label selector semantics; {} selects everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Endpoint:
    def __init__(self, name, namespace=None, labels=None, ip=None):
        self.name, self.namespace, self.labels, self.ip = name, namespace, labels or {}, ip

    def __repr__(self):
        return self.name


def _peer_matches(peer: dict, policy_ns: str, endpoint: Endpoint, namespaces: dict) -> bool:
    if "ipBlock" in peer:
        # Pod addresses (POD_IPS) are outside the ranges used for external services.
        ip = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if endpoint.namespace is None:
        return False  # selectors never match addresses outside the cluster
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespaces[endpoint.namespace]):
            return False
    elif endpoint.namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector"), endpoint.labels)


def _port_matches(rule_ports, port: int, protocol: str, endpoint: Endpoint) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        assert isinstance(p["port"], int), "named ports are not modelled"
        if p["port"] == port or (p.get("endPort") and p["port"] <= port <= p["endPort"]):
            return True
    return False


def _direction_allows(policies, pod: Endpoint, other: Endpoint, port, protocol, direction, namespaces) -> bool:
    kind, rules_key, peers_key = (
        ("Egress", "egress", "to") if direction == "egress" else ("Ingress", "ingress", "from")
    )
    selecting = [
        p for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and _selects(p["spec"]["podSelector"], pod.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"] + (["Egress"] if "egress" in p["spec"] else []))
    ]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(peer, policy["metadata"]["namespace"], other, namespaces) for peer in peers):
                continue
            if _port_matches(rule.get("ports"), port, protocol, other):
                return True
    return False


def allowed(policies, src: Endpoint, dst: Endpoint, port: int, protocol: str, namespaces) -> bool:
    egress = src.namespace is None or _direction_allows(policies, src, dst, port, protocol, "egress", namespaces)
    ingress = dst.namespace is None or _direction_allows(policies, dst, src, port, protocol, "ingress", namespaces)
    return egress and ingress


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_dag(overlay):
    docs = render(overlay)
    policies = find(docs, "NetworkPolicy")
    (namespace,) = find(docs, "Namespace")
    ns = namespace["metadata"]["name"]
    assert any(
        p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
        for p in policies
    ), "no default deny of ingress and egress"

    namespaces = {
        ns: {**namespace["metadata"].get("labels", {}), "kubernetes.io/metadata.name": ns},
        "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
        TENANT_NS: {"kubernetes.io/metadata.name": TENANT_NS, "crm.dev/clients": "true"},
        OTHER_NS: {"kubernetes.io/metadata.name": OTHER_NS},
    }
    hosts = iter(POD_IPS.hosts())
    pods = {
        w["metadata"]["name"]: Endpoint(w["metadata"]["name"], ns, pod_labels(w), str(next(hosts)))
        for w in docs if w["kind"] in WORKLOAD_KINDS
    }
    extra = [
        Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, str(next(hosts))),
        Endpoint("tenant-client", TENANT_NS, {"app": "client"}, str(next(hosts))),
        Endpoint("other-client", OTHER_NS, {"app": "client"}, str(next(hosts))),
        Endpoint("internet", None, {}, "203.0.113.7"),
    ]
    in_cluster_data = "postgres" in pods
    if not in_cluster_data:
        # Managed data stores: egress by ipBlock. Take an address of each block.
        blocks = {}
        for name, port in (("crm-egress-postgres", 5432), ("crm-egress-redis", 6379)):
            policy = one(docs, "NetworkPolicy", name)
            cidrs = [peer["ipBlock"]["cidr"] for rule in policy["spec"]["egress"] for peer in rule["to"] if "ipBlock" in peer]
            assert cidrs, f"{name}: managed data stores are reached by ipBlock"
            blocks[name] = str(next(iter(ipaddress.ip_network(cidrs[0]).hosts())))
        extra += [
            Endpoint("postgres", None, {}, blocks["crm-egress-postgres"]),
            Endpoint("redis", None, {}, blocks["crm-egress-redis"]),
        ]
    endpoints = {**pods, **{e.name: e for e in extra}}
    # 50052: the plaintext health listener (mtls), for the kubelet only: no pod reaches it.
    ports = [
        (50051, "TCP"), (50052, "TCP"), (5432, "TCP"), (6379, "TCP"), (4317, "TCP"),
        (53, "UDP"), (53, "TCP"), (443, "TCP"),
    ]

    expected = set()
    for service in SERVICES:
        expected.add(("tenant-client", service, 50051, "TCP"))
        expected |= {(service, "redis", 6379, "TCP"), (service, "otel-collector", 4317, "TCP")}
    for caller, callees in DAG.items():
        expected |= {(caller, callee, 50051, "TCP") for callee in callees}
    for workload in [*SERVICES, "crm-migrate"]:
        expected |= {(workload, "kube-dns", 53, "UDP"), (workload, "kube-dns", 53, "TCP"), (workload, "postgres", 5432, "TCP")}
    expected = {e for e in expected if e[0] in endpoints and e[1] in endpoints}

    actual = set()
    for src in endpoints.values():
        for dst in endpoints.values():
            if src is dst or (src.namespace != ns and dst.namespace != ns):
                continue  # traffic that does not touch the CRM namespace is not ours to police
            for port, protocol in ports:
                if allowed(policies, src, dst, port, protocol, namespaces):
                    actual.add((src.name, dst.name, port, protocol))
    assert actual - expected == set(), f"{overlay}: allowed but not in the DAG: {sorted(actual - expected)}"
    assert expected - actual == set(), f"{overlay}: needed but denied: {sorted(expected - actual)}"


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_copies_every_workspace_member_and_ships_the_binaries():
    dockerfile = (ROOT / "Dockerfile").read_text()
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for member in members:
        assert re.search(rf"^COPY {re.escape(member)}/Cargo.toml ", dockerfile, re.M), (
            f"Dockerfile: the dependency layer misses {member}/Cargo.toml"
        )
    assert re.search(r"^FROM rust:1\.95-bookworm|^ARG RUST_IMAGE=rust:1\.95-bookworm", dockerfile, re.M)
    assert "cargo build --release --locked --bins" in dockerfile
    assert re.search(r"^COPY proto proto", dockerfile, re.M), "shared/proto/build.rs reads ../../proto"
    assert "gcr.io/distroless/cc-debian12:nonroot" in dockerfile
    assert re.search(r"^USER 65532:65532", dockerfile, re.M)
    assert not re.search(r"^(ENTRYPOINT|CMD)\b", dockerfile, re.M), "each workload sets its command"
    shipped = set(re.search(r"for bin in ([^;]+);", dockerfile)[1].split())
    assert shipped == BINARIES
    for overlay in OVERLAYS:
        for workload in crm_workloads(render(overlay)):
            for container in filter(is_crm_container, containers(workload)):
                assert container["command"][0] in shipped
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"target/", "data/", ".git/"} <= set(ignored)
