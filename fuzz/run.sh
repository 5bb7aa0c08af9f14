#!/usr/bin/env bash
# Checks, builds and runs the fuzz targets, each for SECONDS (default 60); exits non-zero
# on a crash, a panic, a failed property, a hang (30 s on one input) or a lint.
#   bash fuzz/run.sh [SECONDS] [TARGET...]
# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer, sanitizer-coverage);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. FUZZ_SANITIZER=none builds
# without AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(filter_parser page_token)
export RUSTC_BOOTSTRAP=1
# The fuzz crate is its own workspace: the root `cargo fmt --all` and clippy skip it.
cargo fmt --all -- --check
cargo clippy --locked --all-targets --quiet -- -D warnings
# The `service` build is too slow to fuzz in CI, but it is type-checked and linted, so
# that it keeps compiling against the services' own parser and whitelists.
cargo clippy --locked --all-targets --features service --quiet -- -D warnings
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
sanitizer=(--sanitizer "${FUZZ_SANITIZER:-address}")
cargo fuzz build "${sanitizer[@]}"
for target in "${targets[@]}"; do
    log="target/fuzz-$target.log"
    mkdir -p "corpus/$target"
    if ! cargo fuzz run "${sanitizer[@]}" "$target" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed: the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
    echo "$target: $runs inputs in ${seconds} s, no failure ($(ls "corpus/$target" | wc -l) corpus entries)"
done
