#!/usr/bin/env bash
# Run the hybridstore test suite: services (PostgreSQL, Redis), all targets,
# then doc tests (which --all-targets does not include), then the Python client's tests
# (clients/python, in a virtualenv under target/, against the debug binary).
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

# A clean checkout (CI) gains nothing from incremental compilation, which adds ~2 GB to target/.
if [[ ${CI:-} == true && -z ${CARGO_INCREMENTAL:-} ]]; then
    export CARGO_INCREMENTAL=0
fi

# The build needs a few GB: say so up front rather than let a full disk surface as a linker crash.
target_dir="${CARGO_TARGET_DIR:-target}"
[[ $target_dir == /* ]] || target_dir="$PWD/$target_dir"
need_kib=$((5 * 1024 * 1024))
df_path=$target_dir
[[ -d $df_path ]] || df_path=$(dirname "$target_dir")
free_kib=$(df -Pk "$df_path" | awk 'NR == 2 { print $4 }' || true)
if [[ $free_kib =~ ^[0-9]+$ ]] && ((free_kib < need_kib)); then
    printf 'warning: %s MiB free on the disk of %s; the test build needs about 5 GiB (less if target/ already holds most of it)\n' \
        "$((free_kib / 1024))" "$target_dir" >&2
fi

step "cargo test --workspace --all-targets --locked $*"
cargo test --workspace --all-targets --locked "$@"

step "cargo test --workspace --doc --locked"
cargo test --workspace --doc --locked

# The Python client (clients/python) against the debug binary `cargo test` just built: a
# virtualenv in target/pyenv (made once), the client and pytest installed into it from PyPI.
step "python: pytest clients/python/tests (virtualenv $target_dir/pyenv)"
[[ -x $target_dir/pyenv/bin/python ]] || python3 -m venv "$target_dir/pyenv"
"$target_dir/pyenv/bin/python" -m pip install --quiet --disable-pip-version-check -e 'clients/python[test]'
HYBRIDSTORE_BIN="${HYBRIDSTORE_BIN:-$target_dir/debug/hybridstore}" \
    "$target_dir/pyenv/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests
