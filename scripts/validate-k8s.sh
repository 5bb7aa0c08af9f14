#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests (k8s/): for every overlay in
# k8s/overlays/, render it with `kubectl kustomize`, validate the output against the
# Kubernetes 1.30 and 1.32 OpenAPI schemas in strict mode (kubernetes-validate, which ships
# its schemas), and scan it with checkov (no failed check allowed; a skip needs a
# `checkov.io/skipN: CKV_K8S_xx=reason` annotation with a written reason). No cluster needed.
#
#   bash scripts/validate-k8s.sh            # all overlays
#   bash scripts/validate-k8s.sh dev        # only these
#
# kubernetes-validate and checkov are installed with pip, quietly, into a virtualenv of
# their own (CRM_K8S_TOOLS, default ~/.cache/crm-k8s-tools) when missing, so checkov's
# pinned dependencies never touch the project's Python environment.
# Exit status: 0 when every overlay passes every check, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSIONS=(1.30.0 1.32.0)
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
TOOLS="${CRM_K8S_TOOLS:-$HOME/.cache/crm-k8s-tools}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'validate-k8s: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------
if command -v kubectl >/dev/null 2>&1; then
    render() { kubectl kustomize "$1"; }
    RENDERER="kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p' | sed 's/^/kustomize /')"
elif command -v kustomize >/dev/null 2>&1; then
    render() { kustomize build "$1"; }
    RENDERER="kustomize $(kustomize version 2>/dev/null)"
else
    die "needs kubectl (or kustomize) on PATH to render the overlays"
fi

tool_version() { "$TOOLS/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [[ "$(tool_version kubernetes-validate)" != "$KUBERNETES_VALIDATE_VERSION" ||
      "$(tool_version checkov)" != "$CHECKOV_VERSION" ]]; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and checkov $CHECKOV_VERSION into $TOOLS"
    [[ -x "$TOOLS/bin/python" ]] || python3 -m venv "$TOOLS" || die "python3 -m venv failed"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "checkov==$CHECKOV_VERSION" \
        || die "pip install of kubernetes-validate/checkov failed"
fi
KV="$TOOLS/bin/kubernetes-validate"
CHECKOV="$TOOLS/bin/checkov"

# kubernetes-validate ships one schema directory per version (v1.30.0-local-strict, ...):
# make sure the versions asked for are among them rather than trusting a fallback.
supported="$("$TOOLS/bin/python" - <<'EOF'
import os, kubernetes_validate
root = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
print(" ".join(sorted(d[1:-len("-local-strict")] for d in os.listdir(root) if d.endswith("-local-strict"))))
EOF
)"
for version in "${KUBERNETES_VERSIONS[@]}"; do
    [[ " $supported " == *" $version "* ]] ||
        die "kubernetes-validate $KUBERNETES_VALIDATE_VERSION has no strict schema for $version (has: $supported)"
done

# --- overlays ---------------------------------------------------------------------------
if [[ $# -gt 0 ]]; then
    overlays=("$@")
else
    overlays=()
    for dir in k8s/overlays/*/; do overlays+=("$(basename "$dir")"); done
fi
[[ ${#overlays[@]} -gt 0 ]] || die "no overlay under k8s/overlays"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failures=0
summary=()
for overlay in "${overlays[@]}"; do
    dir="k8s/overlays/$overlay"
    [[ -f "$dir/kustomization.yaml" ]] || die "$dir/kustomization.yaml not found"
    out="$work/$overlay"
    mkdir -p "$out"
    rendered="$out/rendered.yaml"
    status=()
    ok=1

    say "$overlay: render ($RENDERER)"
    if ! render "$dir" >"$rendered" 2>"$out/render.err"; then
        cat "$out/render.err" >&2
        summary+=("$overlay: FAILED to render")
        failures=$((failures + 1))
        continue
    fi
    count="$(grep -c '^kind:' "$rendered" || true)"
    status+=("$count resources")

    for version in "${KUBERNETES_VERSIONS[@]}"; do
        say "$overlay: kubernetes-validate --strict --kubernetes-version $version"
        if "$KV" --strict --quiet --kubernetes-version "$version" "$rendered" >"$out/kv.out" 2>&1; then
            status+=("schemas $version ok")
        else
            cat "$out/kv.out" >&2
            status+=("schemas $version FAILED")
            ok=0
        fi
    done

    # Every checkov skip must carry a reason: `CKV_K8S_xx=why` (checkov itself would accept
    # a bare id and record "No comment provided").
    say "$overlay: checkov skip annotations carry reasons"
    bad_skips="$("$TOOLS/bin/python" - "$rendered" <<'EOF'
import re, sys, yaml
bad = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    for key, value in annotations.items():
        if key.startswith("checkov.io/skip") and not re.fullmatch(r"CKV2?_K8S_\d+=[^=]{20,}", str(value)):
            bad.append(f'{doc["kind"]}/{doc["metadata"]["name"]}: {key}: {value}')
print("\n".join(bad))
EOF
)"
    if [[ -n "$bad_skips" ]]; then
        printf 'checkov skip without a written reason (want CKV_K8S_xx=reason):\n%s\n' "$bad_skips" >&2
        status+=("skip reasons FAILED")
        ok=0
    fi

    say "$overlay: checkov --framework kubernetes"
    # --skip-download: no call to the Prisma Cloud API (guidelines), the scan is offline.
    if (cd "$out" && "$CHECKOV" --framework kubernetes --file rendered.yaml --compact \
            --skip-download --quiet) >"$out/checkov.out" 2>"$out/checkov.err"; then
        checkov_status=ok
    else
        checkov_status=FAILED
        cat "$out/checkov.out" "$out/checkov.err" >&2
        ok=0
    fi
    # The counts line (--quiet prints it only with failures; run once more for it if needed).
    counts="$(grep -m1 -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/checkov.out" || true)"
    if [[ -z "$counts" ]]; then
        (cd "$out" && "$CHECKOV" --framework kubernetes --file rendered.yaml --compact \
            --skip-download) >"$out/checkov-full.out" 2>/dev/null || true
        counts="$(grep -m1 -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/checkov-full.out" || true)"
    fi
    status+=("checkov $checkov_status (${counts:-no counts})")

    if [[ $ok -eq 1 ]]; then
        summary+=("$overlay: ok — $(IFS=';'; echo "${status[*]}" | sed 's/;/; /g')")
    else
        summary+=("$overlay: FAILED — $(IFS=';'; echo "${status[*]}" | sed 's/;/; /g')")
        failures=$((failures + 1))
    fi
done

printf '\nsummary (kubernetes-validate %s, checkov %s):\n' "$KUBERNETES_VALIDATE_VERSION" "$CHECKOV_VERSION"
printf '  %s\n' "${summary[@]}"
if [[ $failures -gt 0 ]]; then
    printf 'validate-k8s: %d overlay(s) failed\n' "$failures" >&2
    exit 1
fi
printf 'validate-k8s: all %d overlay(s) pass\n' "${#overlays[@]}"
