#!/usr/bin/env bash
# The whole test suite: formatting, lints, proto lint, Rust tests (SQLite, Postgres,
# Redis, processes), the Python end-to-end test against the four services as processes,
# and the offline validation of the Kubernetes manifests.
# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379
# (scripts/ensure-services.sh starts them).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "services"
bash scripts/ensure-services.sh

step "python tools (buf, grpcio-tools, pytest)"
python3 -m pip install --quiet --disable-pip-version-check buf-bin -r tests/e2e/requirements.txt -r tests/k8s/requirements.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "buf lint and format"
(cd proto && buf lint && buf format --diff --exit-code)

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (SQLite and Postgres, real Redis)"
cargo test --workspace --locked

step "build the service binaries"
cargo build --workspace --bins --locked

step "end-to-end: four processes, Postgres, Redis, Python client"
CRM_BIN_DIR="$PWD/target/debug" python3 -m pytest tests/e2e -q -p no:cacheprovider

step "kubernetes: render, schema-validate (1.30, 1.32), checkov"
bash scripts/validate-k8s.sh

step "kubernetes: manifests against the real config keys, probes, policies"
CRM_BIN_DIR="$PWD/target/debug" python3 -m pytest tests/k8s -q -p no:cacheprovider

step "fuzz: filter parser and page tokens, 60 s each (cargo-fuzz, see docs/fuzzing.md)"
bash fuzz/run.sh 60
