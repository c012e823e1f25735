#!/usr/bin/env bash
# Proves the meson build: setup, compile, install into a staging dir, then gst-inspect the
# installed plugin from there.
set -euo pipefail
cd "$(dirname "$0")/.."
build=target/meson-build
stage=target/meson-stage
rm -rf "$build" "$stage"
meson setup "$build" --prefix=/usr --buildtype=debug -Dcargo_target_dir="$PWD/target" >/dev/null
meson compile -C "$build"
meson install -C "$build" --destdir "$PWD/$stage" >/dev/null
plugin=$(find "$stage" -name libgstdubbing.so -path '*/gstreamer-1.0/*')
[ -n "$plugin" ] || { echo "meson install did not put libgstdubbing.so in a gstreamer-1.0 dir" >&2; exit 1; }
echo "installed: ${plugin#"$stage"}"
for element in dubchunker stsbridge avoffset cc608insert; do
  GST_REGISTRY="$PWD/$stage/registry.bin" GST_PLUGIN_PATH="$(dirname "$plugin")" \
    gst-inspect-1.0 "$element" >/dev/null
  echo "gst-inspect-1.0 $element: ok"
done
