"""The gunicorn side, as functions: which GPU a worker takes."""
from ssd_detector.serving.server import worker_gpu


def test_worker_i_uses_gpu_i_mod_n():
    """No GPU here: the choice is checked as a function of the worker number and GPU count."""
    assert [worker_gpu(age, 4) for age in range(1, 7)] == [0, 1, 2, 3, 0, 1]
    assert worker_gpu(3, 0) is None
