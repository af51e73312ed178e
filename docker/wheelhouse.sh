#!/usr/bin/env bash
# Fills a wheelhouse for offline (air-gapped) image builds: every wheel the image installs, and
# Horovod's source, for the Python of the image. Usage: docker/wheelhouse.sh DIR [cpu|gpu] [PYVER]
# PYVER defaults to this Python's (both variants on the default Debian bookworm base have 3.11;
# an nvidia/cuda Ubuntu 22.04 base has 3.10). gpu adds mxnet-cu112 and the CUDA 11 wheels
# (docker/gpu-requirements.txt, about 2.1 GB in all). Copy DIR's files into wheelhouse/ before
# `docker build` (docker/prepare.sh does).
set -euo pipefail
out=${1:?usage: docker/wheelhouse.sh DIR [cpu|gpu] [PYVER]}
variant=${2:-cpu}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
pyver=${3:-$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
case "$variant" in
    cpu) packages=(mxnet) ;;
    gpu) packages=(mxnet-cu112 -r "$here/gpu-requirements.txt") ;;
    *) echo "variant must be cpu or gpu, not $variant" >&2; exit 2 ;;
esac
mkdir -p "$out"
"$python" -m pip download -q -d "$out" -c "$here/constraints.txt" --only-binary=:all: \
    --python-version "$pyver" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform linux_x86_64 --implementation cp \
    "${packages[@]}" -r "$here/image-requirements.txt"
"$python" -m pip download -q -d "$out" -c "$here/constraints.txt" --no-deps --no-binary=horovod horovod
ls "$out" | wc -l | xargs echo "wheelhouse $out: files:"
