"""The gunicorn side, as functions: which GPU a worker takes."""
from ssd_detector.serving.server import worker_gpu


def test_worker_i_uses_gpu_i_mod_n():
    """No GPU here: the choice is checked as a function of the worker number and GPU count."""
    assert [worker_gpu(age, 4) for age in range(1, 7)] == [0, 1, 2, 3, 0, 1]
    assert worker_gpu(3, 0) is None


def test_a_worker_names_ssd_num_gpus_when_it_asks_for_more_than_mxnet_sees(tmp_path, monkeypatch):
    """A CPU machine with a stand-in driver folder: the master took SSD_NUM_GPUS=2 as it is (it
    counts without MXNet); the worker, with MXNet, refuses it by name instead of failing in MXNet."""
    import pytest
    from gunicorn.errors import AppImportError

    from ssd_detector import machine
    from ssd_detector.model.untrained import export_untrained
    from ssd_detector.serving.server import load_app
    from ssd_detector.serving.settings import ServeSettings

    model = export_untrained(tmp_path / "model", {"num_classes": "2", "base_network": "mobilenet-0.25",
                                                  "image_shape": "64"})
    monkeypatch.setattr(machine, "NVIDIA_DRIVER_DIR", tmp_path)
    monkeypatch.setenv("SSD_NUM_GPUS", "2")
    settings = ServeSettings.from_env(model, cpu_count=2, workers=1, gpus=2)
    with pytest.raises(AppImportError, match="SSD_NUM_GPUS=2 asks for more GPUs than MXNet sees here"):
        load_app(settings)
    monkeypatch.setenv("SSD_NUM_GPUS", "0")
    assert load_app(ServeSettings.from_env(model, cpu_count=2, workers=1)).test_client().get("/ping").status_code == 200
