#!/usr/bin/env bash
# The main job on the bundled fixture: dubs fixtures/speech-60s.mp4 through the full element
# chain (demux → decode → dubchunker → stsbridge → avoffset → AAC → mux) against the bundled
# reference STS server, writes out/dubbed-<mode>.mp4 and prints a summary (fragments dubbed and
# fallen back, per-marker A/V sync, output durations).
#
#   scripts/demo.sh          # echo STS: the dub is the original speech (sync check)
#   scripts/demo.sh tone     # tone STS: the speech is replaced by a 440 Hz tone, audibly
#
# Works on a fresh Debian 12 machine with a Rust toolchain: installs the Debian packages it
# needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-echo}"
case "$MODE" in echo|tone|silence) ;; *) echo "usage: $0 [echo|tone|silence]" >&2; exit 2 ;; esac

scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo not found: install a Rust toolchain (1.95 or newer) with rustup" >&2
  exit 1
fi
mkdir -p out
cargo run --release --locked -p dubbing-worker --example dub-file -- \
  --input fixtures/speech-60s.mp4 --output "out/dubbed-$MODE.mp4" --sts-mode "$MODE"
echo "output: out/dubbed-$MODE.mp4"
