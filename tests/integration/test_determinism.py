"""A seed fixes training on the CPU: two runs of the same job give the same weights."""
import re
from pathlib import Path

import numpy as np
import pytest

from test_train import TINY, make_job, train


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    import mxnet as mx

    return {k: v.asnumpy() for k, v in mx.nd.load(str(model_dir / "model_algo_1-0000.params")).items()}


def _train_variants(tmp_path: Path, synth_set: Path, key: str, values: tuple[tuple[str, str | None], ...],
                    checkpoints: bool = False) -> dict[str, tuple[dict[str, np.ndarray], str, Path]]:
    """A 2-epoch job per (name, value) with the hyperparameter key set to value (None: unset) ->
    name: (model weights, the job's log, the job's /opt/ml). Each job must succeed and record its
    value in hyperparams.json."""
    import json

    hyperparameters = {**TINY, "epochs": "2", "seed": "5"}
    runs = {}
    for name, value in values:
        base = make_job(tmp_path / name, synth_set,
                        hyperparameters if value is None else {**hyperparameters, key: value})
        if checkpoints:
            (base / "checkpoints").mkdir()
        result = train(base)
        assert result.returncode == 0, result.stderr[-3000:]
        if value is not None:
            assert float(json.loads((base / "model/hyperparams.json").read_text())[key]) == float(value)
        runs[name] = (_weights(base / "model"), result.stderr, base)
    return runs


@pytest.mark.parametrize("workers", ["0", "1"])
def test_two_runs_with_one_seed_give_the_same_weights(tmp_path: Path, synth_set: Path, workers: str):
    # Full augmentation, so crop, expand, flip and colour draws are all exercised.
    hyperparameters = {**TINY, "epochs": "2", "augmentation": "full", "seed": "5"}
    runs = []
    for name in ("a", "b"):
        base = make_job(tmp_path / name, synth_set, hyperparameters)
        result = train(base, workers=workers)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(_weights(base / "model"))
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert np.array_equal(runs[0][key], runs[1][key]), key
    other = make_job(tmp_path / "c", synth_set, {**hyperparameters, "seed": "6"})
    assert train(other, workers=workers).returncode == 0
    assert any(not np.array_equal(runs[0][k], v) for k, v in _weights(other / "model").items()), \
        "another seed must give other weights"


def test_the_weight_average_is_what_validation_and_the_model_use(tmp_path: Path, synth_set: Path):
    """ema_decay: a decay of almost 0 averages nothing (the model equals the plain run's, so the
    swapping in and out loses nothing); 0.5 gives another model, and its checkpoints hold the
    average."""
    from ssd_detector.training.checkpoint import AVERAGE

    runs = _train_variants(tmp_path, synth_set, "ema_decay", (("plain", None), ("tiny", "1e-9"), ("half", "0.5")),
                           checkpoints=True)
    for name in ("tiny", "half"):
        assert all((folder / AVERAGE).is_file() for folder in (runs[name][2] / "checkpoints").glob("ssd-checkpoint-*"))
    models = {name: run[0] for name, run in runs.items()}
    for key, value in models["plain"].items():
        np.testing.assert_allclose(models["tiny"][key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    assert any(not np.allclose(models["half"][k], v) for k, v in models["plain"].items())


def test_max_gradient_norm_clips_only_above_its_limit(tmp_path: Path, synth_set: Path):
    """A limit far above every gradient gives the plain run's weights exactly (the clipped path
    updates as the unclipped one); a tiny limit clips every update, logs it, and gives others."""
    runs = _train_variants(tmp_path, synth_set, "max_gradient_norm",
                           (("plain", None), ("high", "1000000"), ("tiny", "0.001")))
    models, logs = {name: run[0] for name, run in runs.items()}, {name: run[1] for name, run in runs.items()}
    for key, value in models["plain"].items():
        assert np.array_equal(models["high"][key], value), key
    assert "gradient clipped" not in logs["plain"]
    assert "gradient clipped in 0 updates" in logs["high"]
    clipped = [int(n) for n in re.findall(r"gradient clipped in (\d+) updates", logs["tiny"])]
    assert len(clipped) == 2 and all(n > 0 for n in clipped), logs["tiny"][-3000:]
    assert any(not np.allclose(models["tiny"][k], v) for k, v in models["plain"].items())


def test_object_balance_reweighs_the_loss_through_the_real_job(tmp_path: Path, synth_set: Path):
    """The weights travel from the data workers to the loss: a balance of almost 0 gives the plain
    run's model (every weight 1 up to rounding); 1 gives another."""
    runs = _train_variants(tmp_path, synth_set, "object_balance", (("plain", None), ("tiny", "1e-9"), ("one", "1")))
    models = {name: run[0] for name, run in runs.items()}
    for key, value in models["plain"].items():
        np.testing.assert_allclose(models["tiny"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    assert any(not np.allclose(models["one"][k], v, rtol=1e-3, atol=1e-4) for k, v in models["plain"].items())
