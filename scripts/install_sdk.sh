#!/usr/bin/env bash
# A virtualenv with one release of the SageMaker Python SDK, for the tests that drive it
# (the launch script, local mode). Usage: install_sdk.sh VENV 'sagemaker==X.Y.Z'
set -euo pipefail
venv=$1
requirement=$2
python=${PYTHON:-}
if [[ -z "$python" ]]; then
    for candidate in python3.11 python3.10 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
    done
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo "[install-sdk] $requirement into $venv (a few minutes the first time)" >&2
"$venv/bin/python" -m pip install -q "$requirement"
"$venv/bin/python" -c 'import importlib.metadata as m; print("sagemaker", m.version("sagemaker"))'
