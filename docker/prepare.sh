#!/usr/bin/env bash
# Everything an image build needs on a fresh Debian machine without a registry.
# Usage: docker/prepare.sh [cpu|gpu] (default cpu); the variant decides the wheelhouse:
#   1. a Docker engine: Debian's docker.io, and dockerd started in the background if none answers;
#      Debian's docker-compose, which the SageMaker SDK's local mode runs;
#   2. base image ssd-base:bookworm from debootstrap (minbase + Python 3.11) via `docker import`;
#   3. the variant's wheelhouse (docker/wheelhouse.sh, cached in build/wheelhouse-VARIANT-PINS) linked
#      into wheelhouse/, so the build needs no package index. wheelhouse/ then holds that variant's
#      wheels only (the CPU build does not send the GPU's 2 GB to the engine).
# Idempotent: each step is skipped when its result is there. Needs root for 1 and 2.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
variant=${1:-cpu}
case "$variant" in
    cpu) marker="mxnet-*.whl" ;;
    gpu) marker="mxnet_cu112-*.whl" ;;
    *) echo "prepare: the variant must be cpu or gpu, not $variant" >&2; exit 2 ;;
esac
base_image=${BASE_IMAGE_TAG:-ssd-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log=${DOCKERD_LOG:-/var/log/ssd-dockerd.log}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
        || ! command -v docker-compose >/dev/null 2>&1; then
    echo "prepare: installing docker.io, docker-compose and debootstrap"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "prepare: starting dockerd (log: $log)"
    as_root sh -c "nohup dockerd >'$log' 2>&1 &"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "prepare: dockerd did not start; see $log" >&2; tail -20 "$log" >&2; exit 1; }
fi

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    echo "prepare: building $base_image with debootstrap"
    rootfs=$(mktemp -d)
    trap 'as_root rm -rf "$rootfs"' EXIT
    as_root debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,libquadmath0,ca-certificates \
        bookworm "$rootfs" "$mirror" >/dev/null
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    as_root tar -C "$rootfs" -c . | docker import - "$base_image" >/dev/null
fi

# A wheelhouse belongs to one set of pins: a change to the requirement files makes a new one.
pins=$(cat "$root"/docker/constraints.txt "$root"/docker/image-requirements.txt "$root"/docker/gpu-requirements.txt \
       | sha256sum | cut -c1-12)
if ! compgen -G "$root/wheelhouse/$marker" >/dev/null || [ ! -e "$root/wheelhouse/.pins-$variant-$pins" ]; then
    cache="$root/build/wheelhouse-$variant-$pins"
    if ! compgen -G "$cache/$marker" >/dev/null; then
        echo "prepare: downloading the $variant wheelhouse into $cache"
        PYTHON=${PYTHON:-$root/.venv/bin/python} bash "$root/docker/wheelhouse.sh" "$cache" "$variant"
    fi
    echo "prepare: wheelhouse/ <- $cache"
    find "$root/wheelhouse" -mindepth 1 ! -name .keep -delete
    cp -l "$cache"/* "$root/wheelhouse/" 2>/dev/null || cp "$cache"/* "$root/wheelhouse/"
    touch "$root/wheelhouse/.pins-$variant-$pins"
fi
echo "prepare: docker engine up, $base_image present, wheelhouse/ holds the $variant wheels"
