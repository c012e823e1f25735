#!/usr/bin/env bash
# Runs every test: unit and element tests of the whole workspace, then the meson install check.
# Works on a fresh Debian 12 machine: it installs the Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo test --workspace --locked
scripts/validate-openapi.sh
scripts/meson-check.sh
