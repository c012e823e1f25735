#!/usr/bin/env bash
# Runs every test: unit and element tests of the whole workspace, the installed worker, then the
# meson install check.
# Works on a fresh Debian 12 machine: it installs the Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The plugin .so first: some tests run gst-launch-1.0/gst-inspect-1.0 on it.
cargo build --workspace --locked
cargo test --workspace --locked

# `cargo install` gives a working dubbing-worker: install it into a temporary root (debug
# profile, this build's target dir: no second build) and run the worker's CLI tests against
# the installed binary (--workspace: the same features as above, nothing rebuilt).
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
install_root=$(mktemp -d)
trap 'rm -rf "$install_root"' EXIT
CARGO_TARGET_DIR="$target_dir" cargo install --locked --debug --quiet \
  --path crates/worker --root "$install_root"
"$install_root/bin/dubbing-worker" --help >/dev/null
DUBBING_WORKER_BIN="$install_root/bin/dubbing-worker" \
  cargo test --workspace --locked --test worker_cli

scripts/validate-openapi.sh
scripts/validate-asyncapi.sh
scripts/meson-check.sh
