#!/usr/bin/env bash
# Runs every test: unit and element tests of the whole workspace, then the meson install check.
# Works on a fresh Debian 12 machine: it installs the Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The plugin .so first: some tests run gst-launch-1.0/gst-inspect-1.0 on it.
cargo build --workspace --locked
cargo test --workspace --locked
scripts/validate-openapi.sh
scripts/meson-check.sh
