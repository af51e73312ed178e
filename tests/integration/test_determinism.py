"""A seed fixes training on the CPU: two runs of the same job give the same weights."""
from pathlib import Path

import numpy as np
import pytest

from test_train import TINY, make_job, train


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    import mxnet as mx

    return {k: v.asnumpy() for k, v in mx.nd.load(str(model_dir / "model_algo_1-0000.params")).items()}


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
