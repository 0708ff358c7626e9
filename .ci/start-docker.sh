#!/usr/bin/env bash
# Start the Docker engine for the docker backend's tests, unless one already answers.
# Installs docker.io and debootstrap (the tests build their base image with it) if missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if docker info >/dev/null 2>&1; then
  exit 0
fi
log="${DOCKERD_LOG:-/var/log/insitu-dockerd.log}"
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "dockerd is up ($(docker info --format '{{.ServerVersion}}'), log: $log)"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not start; its log ($log) ends with:" >&2
tail -20 "$log" >&2
exit 1
