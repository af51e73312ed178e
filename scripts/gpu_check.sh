#!/usr/bin/env bash
# The GPU image on a GPU host (NVIDIA driver and container runtime installed), in about 10 minutes:
# training steps on every GPU in FP32 and AMP for resnet-50@512 and vgg-16@300 (img/s per GPU), a
# 2-worker Horovod allreduce through NCCL, `serve` on the GPU with one request, and bench_train
# against GluonCV (installed in the throwaway container when it can be). Findings: one JSON file.
#
# Usage: scripts/gpu_check.sh [IMAGE] [OUTPUT]   (defaults: ssd-detector:gpu, ./gpu-check.json)
# The scripts run from this checkout inside the image: build the image from the same checkout.
# GPU_CHECK_ARGS adds gpu_check.py options, e.g. "--sections train_steps,allreduce".
# GPU_CHECK_DEVICE=cpu runs everything on the CPU with a tiny network and no --gpus: the check of
# this script on a machine without a GPU (tests/image/test_gpu_image.py does that).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
image=${1:-ssd-detector:gpu}
output=$(realpath -m "${2:-gpu-check.json}")
device=${GPU_CHECK_DEVICE:-gpu}
read -r -a extra <<< "${GPU_CHECK_ARGS:-}"
mkdir -p "$(dirname "$output")"
case "$device" in
    gpu) gpus=(--gpus all) ;;
    # No driver: the CUDA stub the entry point would choose (this bypasses the entry point).
    cpu) gpus=(-e LD_LIBRARY_PATH=/opt/cuda-stub); extra+=(--quick) ;;
    *) echo "GPU_CHECK_DEVICE must be gpu or cpu, not $device" >&2; exit 2 ;;
esac
# The scripts and pins come from this checkout, read-only; the findings go to OUTPUT's folder.
# --shm-size: the data workers pass batches through shared memory.
docker run --rm "${gpus[@]}" --shm-size 2g --user "$(id -u):$(id -g)" -e HOME=/tmp \
    -v "$root/scripts:/check/scripts:ro" -v "$root/docker:/check/docker:ro" \
    -v "$(dirname "$output"):/out" --entrypoint /opt/venv/bin/python "$image" \
    /check/scripts/gpu_check.py --device "$device" --output "/out/$(basename "$output")" "${extra[@]}"
