# ssd-detector: SageMaker-style image that trains (`train`) and hosts (`serve`) an SSD detector.
#
# Build arguments:
#   VARIANT=gpu|cpu   gpu (default): mxnet-cu112, Horovod with NCCL and Gloo.
#                     cpu: mxnet (oneDNN), Horovod with Gloo.
#   BASE_IMAGE        the runtime base. GPU default: NVIDIA CUDA 11.7 + cuDNN 8 runtime (Ubuntu 22.04).
#                     For cpu pass a Debian or Ubuntu image, e.g. debian:bookworm-slim.
#   BUILD_IMAGE       where Horovod is compiled: the matching devel image (same distribution and
#                     Python as BASE_IMAGE). For cpu, BASE_IMAGE itself will do.
#   FETCH_WEIGHTS     auto (default): put the four base networks' ImageNet weights in the image if
#                     the model zoo can be reached; 1: fail without them; 0: do not try.
# Offline and air-gapped builds: put wheels in wheelhouse/ (docker/wheelhouse.sh makes them);
# when it holds any, pip installs from it alone.
ARG BASE_IMAGE=nvidia/cuda:11.7.1-cudnn8-runtime-ubuntu22.04
ARG BUILD_IMAGE=nvidia/cuda:11.7.1-cudnn8-devel-ubuntu22.04

# ---------------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
ARG VARIANT=gpu
ARG FETCH_WEIGHTS=auto
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ cmake make \
       libgomp1 libquadmath0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY docker/constraints.txt docker/image-requirements.txt /build/
COPY wheelhouse/ /build/wheelhouse/
RUN python3 -m venv /opt/venv \
    && if compgen -G "/build/wheelhouse/*.whl" > /dev/null; then \
         export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build/wheelhouse; fi \
    && case "${VARIANT}" in \
         gpu) mxnet="mxnet-cu112"; export HOROVOD_GPU_OPERATIONS=NCCL; \
              # No driver at build time: MXNet and Horovod's build load the CUDA stub instead.
              ln -sf /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1; \
              export LD_LIBRARY_PATH="/usr/local/cuda/lib64/stubs:${LD_LIBRARY_PATH:-}" ;; \
         cpu) mxnet=mxnet ;; \
         *) echo "VARIANT must be gpu or cpu, not ${VARIANT}" >&2; exit 1 ;; \
       esac \
    && /opt/venv/bin/pip install --no-cache-dir -c /build/constraints.txt "${mxnet}" \
       -r /build/image-requirements.txt \
    && HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
       HOROVOD_WITHOUT_PYTORCH=1 MAKEFLAGS="-j$(nproc)" \
       /opt/venv/bin/pip install --no-cache-dir --no-build-isolation -c /build/constraints.txt horovod \
    && /opt/venv/bin/python -c "import horovod.mxnet, mxnet, cv2, flask, gunicorn, boto3"

COPY pyproject.toml README.md /build/src-tree/
COPY src /build/src-tree/src
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation /build/src-tree \
    && /opt/venv/bin/pip uninstall -y -q wheel

# ImageNet weights of the base networks, in the model zoo's layout under MXNET_HOME.
ENV MXNET_HOME=/opt/mxnet
RUN mkdir -p /opt/mxnet/models && case "${FETCH_WEIGHTS}" in \
      0) echo "FETCH_WEIGHTS=0: no ImageNet weights in the image" ;; \
      1|auto) /opt/venv/bin/python -m ssd_detector.model.zoo_fetch /opt/mxnet \
                || { [ "${FETCH_WEIGHTS}" = auto ] && echo "model zoo not reachable: no ImageNet weights in the image"; } ;; \
      *) echo "FETCH_WEIGHTS must be auto, 1 or 0, not ${FETCH_WEIGHTS}" >&2; exit 1 ;; \
    esac

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 libquadmath0 libstdc++6 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/mxnet /opt/mxnet
COPY container/entrypoint /opt/program/entrypoint

# Nothing under /opt/ml: SageMaker mounts it. Readable by any uid (docker run --user works).
# OPENCV_IO_MAX_IMAGE_PIXELS: OpenCV's own decoder cap, read when cv2 loads, at data.images.MAX_PIXELS
# (behind the header check).
ENV PATH=/opt/venv/bin:/opt/program:$PATH \
    PYTHONUNBUFFERED=TRUE \
    PYTHONDONTWRITEBYTECODE=TRUE \
    MXNET_HOME=/opt/mxnet \
    OPENCV_IO_MAX_IMAGE_PIXELS=89478485
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.title="ssd-detector" \
      org.opencontainers.image.description="SSD object detection: SageMaker-compatible train and serve"
WORKDIR /opt/program
ENTRYPOINT ["/opt/program/entrypoint"]
