# syntax=docker/dockerfile:1
#
# One image, five binaries in /usr/local/bin: `crm` (serve, migrate, token, config show),
# `crm-contact`, `crm-pipeline`, `crm-ticket`, `crm-analytics`. No ENTRYPOINT: every
# Kubernetes workload sets its own `command` (k8s/base). Build from the repository root:
#
#   docker build -t crm:dev .
#
# The runtime image is distroless (no shell) and runs as UID/GID 65532; with the
# configuration the manifests give (Postgres URL, HS256 secret or JWKS file) the binaries
# write no files, so the root filesystem can be mounted read-only.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# 1. Dependency layer: the manifests of every workspace member with stub sources, so that
#    the (slow) build of the external crates is cached until Cargo.toml/Cargo.lock change.
#    The stubs and their fingerprints are then removed; the external crates stay in target/.
COPY Cargo.toml Cargo.lock ./
COPY shared/proto/Cargo.toml shared/proto/Cargo.toml
COPY shared/platform/Cargo.toml shared/platform/Cargo.toml
COPY services/contact/Cargo.toml services/contact/Cargo.toml
COPY services/pipeline/Cargo.toml services/pipeline/Cargo.toml
COPY services/ticket/Cargo.toml services/ticket/Cargo.toml
COPY services/analytics/Cargo.toml services/analytics/Cargo.toml
COPY services/suite/Cargo.toml services/suite/Cargo.toml
RUN set -eux; \
    for crate in shared/proto shared/platform services/contact services/pipeline \
                 services/ticket services/analytics; do \
        mkdir -p "$crate/src"; : > "$crate/src/lib.rs"; \
    done; \
    for crate in services/contact services/pipeline services/ticket services/analytics \
                 services/suite; do \
        mkdir -p "$crate/src"; echo 'fn main() {}' > "$crate/src/main.rs"; \
    done; \
    echo 'fn main() {}' > shared/proto/build.rs; \
    cargo build --release --locked --bins; \
    rm -rf shared/proto/src shared/proto/build.rs shared/platform/src services/*/src \
           target/release/.fingerprint/crm-* target/release/build/crm-proto-*

# 2. The real sources. shared/proto/build.rs compiles ../../proto, so proto/ comes too.
COPY proto proto
COPY shared shared
COPY services services
# COPY keeps the context's modification times, which can be older than the stubs' build:
# touch the sources so that cargo rebuilds the workspace crates whatever their mtimes.
RUN set -eux; \
    find shared services proto -type f \( -name '*.rs' -o -name '*.proto' \) -exec touch {} +; \
    cargo build --release --locked --bins; \
    mkdir -p /out; \
    for bin in crm crm-contact crm-pipeline crm-ticket crm-analytics; do \
        cp "target/release/$bin" /out/; \
    done

# ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="crm" \
      org.opencontainers.image.description="CRM suite: contact, pipeline, ticket and analytics gRPC services" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ /usr/local/bin/
# data_dir (./data) is only used by the embedded SQLite default and a generated signing
# key; under the manifests' read-only root it is not writable, so a pod missing its
# secrets fails loudly instead of making a key of its own. Only /tmp is an emptyDir.
WORKDIR /home/nonroot
# Container defaults (the manifests set them again): listen on all interfaces, JSON logs.
ENV CRM__SERVER__ADDR=0.0.0.0:50051 \
    CRM__TELEMETRY__LOG_FORMAT=json
EXPOSE 50051
USER 65532:65532
# No ENTRYPOINT/CMD on purpose: each Deployment (and the migration Job) sets `command`.
