# ssd-detector: SageMaker-style image that trains (`train`) and hosts (`serve`) an SSD detector.
#
# Build arguments:
#   VARIANT=gpu|cpu   gpu (default): mxnet-cu112, Horovod with NCCL (GPU tensors) and Gloo.
#                     cpu: mxnet (oneDNN), Horovod with Gloo.
#   BASE_IMAGE        the runtime base. Default ssd-base:bookworm, a Debian bookworm minbase with
#                     Python 3.11 that docker/prepare.sh makes with debootstrap (no registry);
#                     debian:bookworm-slim from a registry also works.
#   BUILD_IMAGE       where Horovod is compiled (same distribution and Python as BASE_IMAGE).
#   CUDA_FROM         gpu only. wheels (default): the CUDA 11 runtime libraries, cuDNN 8 and NCCL
#                     are the nvidia-*-cu11 wheels (docker/gpu-requirements.txt), installed in the
#                     venv; Horovod's CUDA kernels are compiled with Debian bookworm's non-free
#                     nvidia-cuda-toolkit (11.8) in the build stage only. base: the base images bring
#                     CUDA and cuDNN, e.g. BASE_IMAGE=nvidia/cuda:11.7.1-cudnn8-runtime-ubuntu22.04 and
#                     BUILD_IMAGE=nvidia/cuda:11.7.1-cudnn8-devel-ubuntu22.04 (NCCL from the wheel).
#   DEBIAN_MIRROR     where the build stage's Debian packages come from (an air-gapped mirror).
#   FETCH_WEIGHTS     auto (default): put the four base networks' ImageNet weights in the image if
#                     the model zoo can be reached; 1: fail without them; 0: do not try.
# Offline and air-gapped builds: put wheels in wheelhouse/ (docker/wheelhouse.sh makes them);
# when it holds any, pip installs from it alone.
ARG BASE_IMAGE=ssd-base:bookworm
ARG BUILD_IMAGE=ssd-base:bookworm
ARG VARIANT=gpu

# ---------------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
ARG VARIANT
ARG CUDA_FROM=wheels
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
ARG FETCH_WEIGHTS=auto
# Horovod's CUDA kernels: native code for Maxwell to Hopper, PTX for later GPUs.
ARG CUDA_ARCHS=50,60,70,75,80,86,89,90
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The GPU build with CUDA from wheels needs a CUDA compiler for Horovod's kernels; the wheels
# carry none, Debian's non-free nvidia-cuda-toolkit (11.8, the wheels' CUDA) does. It stays here.
# Its driver stub (libcuda.so, every call answers "stub library") is kept for hosts without a
# driver: the entry point puts it on the library path only when no libcuda.so.1 is mounted.
# hadolint ignore=DL3008,SC2086
RUN case "${VARIANT}:${CUDA_FROM}" in \
      gpu:wheels) . /etc/os-release \
           && [ "${VERSION_CODENAME:-}" = bookworm ] \
              || { echo "CUDA_FROM=wheels needs a Debian bookworm BUILD_IMAGE, not ${PRETTY_NAME:-unknown}" >&2; exit 1; } \
           && echo "deb ${DEBIAN_MIRROR} bookworm main contrib non-free" > /etc/apt/sources.list.d/cuda-toolkit.list \
           && extra="nvidia-cuda-toolkit g++-11" ;; \
      gpu:base) extra="" ;; \
      cpu:*) extra="" ;; \
      *) echo "VARIANT must be gpu or cpu and CUDA_FROM wheels or base, not ${VARIANT} and ${CUDA_FROM}" >&2; exit 1 ;; \
    esac \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ cmake make \
       libgomp1 libquadmath0 ca-certificates ${extra} \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/cuda-stub \
    && if [ "${VARIANT}:${CUDA_FROM}" = gpu:wheels ]; then \
         cp /usr/lib/x86_64-linux-gnu/stubs/libcuda.so /opt/cuda-stub/libcuda.so.1; fi

COPY docker/constraints.txt docker/image-requirements.txt docker/gpu-requirements.txt /build/
COPY wheelhouse/ /build/wheelhouse/
# ${packages} is a word list on purpose.
# hadolint ignore=SC2086
RUN python3 -m venv /opt/venv \
    && if compgen -G "/build/wheelhouse/*.whl" > /dev/null; then \
         export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build/wheelhouse; fi \
    && case "${VARIANT}:${CUDA_FROM}" in \
         gpu:wheels) packages="mxnet-cu112 -r /build/gpu-requirements.txt" ;; \
         gpu:base) packages="mxnet-cu112 nvidia-nccl-cu11" ;; \
         cpu:*) packages=mxnet ;; \
       esac \
    && /opt/venv/bin/pip install --no-cache-dir -c /build/constraints.txt ${packages} \
       -r /build/image-requirements.txt \
    && if [ "${VARIANT}" = gpu ]; then \
         site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
         # The wheels' libraries, found by the dynamic linker in this stage and (ld.so.conf) the image.
         ls -d "${site}"/nvidia/*/lib > /opt/venv/cuda-libs.conf; \
         ln -sf libnccl.so.2 "${site}/nvidia/nccl/lib/libnccl.so"; \
         libs=$(paste -sd: /opt/venv/cuda-libs.conf); \
         export LD_LIBRARY_PATH="${libs}" HOROVOD_GPU_OPERATIONS=NCCL \
                HOROVOD_NCCL_LINK=SHARED HOROVOD_NCCL_INCLUDE="${site}/nvidia/nccl/include" \
                HOROVOD_NCCL_LIB="${site}/nvidia/nccl/lib" HOROVOD_BUILD_CUDA_CC_LIST="${CUDA_ARCHS}"; \
         if [ "${CUDA_FROM}" = wheels ]; then \
           # nvcc 11.8 takes GCC <= 11; import checks below load Debian's driver library (no GPU needed).
           export CC=gcc-11 CXX=g++-11; \
         else \
           # No driver at build time: MXNet and Horovod's build load the CUDA stub instead.
           ln -sf /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1; \
           export LD_LIBRARY_PATH="/usr/local/cuda/lib64/stubs:${LD_LIBRARY_PATH}"; \
         fi; \
       fi \
    && HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
       HOROVOD_WITHOUT_PYTORCH=1 MAKEFLAGS="-j$(nproc)" \
       /opt/venv/bin/pip install --no-cache-dir --no-build-isolation -c /build/constraints.txt horovod \
    && /opt/venv/bin/python -c "import horovod.mxnet, mxnet, cv2, flask, gunicorn, boto3, onnx, matplotlib, pycocotools, tqdm" \
    && if [ "${VARIANT}" = gpu ]; then \
         /opt/venv/bin/python -c "import horovod.mxnet as h; assert h.nccl_built(), 'Horovod built without NCCL'"; fi


# ImageNet weights of the base networks, in the model zoo's layout under MXNET_HOME.
ENV MXNET_HOME=/opt/mxnet
# zoo_fetch.py needs only the standard library; it runs before the project is built.
COPY src/ssd_detector/model/zoo_fetch.py /build/zoo_fetch.py
RUN mkdir -p /opt/mxnet/models && case "${FETCH_WEIGHTS}" in \
      0) echo "FETCH_WEIGHTS=0: no ImageNet weights in the image" ;; \
      1|auto) /opt/venv/bin/python /build/zoo_fetch.py /opt/mxnet \
                || { [ "${FETCH_WEIGHTS}" = auto ] && echo "model zoo not reachable: no ImageNet weights in the image"; } ;; \
      *) echo "FETCH_WEIGHTS must be auto, 1 or 0, not ${FETCH_WEIGHTS}" >&2; exit 1 ;; \
    esac

# The project as a wheel, installed in the runtime stage: a change to the source then rebuilds
# one small layer, not the venv's (gigabytes in the GPU image).
COPY pyproject.toml README.md /build/src-tree/
COPY src /build/src-tree/src
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /build/dist /build/src-tree

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 libquadmath0 libstdc++6 ca-certificates nginx \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/mxnet /opt/mxnet
COPY --from=build /opt/cuda-stub /opt/cuda-stub
COPY --from=build /build/dist /tmp/dist
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/dist/*.whl \
    && /opt/venv/bin/pip uninstall -y -q wheel \
    && rm -rf /tmp/dist \
    && MPLCONFIGDIR=/opt/matplotlib /opt/venv/bin/python -c "import matplotlib.font_manager" \
    && chmod -R a+rX /opt/matplotlib
# GPU: the CUDA wheels' library folders join the linker's cache, so libmxnet.so and Horovod
# resolve them in every process (ldd too) without LD_LIBRARY_PATH.
RUN if [ -f /opt/venv/cuda-libs.conf ]; then cp /opt/venv/cuda-libs.conf /etc/ld.so.conf.d/ssd-detector-cuda.conf; fi \
    && ldconfig
COPY container/entrypoint /opt/program/entrypoint
RUN ln -s entrypoint /opt/program/train && ln -s entrypoint /opt/program/serve

# Nothing under /opt/ml: SageMaker mounts it. Readable by any uid (docker run --user works).
# MPLCONFIGDIR: matplotlib's font cache, made at build time (reports draw without rebuilding it).
# OPENCV_IO_MAX_IMAGE_PIXELS: OpenCV's own decoder cap, read when cv2 loads, at data.images.MAX_PIXELS
# (behind the header check).
ENV PATH=/opt/venv/bin:/opt/program:$PATH \
    PYTHONUNBUFFERED=TRUE \
    PYTHONDONTWRITEBYTECODE=TRUE \
    MXNET_HOME=/opt/mxnet \
    MPLCONFIGDIR=/opt/matplotlib \
    OPENCV_IO_MAX_IMAGE_PIXELS=89478485
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=true \
      org.opencontainers.image.title="ssd-detector" \
      org.opencontainers.image.description="SSD object detection: SageMaker-compatible train and serve"
WORKDIR /opt/program
ENTRYPOINT ["/opt/program/entrypoint"]

# ---------------------------------------------------------------------------------------------
# What the NVIDIA container runtime reads: mount every GPU the job was given and the driver's
# compute libraries. mxnet-cu112 was compiled against cuDNN 8.1; 8.x releases keep its API, so
# MXNet's warning about a different cuDNN minor version is off.
FROM runtime AS variant-gpu
ENV SSD_IMAGE_VARIANT=gpu \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MXNET_CUDNN_LIB_CHECKING=0

FROM runtime AS variant-cpu
ENV SSD_IMAGE_VARIANT=cpu

# hadolint ignore=DL3006
FROM variant-${VARIANT}
