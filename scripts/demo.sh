#!/usr/bin/env bash
# The main job on the bundled fixture: dubs fixtures/speech-60s.mp4 from English into Spanish
# through the full element chain (demux → decode → dubchunker → stsbridge → avoffset → AAC → mux)
# against the bundled reference STS server, writes out/dubbed-<mode>.mp4 (+ .srt, the Spanish
# subtitles) and prints, per fragment, its time, transcript → translation, then a summary
# (fragments dubbed and fallen back, overflow and loudness, per-marker A/V sync, durations; in
# translate mode the recogniser's CPU and memory, and the dub listened back: what Whisper hears
# of the Spanish, sentence by sentence, against the translation sent).
#
#   scripts/demo.sh          # translate: offline ASR (Whisper base) → MT (apertium) → TTS
#                            #   (espeak-ng); voice-over: the original stays under the dub at
#                            #   −12 dB, so its sync beeps can still be measured
#   scripts/demo.sh translate --tts pico     # the clearer (non-free) voice, after
#                            #   scripts/install-deps.sh --with-pico; --asr whisper-tiny-en|pocketsphinx
#   scripts/demo.sh echo     # echo STS: the dub is the original speech (sync check)
#   scripts/demo.sh tone     # tone STS: the speech is replaced by a 440 Hz tone, audibly
#
# Works on a fresh Debian 12 machine with a Rust toolchain: installs the Debian packages it
# needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-translate}"
EXTRA=()
case "$MODE" in
  translate) EXTRA=(--original-mix-db -12 --verbose) ;;
  echo|tone|silence) ;;
  *) echo "usage: $0 [translate|echo|tone|silence] [dub-file options]" >&2; exit 2 ;;
esac
[ $# -gt 1 ] && EXTRA+=("${@:2}")

scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo not found: install a Rust toolchain (1.95 or newer) with rustup" >&2
  exit 1
fi
mkdir -p out
cargo run --release --locked -p dubbing-worker --example dub-file -- \
  --input fixtures/speech-60s.mp4 --output "out/dubbed-$MODE.mp4" --sts-mode "$MODE" \
  "${EXTRA[@]}"
echo "output: out/dubbed-$MODE.mp4"
[ -f "out/dubbed-$MODE.srt" ] && echo "subtitles: out/dubbed-$MODE.srt"
exit 0
