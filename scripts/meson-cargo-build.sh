#!/bin/sh
# Called by meson.build: builds the plugin with cargo and copies it to meson's output path.
# usage: meson-cargo-build.sh SOURCE_DIR CARGO_TARGET_DIR PROFILE OUTPUT
set -eu
src=$1 target=$2 profile=$3
case "$4" in /*) output=$4 ;; *) output="$PWD/$4" ;; esac
cd "$src"
cargo build --locked -p gst-plugin-dubbing --lib --profile "$profile" --target-dir "$target"
case "$profile" in dev) dir=debug ;; *) dir=$profile ;; esac
cp "$target/$dir/libgstdubbing.so" "$output"
