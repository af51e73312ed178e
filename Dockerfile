# CPU image recipe (first step): Debian bookworm's Python 3.11, the pinned packages installed
# from a local wheelhouse (air-gapped builds; `pip download -d wheelhouse -c docker/constraints.txt
# mxnet numpy opencv-python-headless flask gunicorn boto3 setuptools wheel`), and the package.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=TRUE \
    PYTHONDONTWRITEBYTECODE=TRUE \
    DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 libquadmath0 \
    && rm -rf /var/lib/apt/lists/*

COPY docker/constraints.txt /opt/ssd-detector/docker/constraints.txt
COPY wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
       -c /opt/ssd-detector/docker/constraints.txt \
       mxnet numpy opencv-python-headless flask gunicorn boto3 setuptools wheel \
    && rm -rf /tmp/wheelhouse

COPY pyproject.toml README.md /opt/ssd-detector/
COPY src /opt/ssd-detector/src
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --no-build-isolation /opt/ssd-detector

COPY container /opt/program
ENV PATH=/opt/venv/bin:/opt/program:$PATH

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
ENTRYPOINT ["/opt/program/entrypoint"]
