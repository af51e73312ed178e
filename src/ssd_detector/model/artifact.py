"""The model artifact, under the built-in's names, and finding it again.

``model/`` holds ``model_algo_1-symbol.json`` and ``model_algo_1-0000.params`` (the exported
inference graph: normalization, network, decoding and NMS), ``hyperparams.json`` (every resolved
hyperparameter as a string) and ``classes.json`` (class id -> name, when known). Anything that
loads MXNet symbols can run it; ``serve`` and ``predict`` need no model code.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Mapping

from ..errors import UserError

LOG = logging.getLogger(__name__)

PREFIX = "model_algo_1"
SYMBOL_FILE = f"{PREFIX}-symbol.json"
PARAMS_FILE = f"{PREFIX}-0000.params"
HYPERPARAMS_FILE = "hyperparams.json"
CLASSES_FILE = "classes.json"
ARCHIVE = "model.tar.gz"


def write(model_dir: Path, detector, hyperparameters: Mapping[str, str], class_names: Mapping[int, str]) -> None:
    """Exports the detector and writes the side files; each file is replaced atomically."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / ".staging"
    staging.mkdir(exist_ok=True)
    detector.export(str(staging / PREFIX), 0)
    (staging / HYPERPARAMS_FILE).write_text(json.dumps(dict(hyperparameters), indent=1, sort_keys=True))
    (staging / CLASSES_FILE).write_text(json.dumps({str(k): v for k, v in sorted(class_names.items())}))
    for name in (PARAMS_FILE, SYMBOL_FILE, HYPERPARAMS_FILE, CLASSES_FILE):
        os.replace(staging / name, model_dir / name)
    staging.rmdir()


def _safe_extract(archive: Path, target: Path) -> None:
    root = target.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.issym() or member.islnk():
                raise UserError(f"{archive}: member {member.name!r} is a link; a model archive holds plain files")
            # is_relative_to, not a string prefix: "../model-x/f" must not pass for "model".
            if not (root / member.name).resolve().is_relative_to(root):
                raise UserError(f"{archive}: member {member.name!r} would be written outside the model folder")
        tar.extractall(target)


def locate(path: Path | str, extract_to: Path | None = None) -> Path:
    """The folder holding the artifact files: path itself, or a model.tar.gz (path, or inside path)
    extracted to extract_to (default: beside it)."""
    path = Path(path)
    archive = path if path.is_file() else path / ARCHIVE
    if (path / SYMBOL_FILE).is_file():
        return path
    if archive.is_file():
        target = extract_to or archive.parent / (archive.name.split(".")[0] + "-extracted")
        target.mkdir(parents=True, exist_ok=True)
        _safe_extract(archive, target)
        if (target / SYMBOL_FILE).is_file():
            return target
        raise UserError(f"{archive} holds no {SYMBOL_FILE}; is it a model from this algorithm?")
    raise UserError(f"no model at {path}: expected {SYMBOL_FILE} and {PARAMS_FILE}, or a {ARCHIVE}")


def read_hyperparameters(model_dir: Path) -> dict[str, str]:
    path = model_dir / HYPERPARAMS_FILE
    if not path.is_file():
        raise UserError(f"model folder {model_dir} has no {HYPERPARAMS_FILE}")
    return json.loads(path.read_text())


def read_class_names(model_dir: Path) -> dict[int, str]:
    path = model_dir / CLASSES_FILE
    if not path.is_file():
        return {}
    return {int(k): v for k, v in json.loads(path.read_text()).items()}
