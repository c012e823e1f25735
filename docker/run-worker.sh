#!/bin/sh
# Started by MediaMTX's runOnReady for a path live/<id>/in: one dubbing-worker for stream <id>.
# MediaMTX stops it (SIGINT) when the path is no longer ready; the worker then finalizes its
# output and exits.
#
# /metrics: each worker takes any free port (WORKER_METRICS_PORT=0: two workers can never
# clash, as ports derived from the stream id did) and writes a Prometheus file-based
# discovery target, $WORKER_METRICS_SD_DIR/<id>.json ({"targets": ["<host>:<port>"], "labels":
# {"stream_id": "<id>"}}), removed when it exits. Prometheus reads that directory
# (docker/prometheus.yml, file_sd_configs); the host written is WORKER_METRICS_SD_HOST
# (the MediaMTX container's name in docker/compose.yaml).
set -eu
id="$1"
export WORKER_METRICS_PORT="${WORKER_METRICS_PORT:-0}"
export WORKER_METRICS_BIND="${WORKER_METRICS_BIND:-0.0.0.0}"
export WORKER_METRICS_SD_DIR="${WORKER_METRICS_SD_DIR:-/var/run/dubbing/sd}"
mkdir -p "$WORKER_METRICS_SD_DIR"
exec dubbing-worker --stream-id "$id" --log-json
