#!/usr/bin/env bash
# The whole test suite: formatting, lints, proto lint, Rust tests (SQLite, Postgres,
# Redis), then the Python end-to-end test against the four services as processes.
# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379
# (scripts/ensure-services.sh starts them).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "services"
bash scripts/ensure-services.sh

step "python tools (buf, grpcio-tools, pytest)"
python3 -m pip install --quiet --disable-pip-version-check buf-bin -r tests/e2e/requirements.txt

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
