#!/usr/bin/env bash
# Installs the Debian packages needed to build the plugin and run its tests and demo.
# Idempotent: packages already present are left alone; runs apt only when something is missing.
set -euo pipefail

PKGS=(
  pkg-config build-essential meson ninja-build
  # signalsmith-stretch (pitch-kept time compression) generates its bindings with bindgen
  libclang-dev
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

# nginx is only used by tests that start their own instance; never leave the system one running.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
