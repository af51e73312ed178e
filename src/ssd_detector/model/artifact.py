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
import shutil
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
# hyperparams.json entry that `quantize` adds: the model is INT8 (JSON: how it was made).
QUANTIZATION_KEY = "quantization"
STAGING = ".staging"
# A model archive is a few files of at most a few hundred MB (VGG-16 SSD: about 100 MB).
MAX_ARCHIVE_MEMBERS = 1_000
MAX_ARCHIVE_BYTES = 8 * 1024 ** 3


def write(model_dir: Path, detector, hyperparameters: Mapping[str, str], class_names: Mapping[int, str]) -> None:
    """Exports the detector and writes the side files; each file is replaced atomically."""
    model_dir.mkdir(parents=True, exist_ok=True)
    # Staged inside model_dir (os.replace needs one file system); never left behind, since
    # SageMaker packs whatever model_dir holds into model.tar.gz.
    staging = model_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        detector.export(str(staging / PREFIX), 0)
        (staging / HYPERPARAMS_FILE).write_text(json.dumps(dict(hyperparameters), indent=1, sort_keys=True))
        (staging / CLASSES_FILE).write_text(json.dumps({str(k): v for k, v in sorted(class_names.items())}))
        for name in (PARAMS_FILE, SYMBOL_FILE, HYPERPARAMS_FILE, CLASSES_FILE):
            os.replace(staging / name, model_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _safe_extract(archive: Path, target: Path) -> None:
    """Extracts regular files and folders only, with plain modes (0644 / 0755), within size
    limits; anything else in the archive is refused, naming the member."""
    root = target.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members: list[tarfile.TarInfo] = []
            total = 0
            for member in tar:
                if len(members) >= MAX_ARCHIVE_MEMBERS:
                    raise UserError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members; a model archive holds "
                                    "a few files")
                if not (member.isfile() or member.isdir()):
                    kind = "a link" if member.issym() or member.islnk() else "a device, FIFO or other special file"
                    raise UserError(f"{archive}: member {member.name!r} is {kind}; a model archive holds plain "
                                    "files and folders")
                # is_relative_to, not a string prefix: "../model-x/f" must not pass for "model".
                if not (root / member.name).resolve().is_relative_to(root):
                    raise UserError(f"{archive}: member {member.name!r} would be written outside the model folder")
                total += member.size
                if total > MAX_ARCHIVE_BYTES:
                    raise UserError(f"{archive}: members add up to more than {MAX_ARCHIVE_BYTES // 1024 ** 3} GiB")
                members.append(member)
            for member in members:
                path = root / member.name
                if member.isdir():
                    path.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has content
                with source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.chmod(path, 0o644)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive} is not a readable gzip tar archive: {exc}") from None


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


def is_builtin(model_dir: Path) -> bool:
    """Whether the folder holds a model of SageMaker's built-in algorithm (its training graph)."""
    from .builtin import is_builtin as graph_is_builtin

    try:
        return graph_is_builtin(json.loads((Path(model_dir) / SYMBOL_FILE).read_text()))
    except (OSError, ValueError):
        return False


def refuse_builtin(model_dir: Path, command: str) -> None:
    """Tools that rewrite a graph take ours: a built-in model is imported first."""
    if is_builtin(model_dir):
        raise UserError(f"{model_dir} holds a model of SageMaker's built-in algorithm; {command} takes it once "
                        f"imported: ssd-detector import-builtin --model-dir {model_dir} --output DIR, then "
                        f"{command} on DIR")


def require_folder(path: Path) -> Path:
    """path, when it is an unpacked artifact (see locate for one that may be an archive). A
    built-in model may lack hyperparams.json (its image_shape is then given another way)."""
    needed = (SYMBOL_FILE, PARAMS_FILE) if is_builtin(path) else (SYMBOL_FILE, PARAMS_FILE, HYPERPARAMS_FILE)
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise UserError(f"{path} is not an unpacked model: it lacks {', '.join(missing)}")
    return path


def read_hyperparameters(model_dir: Path) -> dict[str, str]:
    path = model_dir / HYPERPARAMS_FILE
    if not path.is_file():
        raise UserError(f"model folder {model_dir} has no {HYPERPARAMS_FILE}")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} holds {type(values).__name__}, not an object of hyperparameters")
    return {str(k): str(v) for k, v in values.items()}


def read_image_shape(model_dir: Path, given: int | None = None) -> int:
    """The square input side S the artifact's graph takes: given, else hyperparams.json's
    image_shape (for a built-in model without one, $SSD_BUILTIN_IMAGE_SHAPE)."""
    if given is not None:
        if not 64 <= given <= 2048:
            raise UserError(f"--image-shape {given} must be from 64 to 2048")
        return given
    if not (model_dir / HYPERPARAMS_FILE).is_file() and is_builtin(model_dir):
        from .builtin import image_shape_setting

        return image_shape_setting(model_dir)
    try:
        return int(read_hyperparameters(model_dir)["image_shape"])
    except (KeyError, ValueError):
        raise UserError(f"{model_dir / HYPERPARAMS_FILE} has no usable image_shape") from None


def read_parameters(model_dir: Path) -> dict:
    """The saved network's parameters by name (MXNet's arg:/aux: prefixes dropped), as NDArrays."""
    import mxnet as mx

    params_file = model_dir / PARAMS_FILE
    try:
        saved = mx.nd.load(str(params_file))
    except mx.base.MXNetError as exc:
        raise UserError(f"{params_file} is not a readable MXNet parameter file: {last_line(exc)}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{params_file} holds unnamed arrays, not a model's parameters")
    return {k.split(":", 1)[1] if k.startswith(("arg:", "aux:")) else k: v for k, v in saved.items()}


def load_symbol(model_dir: Path, mean_pixels: str | None = None):
    """The inference graph of the artifact: (B, 3, S, S) uint8 -> (B, N, 6) rows. Ours is the
    saved graph; a built-in model's is rebuilt from its training graph (model.builtin), with
    mean_pixels ("R,G,B") subtracted before it when given."""
    import mxnet as mx

    if is_builtin(model_dir):
        from .builtin import inference_symbol, mean_pixels_of as means, read_graph

        graph = read_graph(model_dir / SYMBOL_FILE)
        return inference_symbol(model_dir / SYMBOL_FILE, means(graph.base_network, mean_pixels))
    symbol_file = model_dir / SYMBOL_FILE
    try:
        graph = json.loads(symbol_file.read_text())
        head = graph["nodes"][graph["heads"][0][0]]["op"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{symbol_file} is not a readable MXNet symbol file: {exc}") from None
    if head != "_contrib_MultiBoxDetection":
        raise UserError(f"{symbol_file} is neither a model of this algorithm (its graph ends in MultiBoxDetection; "
                        f"this one in {head}) nor one of SageMaker's built-in algorithm (multibox_cls_pred, "
                        "multibox_loc_pred, multibox_anchors)")
    return mx.sym.load(str(symbol_file))


def load_block(model_dir: Path, ctx=None, symbol=None, image_shape: int | None = None):
    """The artifact's inference graph as a hybridized gluon SymbolBlock on ctx (default: the CPU):
    (B, 3, S, S) uint8 -> (B, N, 6) rows. What predict, serve, evaluate and quantize run.
    symbol: the graph, when load_symbol made it already; image_shape: S, when known already (the
    parameters' shapes are checked against the graph at that size)."""
    import warnings

    import mxnet as mx

    model_dir = require_folder(Path(model_dir))
    symbol = load_symbol(model_dir) if symbol is None else symbol
    params_file = model_dir / PARAMS_FILE
    builtin = is_builtin(model_dir)
    with warnings.catch_warnings():
        # The input's type is unknown until the first call (uint8 pixels); not a problem.
        warnings.filterwarnings("ignore", message="Cannot decide type")
        block = mx.gluon.SymbolBlock(symbol, mx.sym.var("data"))
    saved = read_parameters(model_dir)
    try:
        # A built-in model's checkpoint also holds what its training tail used: ignored here.
        block.collect_params().load_dict(saved, ctx=ctx or mx.cpu(), allow_missing=False, ignore_extra=builtin,
                                         filename=str(params_file), cast_dtype=True, dtype_source="saved")
    except (AssertionError, ValueError, mx.base.MXNetError) as exc:
        raise UserError(f"{params_file} does not fit the graph of {model_dir / SYMBOL_FILE}: "
                        f"{last_line(exc)}") from None
    size = read_image_shape(model_dir) if image_shape is None else image_shape
    shapes = {name: param.list_data()[0].shape for name, param in block.collect_params().items()}
    try:  # the first forward would find a mismatch too, in a less telling way
        symbol.infer_shape(data=(1, 3, size, size), **shapes)
    except mx.base.MXNetError as exc:
        raise UserError(f"{params_file} does not fit the graph of {model_dir / SYMBOL_FILE}: "
                        f"{last_line(exc)}") from None
    block.hybridize(static_alloc=True)
    return block


def last_line(exc: BaseException, limit: int = 300) -> str:
    """The telling line of an MXNet error (its message comes after a C++ traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:limit]


def read_class_names(model_dir: Path) -> dict[int, str]:
    path = model_dir / CLASSES_FILE
    if not path.is_file():
        return {}
    return {int(k): v for k, v in json.loads(path.read_text()).items()}
