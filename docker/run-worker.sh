#!/bin/sh
# Started by MediaMTX's runOnReady for a path live/<id>/in: one dubbing-worker for stream <id>.
# MediaMTX stops it (SIGINT) when the path is no longer ready; the worker then finalizes its
# output and exits. Each worker's /metrics port is derived from its stream id (9100–9999), so
# Prometheus can be pointed at stable addresses.
set -eu
id="$1"
port=$((9100 + $(printf '%s' "$id" | cksum | cut -d' ' -f1) % 900))
export WORKER_METRICS_PORT="${WORKER_METRICS_PORT:-$port}"
export WORKER_METRICS_BIND="${WORKER_METRICS_BIND:-0.0.0.0}"
exec dubbing-worker --stream-id "$id" --log-json
