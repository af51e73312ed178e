#!/usr/bin/env bash
# A virtualenv beside the project's for one package release that cannot share MXNet's numpy 1.23:
# the SageMaker Python SDK (the launch script and local-mode tests) and ONNX Runtime (running the
# exported ONNX file). Usage: install_side_venv.sh VENV 'package==X.Y.Z' [more requirements]
set -euo pipefail
venv=$1
shift
python=${PYTHON:-}
if [[ -z "$python" ]]; then
    for candidate in python3.11 python3.10 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
    done
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo "[install-side-venv] $* into $venv (a few minutes the first time)" >&2
"$venv/bin/python" -m pip install -q "$@"
name=${1%%[=<>]*}
"$venv/bin/python" -c 'import importlib.metadata as m, sys; print(sys.argv[1], m.version(sys.argv[1]))' "$name"
