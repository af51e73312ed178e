"""Models of SageMaker's built-in algorithm (made here, tests/builtin_models.py): recognised by
their graph, run as the deploy graph their owners build by hand, imported into our format, and
refused with reasons when they are not what they claim."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from builtin_models import VGG_MEANS, deploy_detections, write_builtin_model

from ssd_detector.errors import UserError
from ssd_detector.inference import Predictor
from ssd_detector.model import artifact
from ssd_detector.model.builtin import import_model, mean_pixels_of, read_graph


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_builtin_model(tmp_path_factory.mktemp("builtin") / "resnet", "resnet-50", 2, 128)


@pytest.fixture(scope="module")
def vgg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_builtin_model(tmp_path_factory.mktemp("builtin") / "vgg", "vgg-16", 3, 300, seed=1)


def pictures(size: int, count: int = 2, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3, size, size)).astype(np.uint8)


def test_the_graph_says_what_it_is(resnet: Path, vgg: Path):
    one = read_graph(resnet / artifact.SYMBOL_FILE)
    assert (one.base_network, one.num_classes) == ("resnet-50", 2)
    assert one.detection["nms_threshold"] == "0.45" and one.detection["nms_topk"] == "400"
    assert one.describe(512) == "built-in model: resnet-50, 2 classes, 512"
    assert (read_graph(vgg / artifact.SYMBOL_FILE).base_network, read_graph(vgg / artifact.SYMBOL_FILE).num_classes) \
        == ("vgg-16", 3)
    assert artifact.is_builtin(resnet) and not artifact.is_builtin(resnet.parent)


@pytest.mark.parametrize("which, size, means", [("resnet", 128, (0.0, 0.0, 0.0)), ("vgg", 300, VGG_MEANS)])
def test_detections_are_the_deploy_graphs(request, which: str, size: int, means, tmp_path: Path):
    folder = request.getfixturevalue(which)
    images = pictures(size)
    expected = deploy_detections(folder, images, means)  # (B, N, 6)
    assert (expected[..., 0] >= 0).sum() > 20 and 0.2 < expected[..., 1].max() < 0.99  # scores spread
    np.testing.assert_allclose(Predictor.load(folder).forward(images), expected, atol=1e-4)
    archive = tmp_path / "model.tar.gz"  # as SageMaker hands it over
    with tarfile.open(archive, "w:gz") as tar:
        for name in (artifact.SYMBOL_FILE, artifact.PARAMS_FILE, artifact.HYPERPARAMS_FILE):
            tar.add(folder / name, arcname=name)
    predictor = Predictor.load(archive, extract_to=tmp_path / "unpacked")
    assert predictor.num_classes == read_graph(folder / artifact.SYMBOL_FILE).num_classes
    np.testing.assert_allclose(predictor.forward(images), expected, atol=1e-4)


def test_the_vgg_mean_is_a_setting(vgg: Path, monkeypatch):
    images = pictures(300, 1)
    plain = deploy_detections(vgg, images)
    np.testing.assert_allclose(Predictor.load(vgg, mean_pixels="0,0,0").forward(images), plain, atol=1e-4)
    monkeypatch.setenv("SSD_BUILTIN_MEAN_PIXELS", "0, 0, 0")
    np.testing.assert_allclose(Predictor.load(vgg).forward(images), plain, atol=1e-4)
    assert mean_pixels_of("resnet-50", None, {}) == (0.0, 0.0, 0.0)
    assert mean_pixels_of("vgg-16", None, {}) == VGG_MEANS
    with pytest.raises(UserError, match=r"--mean-pixels='1,2': give three numbers R,G,B"):
        mean_pixels_of("vgg-16", "1,2", {})
    with pytest.raises(UserError, match=r"SSD_BUILTIN_MEAN_PIXELS='red'"):
        mean_pixels_of("vgg-16", None, {"SSD_BUILTIN_MEAN_PIXELS": "red"})


def test_without_hyperparams_json_the_image_shape_is_asked_for(resnet: Path, tmp_path: Path, monkeypatch):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (artifact.SYMBOL_FILE, artifact.PARAMS_FILE):
        shutil.copy(resnet / name, bare / name)
    with pytest.raises(UserError, match=r"without hyperparams.json.*--image-shape S.*SSD_BUILTIN_IMAGE_SHAPE=S"):
        Predictor.load(bare)
    images = pictures(128, 1)
    expected = deploy_detections(resnet, images)
    np.testing.assert_allclose(Predictor.load(bare, image_shape=128).forward(images), expected, atol=1e-4)
    assert import_model(bare, tmp_path / "imported", image_shape=128)["image_shape"] == 128
    np.testing.assert_allclose(Predictor.load(tmp_path / "imported").forward(images), expected, atol=1e-4)
    monkeypatch.setenv("SSD_BUILTIN_IMAGE_SHAPE", "128")
    predictor = Predictor.load(bare)
    assert predictor.image_size == 128 and predictor.num_classes == 2  # from the class predictor
    monkeypatch.setenv("SSD_BUILTIN_IMAGE_SHAPE", "big")
    with pytest.raises(UserError, match="SSD_BUILTIN_IMAGE_SHAPE='big' must be a whole number"):
        Predictor.load(bare)


def test_a_graph_of_neither_algorithm_is_refused_naming_the_file(tmp_path: Path):
    net = mx.gluon.nn.Conv2D(4, 3, in_channels=3)
    net.initialize()
    net.hybridize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    net.export(str(tmp_path / "model_algo_1"))
    (tmp_path / "hyperparams.json").write_text(json.dumps({"image_shape": "64", "num_classes": "1"}))
    with pytest.raises(UserError, match=r"model_algo_1-symbol.json is neither a model of this algorithm .* nor one "
                                        r"of SageMaker's built-in"):
        Predictor.load(tmp_path)


def test_parameters_that_do_not_fit_the_graph_are_refused_naming_the_file(resnet: Path, tmp_path: Path):
    other = write_builtin_model(tmp_path / "other", "resnet-50", 4, 128)  # 5 class outputs, not 3
    shutil.copy(other / artifact.PARAMS_FILE, tmp_path / artifact.PARAMS_FILE)
    for name in (artifact.SYMBOL_FILE, artifact.HYPERPARAMS_FILE):
        shutil.copy(resnet / name, tmp_path / name)
    with pytest.raises(UserError, match=r"model_algo_1-0000.params does not fit the graph of .*model_algo_1-symbol"):
        Predictor.load(tmp_path)


def test_import_writes_our_artifact_with_the_same_detections(resnet: Path, tmp_path: Path):
    summary = import_model(resnet, tmp_path / "ours", ["cat", "dog"])
    assert summary["base_network"] == "resnet-50" and summary["num_classes"] == 2 and summary["image_shape"] == 128
    ours = tmp_path / "ours"
    assert not artifact.is_builtin(ours)
    hyperparameters = artifact.read_hyperparameters(ours)
    assert hyperparameters["image_shape"] == "128" and "imported_from_builtin" in hyperparameters
    assert artifact.read_class_names(ours) == {0: "cat", 1: "dog"}
    images = pictures(128)
    np.testing.assert_allclose(Predictor.load(ours).forward(images), deploy_detections(resnet, images), atol=1e-4)
    with pytest.raises(UserError, match="--class-names gives 1 names but the model has 2 classes"):
        import_model(resnet, tmp_path / "bad", ["cat"])
    with pytest.raises(UserError, match="does not hold a model of the built-in algorithm"):
        import_model(ours, tmp_path / "again")


def test_tools_that_rewrite_graphs_ask_for_the_import_first(resnet: Path, tmp_path: Path):
    from ssd_detector.model.onnx_export import export_onnx
    from ssd_detector.model.quantize import QuantizeOptions, quantize

    with pytest.raises(UserError, match="import-builtin --model-dir .* then quantize on DIR"):
        quantize(resnet, pictures(128, 4), tmp_path / "int8", QuantizeOptions())
    with pytest.raises(UserError, match="then export-onnx on DIR"):
        export_onnx(resnet, tmp_path / "model.onnx")


def _built_in_outputs(folder: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The saved graph's own multibox_cls_pred (B, C+1, N), multibox_loc_pred and anchors, bound by hand."""
    internals = mx.sym.load(str(folder / "model_algo_1-symbol.json")).get_internals()
    group = mx.sym.Group([internals[f"{name}_output"] for name in ("multibox_cls_pred", "multibox_loc_pred",
                                                                    "multibox_anchors")])
    saved = mx.nd.load(str(folder / "model_algo_1-0000.params"))
    module = mx.mod.Module(group, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", images.shape)], for_training=False)
    module.set_params({k[4:]: v for k, v in saved.items() if k.startswith("arg:")},
                      {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(images.astype(np.float32))]), is_train=False)
    return tuple(out.asnumpy() for out in module.get_outputs())  # type: ignore[return-value]


def _started(source, classes: int, size: int):
    from ssd_detector.model import builtin_net
    from ssd_detector.training.starting import set_saved

    net = builtin_net.build_from(source, classes, size)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.materialize(mx.cpu())
    return net, set_saved(net, source.parameters, skip={net.mean.name})


def test_a_built_in_network_to_train_answers_as_its_graph(resnet: Path):
    from ssd_detector.model import builtin_net

    source = builtin_net.read_source(resnet)
    assert (source.base_network, source.num_classes, source.anchors) == ("resnet-50", 2, None)
    net, reinitialized = _started(source, 2, 128)
    assert reinitialized == []
    images = pictures(128)
    cls_pred, box_pred = net(mx.nd.array(images))
    cls_ref, box_ref, anchors_ref = _built_in_outputs(resnet, images)
    np.testing.assert_allclose(cls_pred.asnumpy().transpose(0, 2, 1), cls_ref, atol=1e-4)  # (B, N, C+1) -> (B, C+1, N)
    np.testing.assert_allclose(box_pred.asnumpy(), box_ref, atol=1e-4)
    np.testing.assert_allclose(net.anchors, anchors_ref.reshape(-1, 4), atol=1e-6)  # (1, N, 4) -> (N, 4)


def test_another_class_count_changes_the_class_predictors_only(resnet: Path):
    from ssd_detector.model import builtin_net

    source = builtin_net.read_source(resnet)
    net, reinitialized = _started(source, 5, 128)
    assert reinitialized and all(name.endswith(("_cls_pred_conv_weight", "_cls_pred_conv_bias"))
                                 for name in reinitialized)
    assert len(reinitialized) == 2 * sum(1 for n in net.collect_params() if n.endswith("_cls_pred_conv_weight"))
    cls_pred, box_pred = net(mx.nd.array(pictures(128)))
    assert cls_pred.shape[2] == 6
    np.testing.assert_allclose(box_pred.asnumpy(), _built_in_outputs(resnet, pictures(128))[1], atol=1e-4)


def test_an_imported_model_keeps_its_anchors_and_its_size(resnet: Path, tmp_path: Path):
    from ssd_detector.model import builtin_net

    import_model(resnet, tmp_path / "ours")
    source = builtin_net.read_source(tmp_path / "ours")
    assert source.base_network == "resnet-50" and source.image_shape == 128
    net, reinitialized = _started(source, 2, 128)
    assert reinitialized == []
    cls_ref, box_ref, anchors_ref = _built_in_outputs(resnet, pictures(128))
    np.testing.assert_allclose(net.anchors, anchors_ref.reshape(-1, 4), atol=1e-6)
    np.testing.assert_allclose(net(mx.nd.array(pictures(128)))[1].asnumpy(), box_ref, atol=1e-4)
    with pytest.raises(UserError, match="anchors fixed at image_shape=128; train it with image_shape=128"):
        builtin_net.build_from(source, 2, 160)
