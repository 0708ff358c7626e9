#!/usr/bin/env bash
# Build a Python base image with no registry: a Debian root filesystem made by debootstrap,
# with a Python virtual environment on PATH (so `pip install` works as in python:*-slim),
# imported with `docker import`. Needs root, debootstrap and a running Docker engine.
#
#   examples/base-image/debian.sh [TAG]          # default tag: insitu-base:bookworm
#
# Skips the build when TAG already exists (set FORCE=1 to rebuild). MIRROR picks the
# Debian mirror; CA_BUNDLE (default: the host's) is added to the image so that pip can
# reach PyPI through a TLS-intercepting proxy.
set -euo pipefail
TAG="${1:-insitu-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [ -z "${FORCE:-}" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed: apt-get install debootstrap" >&2; exit 1; }

work="$(mktemp -d /var/tmp/insitu-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
start=$(date +%s)
echo "debootstrap $SUITE from $MIRROR into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1; }

# A virtual environment as the image's Python, so pip installs without PEP 668 refusals.
chroot "$root" /usr/bin/python3 -m venv /opt/python
if [ -f "$CA_BUNDLE" ]; then
  cp "$CA_BUNDLE" "$root/usr/local/share/ca-certificates/build-host.crt"
  cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python"]' \
  - "$TAG" >/dev/null
echo "built $TAG in $(( $(date +%s) - start )) s"
