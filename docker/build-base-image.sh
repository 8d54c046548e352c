#!/usr/bin/env bash
# Build a Debian bookworm base image locally with debootstrap, for sites that cannot reach a container
# registry (the Dockerfile's default base is Debian's official debian:bookworm-slim from Docker Hub). Only a
# Debian package mirror is needed (the same one apt uses). The result is imported with `docker import` as IMAGE;
# build on it with `--build-arg BASE_IMAGE=IMAGE` (compose: SLM_BASE_IMAGE=IMAGE).
#
#   docker/build-base-image.sh [IMAGE] [MIRROR]
#
# IMAGE defaults to slm-server-base:bookworm, MIRROR to $DEBIAN_MIRROR or http://deb.debian.org/debian. An
# IMAGE of debian:bookworm-slim stands in for the official image on an engine that cannot pull it, so the
# Dockerfile's default builds unchanged (scripts/docker-e2e.sh does this inside its private engine); an IMAGE
# already present is kept, so an official image is never replaced.
# Needs root (debootstrap), debootstrap, and a running Docker engine (DOCKER_HOST is honoured).
set -euo pipefail

image="${1:-slm-server-base:bookworm}"
mirror="${2:-${DEBIAN_MIRROR:-http://deb.debian.org/debian}}"
docker_cli="${DOCKER_CLI:-docker}"

if "$docker_cli" image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image already present"
    exit 0
fi

rootfs="$(mktemp -d /tmp/slm-base-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap bookworm from $mirror into $rootfs"
debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror"

# Point the image's apt at the same mirror, with security updates, and keep it small.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SOURCES
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb

tar --numeric-owner -C "$rootfs" -c . | "$docker_cli" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$image"
echo "imported $image"
