#!/usr/bin/env bash
# Run the hybridstore test suite: services (PostgreSQL, Redis), all targets,
# then doc tests (which --all-targets does not include).
#
# Extra arguments go to the first `cargo test` invocation.
# HYBRIDSTORE_SKIP_SERVICES=1 skips the services step (log-only crates).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '==> %s\n' "$*" >&2; }

if [[ ${HYBRIDSTORE_SKIP_SERVICES:-0} == 1 ]]; then
    step "services: skipped (HYBRIDSTORE_SKIP_SERVICES=1)"
else
    step "services: tools/services.sh"
    # Capture first: `eval "$(cmd)"` alone would hide a failing cmd from set -e.
    services_env=$(tools/services.sh)
    eval "$services_env"
    export DATABASE_URL REDIS_URL
fi

step "cargo test --workspace --all-targets --locked $*"
cargo test --workspace --all-targets --locked "$@"

step "cargo test --workspace --doc --locked"
cargo test --workspace --doc --locked
