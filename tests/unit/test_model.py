"""SSD parts against hand-computed values and MXNet's own operators."""
import math
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from ssd_detector.errors import HyperparameterError, UserError
from ssd_detector.model import zoo_fetch
from ssd_detector.model.anchors import generate_anchors, make_layout
from ssd_detector.model.backbones import load_pretrained, zoo_weights_file
from ssd_detector.model.loss import SSDLoss
from ssd_detector.model.ssd import SSD, SSDDetector
from ssd_detector.model.targets import decode, encode, make_targets, match, positive_weights


@pytest.mark.parametrize("base,size,count", [("vgg-16", 300, 8732), ("vgg-16", 512, 24564),
                                             ("resnet-50", 512, 6132)])
def test_anchor_counts_of_the_published_layouts(base, size, count):
    net = SSD(base, 20, size)
    assert net.layout.num_anchors == count == net.anchors.shape[0]


def test_anchor_sizes_replace_the_default_layout_sizes():
    default = SSD("mobilenet-0.25", 3, 256)
    sizes = (0.04,) + default.layout.sizes[1:]  # a smaller first map only
    net = SSD("mobilenet-0.25", 3, 256, sizes)
    assert net.layout.sizes == sizes and net.layout.steps == default.layout.steps
    assert net.anchors.shape == default.anchors.shape
    first = net.anchors[0] * 256  # (x0, y0, x1, y1) of the first anchor, centred at 4 px
    np.testing.assert_allclose(first, [4 - 5.12, 4 - 5.12, 4 + 5.12, 4 + 5.12], atol=1e-4)
    np.testing.assert_allclose(net.anchors[4096:], default.anchors[4096:])  # other maps unchanged


def test_anchor_sizes_of_the_wrong_count_name_the_count_and_the_default():
    with pytest.raises(HyperparameterError) as info:
        SSD("mobilenet-0.25", 3, 256, (0.1, 0.2, 0.4))
    message = str(info.value)
    assert "anchor_sizes=0.1,0.2,0.4 has 3 sizes" in message
    assert "7 feature maps, so it takes 8" in message and "0.07,0.15,0.294" in message


def test_anchors_equal_mxnet_multibox_prior():
    layout = make_layout("vgg-16", 300, (38, 19, 10, 5, 3, 1))
    ours = generate_anchors(layout)
    theirs = []
    for k, f in enumerate(layout.feature_sizes):
        sizes = (layout.sizes[k], math.sqrt(layout.sizes[k] * layout.sizes[k + 1]))
        prior = mx.nd.contrib.MultiBoxPrior(mx.nd.zeros((1, 1, f, f)), sizes=sizes, ratios=layout.ratios[k],
                                            steps=(layout.steps[k] / 300,) * 2)
        theirs.append(prior[0].asnumpy())
    np.testing.assert_allclose(ours, np.concatenate(theirs), atol=1e-6)


def test_encode_decode_by_hand():
    anchor = np.array([[0.1, 0.1, 0.3, 0.3]], np.float32)  # centre (0.2, 0.2), size 0.2 x 0.2
    box = np.array([[0.15, 0.1, 0.35, 0.4]], np.float32)  # centre (0.25, 0.25), size 0.2 x 0.3
    offsets = encode(box, anchor)
    # (0.05 / 0.2) / 0.1, the same for y, log(1) / 0.2, log(1.5) / 0.2
    np.testing.assert_allclose(offsets, [[2.5, 2.5, 0.0, math.log(1.5) / 0.2]], atol=1e-5)
    np.testing.assert_allclose(decode(offsets, anchor), box, atol=1e-6)


def test_matching_gives_each_object_its_best_anchor_then_thresholds():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.1, 0.1, 0.6, 0.6], [0.5, 0.5, 1.0, 1.0],
                        [0.6, 0.6, 0.9, 0.9]], np.float32)
    boxes = np.array([[0.05, 0.05, 0.55, 0.55], [0.7, 0.7, 0.8, 0.8]], np.float32)
    # Object 1 overlaps anchor 3 by only 0.11 but still takes it; anchors 0 and 1 both reach 0.5
    # with object 0; anchor 2 matches nothing.
    assert match(anchors, boxes, 0.5).tolist() == [0, 0, -1, 1]
    cls_target, box_target = make_targets(anchors, boxes, np.array([4, 2]), 0.5)
    assert cls_target.tolist() == [5, 5, 0, 3]
    assert np.all(box_target[2] == 0)


def test_match_topk_gives_a_small_object_its_best_anchors():
    anchors = np.array([[0.0, 0.0, 0.2, 0.2], [0.06, 0.0, 0.26, 0.2], [0.0, 0.07, 0.2, 0.27],
                        [0.3, 0.3, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.55, 0.55, 1.0, 1.0]], np.float32)
    # A small object in the corner overlaps anchors 0, 1, 2 by 0.25, 0.22 and 0.19: at 0.5 only its
    # best anchor is a positive. A large object overlaps anchors 4 and 5 by 0.8 and 0.65.
    boxes = np.array([[0.05, 0.05, 0.15, 0.15], [0.5, 0.5, 0.95, 0.95]], np.float32)
    assert match(anchors, boxes, 0.5).tolist() == [0, -1, -1, -1, 1, 1]
    assert match(anchors, boxes, 0.5, topk=2).tolist() == [0, 0, -1, -1, 1, 1]
    assert match(anchors, boxes, 0.5, topk=3).tolist() == [0, 0, 0, -1, 1, 1]
    # Anchor 3 is among the small object's 4 best but overlaps it by 0: TOPK_MIN_OVERLAP refuses it.
    assert match(anchors, boxes, 0.5, topk=4).tolist() == [0, 0, 0, -1, 1, 1]
    assert match(anchors, boxes, 0.5, topk=100).tolist() == [0, 0, 0, -1, 1, 1]  # k beyond the anchors


def test_match_topk_takes_no_anchor_from_an_object_it_overlaps_more():
    anchors = np.array([[0.0, 0.0, 0.4, 0.4], [0.2, 0.0, 0.6, 0.4], [0.3, 0.0, 0.6, 0.4],
                        [0.7, 0.7, 0.9, 0.9]], np.float32)
    # Object 0 overlaps anchors 0 and 1 by 0.6 and 0.23; object 1 is anchor 2 and overlaps anchor 1
    # by 0.75, under the threshold. Anchor 1 is among the 2 best of both and goes to object 1.
    boxes = np.array([[0.0, 0.0, 0.4, 0.24], [0.3, 0.0, 0.6, 0.4]], np.float32)
    assert match(anchors, boxes, 0.8).tolist() == [0, -1, 1, -1]
    assert match(anchors, boxes, 0.8, topk=2).tolist() == [0, 1, 1, -1]
    cls_target, _ = make_targets(anchors, boxes, np.array([0, 1]), 0.8, topk=2)
    assert cls_target.tolist() == [1, 2, 2, 0]


def test_targets_equal_mxnet_multibox_target():
    anchors = generate_anchors(make_layout("vgg-16", 300, (38, 19, 10, 5, 3, 1)))
    boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.45, 0.9, 0.95], [0.2, 0.6, 0.3, 0.7]], np.float32)
    ids = np.array([2, 0, 1])
    cls_target, box_target = make_targets(anchors, boxes, ids, 0.5)
    label = mx.nd.array(np.concatenate([ids[:, None], boxes], 1)[None])
    loc, _, cls = mx.nd.contrib.MultiBoxTarget(mx.nd.array(anchors[None]), label, mx.nd.zeros((1, 4, len(anchors))),
                                               overlap_threshold=0.5, negative_mining_ratio=-1,
                                               variances=(0.1, 0.1, 0.2, 0.2))
    np.testing.assert_array_equal(cls[0].asnumpy(), cls_target)
    np.testing.assert_allclose(loc[0].asnumpy().reshape(-1, 4), box_target, atol=1e-5)


# One image, 5 anchors, 2 classes (+ background): (1, 5, 3) class logits for the loss tests.
TINY_LOGITS = np.array([[[0.0, 0.0, 2.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 4.0]]],
                       np.float32)


def _ce(logits: np.ndarray, cls_target: np.ndarray) -> np.ndarray:
    """Per-anchor softmax cross-entropy of one image, by hand."""
    log_softmax = logits[0] - np.log(np.exp(logits[0]).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(logits.shape[1]), cls_target[0].astype(int)]


def test_object_balance_weighs_each_object_by_its_positive_count():
    # Object 0 has 1 positive, object 1 has 4: 5 positives in all.
    matches = np.array([0, -1, 1, 1, 1, 1, -1])
    np.testing.assert_allclose(positive_weights(matches, 0.0), [1, 0, 1, 1, 1, 1, 0])
    # balance 1: raw weights 1 and 1/4 each, so every object weighs the same; scaled to sum to 5.
    np.testing.assert_allclose(positive_weights(matches, 1.0), [2.5, 0, 0.625, 0.625, 0.625, 0.625, 0], rtol=1e-6)
    half = positive_weights(matches, 0.5)  # raw 1 and 1/2
    np.testing.assert_allclose(half, np.array([1, 0, 0.5, 0.5, 0.5, 0.5, 0]) * 5 / 3, rtol=1e-6)
    assert positive_weights(np.full(4, -1), 1.0).tolist() == [0, 0, 0, 0]
    anchors = generate_anchors(make_layout("vgg-16", 300, (38, 19, 10, 5, 3, 1)))
    boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.2, 0.6, 0.24, 0.64]], np.float32)
    cls_target, box_target = make_targets(anchors, boxes, np.array([0, 1]), 0.5, balance=1.0)
    plain_cls, plain_box = make_targets(anchors, boxes, np.array([0, 1]), 0.5)
    assert box_target.shape == (len(anchors), 5) and plain_box.shape == (len(anchors), 4)
    np.testing.assert_array_equal(cls_target, plain_cls)
    np.testing.assert_array_equal(box_target[:, :4], plain_box)
    weights = box_target[:, 4]
    assert weights.sum() == pytest.approx((cls_target > 0).sum(), rel=1e-5)
    assert weights[cls_target == 1].sum() == pytest.approx(weights[cls_target == 2].sum(), rel=1e-5)


@pytest.mark.parametrize("hybrid", [False, True])
def test_weighted_loss_scales_each_positive(hybrid):
    logits = TINY_LOGITS
    cls_target = np.array([[2, 1, 0, 0, 0]], np.float32)
    box_pred = np.zeros((1, 20), np.float32)
    box_pred[0, :8] = [0.5, -2.0, 0.0, 1.0, 0.2, 0.0, 0.0, 0.0]
    box_target = np.zeros((1, 5, 5), np.float32)
    box_target[0, :2, 4] = [1.5, 0.5]  # the positives' weights
    box_target[0, 2:, 4] = 7.0  # negatives' weights are not read
    loss = SSDLoss(weighted=True)
    if hybrid:
        loss.hybridize()
    cls_loss, box_loss = loss(mx.nd.array(logits), mx.nd.array(box_pred), mx.nd.array(cls_target),
                              mx.nd.array(box_target), mx.nd.array([2.0]))
    ce = _ce(logits, cls_target)
    negatives = sorted(ce[2:], reverse=True)[:6]  # 3:1 hard negatives: all three
    assert cls_loss.asscalar() == pytest.approx((1.5 * ce[0] + 0.5 * ce[1] + sum(negatives)) / 2, rel=1e-5)
    l1_first = 0.5 * 0.5 ** 2 + (2.0 - 0.5) + 0 + 0.5 * 1.0
    l1_second = 0.5 * 0.2 ** 2
    assert box_loss.asscalar() == pytest.approx((1.5 * l1_first + 0.5 * l1_second) / 2, rel=1e-5)


@pytest.mark.parametrize("hybrid", [False, True])
def test_loss_on_a_tiny_case(hybrid):
    # One image, 5 anchors, 2 classes (+ background). Anchor 0 is positive (class 1 -> target 2).
    logits = TINY_LOGITS
    cls_target = np.array([[2, 0, 0, 0, 0]], np.float32)
    box_pred = np.zeros((1, 20), np.float32)
    box_pred[0, :4] = [0.5, -2.0, 0.0, 1.0]
    box_target = np.zeros((1, 5, 4), np.float32)
    loss = SSDLoss()
    if hybrid:
        loss.hybridize()
    cls_loss, box_loss = loss(mx.nd.array(logits), mx.nd.array(box_pred), mx.nd.array(cls_target),
                                   mx.nd.array(box_target), mx.nd.array([1.0]))
    ce = _ce(logits, cls_target)
    negatives = sorted(ce[1:], reverse=True)[:3]  # 3:1 hard negatives
    assert cls_loss.asscalar() == pytest.approx(ce[0] + sum(negatives), rel=1e-5)
    smooth_l1 = 0.5 * 0.5 ** 2 + (2.0 - 0.5) + 0 + 0.5 * 1.0
    assert box_loss.asscalar() == pytest.approx(smooth_l1, rel=1e-5)


@pytest.mark.parametrize("hybrid,weighted", [(False, False), (True, False), (True, True)])
def test_loss_gradients_reach_only_positives_and_mined_negatives(hybrid, weighted):
    # Two images of 8 anchors, 2 classes: image 0 has 1 positive (3 hard negatives of 7), image 1
    # has none (so no negatives either). The gradients, by hand: softmax - one-hot on the kept
    # anchors, smooth L1's derivative on the positives, each times its weight over the positives.
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 8, 3)).astype(np.float32)
    cls_target = np.zeros((2, 8), np.float32)
    cls_target[0, 5] = 1
    box_pred = rng.normal(size=(2, 32)).astype(np.float32) * 2
    box_target = np.zeros((2, 8, 5 if weighted else 4), np.float32)
    box_target[0, 5, :4] = [0.3, -0.2, 3.0, 0.1]
    if weighted:
        box_target[0, 5, 4] = 2.0
    weight = 2.0 if weighted else 1.0
    loss = SSDLoss(weighted=weighted)
    if hybrid:
        loss.hybridize()
    logits_nd, box_nd = mx.nd.array(logits), mx.nd.array(box_pred)
    logits_nd.attach_grad()
    box_nd.attach_grad()
    with autograd.record():
        cls_loss, box_loss = loss(logits_nd, box_nd, mx.nd.array(cls_target), mx.nd.array(box_target),
                                  mx.nd.array([1.0]))
        total = cls_loss + box_loss
    total.backward()

    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)  # (2, 8, 3)
    ce = _ce(logits, cls_target)  # image 0's
    negatives = [i for i in np.argsort(-ce) if i != 5][:3]
    expected_cls = np.zeros_like(logits)
    for i, w in [(5, weight)] + [(i, 1.0) for i in negatives]:
        onehot = np.eye(3, dtype=np.float32)[int(cls_target[0, i])]
        expected_cls[0, i] = w * (probs[0, i] - onehot)
    np.testing.assert_allclose(logits_nd.grad.asnumpy(), expected_cls, rtol=1e-4, atol=1e-6)
    expected_box = np.zeros((2, 8, 4), np.float32)
    diff = box_pred.reshape(2, 8, 4)[0, 5] - box_target[0, 5, :4]
    expected_box[0, 5] = weight * np.clip(diff, -1, 1)  # smooth L1 (sigma 1): x inside |x| < 1, else its sign
    np.testing.assert_allclose(box_nd.grad.asnumpy().reshape(2, 8, 4), expected_box, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("base,size", [("mobilenet-0.25", 128), ("mobilenet-0.5", 128), ("mobilenet-1.0", 128),
                                       ("resnet-50", 128), ("vgg-16", 96)])
def test_one_training_step_then_export_and_import(base, size, tmp_path: Path):
    mx.random.seed(0)
    net = SSD(base, 3, size)
    net.initialize(mx.init.Xavier())
    net.materialize()
    net.hybridize()
    loss = SSDLoss()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1e-4})
    rng = np.random.default_rng(0)
    images = mx.nd.array(rng.integers(0, 255, (2, 3, size, size)), dtype="uint8")
    targets = [make_targets(net.anchors, np.array([[0.2, 0.2, 0.7, 0.8]], np.float32), np.array([1]), 0.5)
               for _ in range(2)]
    cls_target = mx.nd.array(np.stack([t[0] for t in targets]))
    box_target = mx.nd.array(np.stack([t[1] for t in targets]))
    before = net.class_heads[0].weight.data().copy()
    with autograd.record():
        cls_pred, box_pred = net(images)
        positives = mx.nd.array([float((cls_target > 0).sum().asscalar())])
        cls_loss, box_loss = loss(cls_pred, box_pred, cls_target, box_target, positives)
        total = cls_loss + box_loss
    total.backward()
    trainer.step(1)
    assert cls_pred.shape == (2, net.layout.num_anchors, 4)
    assert np.isfinite(total.asscalar())
    assert not np.allclose(before.asnumpy(), net.class_heads[0].weight.data().asnumpy())

    detector = SSDDetector(net, nms_threshold=0.45, nms_topk=100)
    detector.hybridize()
    detections = detector(images)
    assert detections.shape == (2, net.layout.num_anchors, 6)
    detector.export(str(tmp_path / "model_algo_1"), 0)
    imported = gluon.SymbolBlock.imports(str(tmp_path / "model_algo_1-symbol.json"), ["data"],
                                         str(tmp_path / "model_algo_1-0000.params"))
    np.testing.assert_array_equal(imported(images).asnumpy(), detections.asnumpy())


@pytest.mark.parametrize("base,zoo_name", [("mobilenet-0.25", "mobilenet0.25"), ("mobilenet-0.5", "mobilenet0.5")])
def test_pretrained_weights_from_the_zoo_folder(base, zoo_name, tmp_path: Path):
    from mxnet.gluon.model_zoo import vision
    zoo = vision.get_model(zoo_name, pretrained=False)
    zoo.initialize(mx.init.Normal(1.0))
    zoo(mx.nd.zeros((1, 3, 64, 64)))
    path = zoo_weights_file(base, tmp_path)
    assert path.name == f"{zoo_name}-{zoo_fetch.SHA1[zoo_name][:8]}.params"
    zoo.save_parameters(str(path))
    net = SSD(base, 2, 128)
    net.initialize(mx.init.Xavier())
    net.materialize()
    assert load_pretrained(net.features, base, tmp_path) == path
    np.testing.assert_array_equal(net.features.stages[0][0].weight.data().asnumpy(),
                                  zoo.features[0].weight.data().asnumpy())
    np.testing.assert_array_equal(net.features.stages[2][-2].gamma.data().asnumpy(),
                                  zoo.features[79].gamma.data().asnumpy())


def test_vgg_pretrained_subsamples_fc_layers(tmp_path: Path):
    from mxnet.gluon.model_zoo import vision
    zoo = vision.get_model("vgg16", pretrained=False)
    zoo.initialize(mx.init.Normal(0.01))
    zoo(mx.nd.zeros((1, 3, 224, 224)))
    path = zoo_weights_file("vgg-16", tmp_path)
    zoo.save_parameters(str(path))
    net = SSD("vgg-16", 2, 96)
    net.initialize(mx.init.Xavier())
    net.materialize()
    load_pretrained(net.features, "vgg-16", tmp_path)
    dense6 = zoo.features[31].weight.data().asnumpy().reshape(4096, 512, 7, 7)
    np.testing.assert_array_equal(net.features.fc[0].weight.data().asnumpy(), dense6[::4, :, ::3, ::3])
    np.testing.assert_array_equal(net.features.stages[4][4].weight.data().asnumpy(),
                                  zoo.features[28].weight.data().asnumpy())


def test_missing_pretrained_weights_say_where_and_what_to_do(tmp_path: Path):
    net = SSD("resnet-50", 2, 128)
    net.initialize()
    with pytest.raises(UserError) as info:
        load_pretrained(net.features, "resnet-50", tmp_path)
    message = str(info.value)
    assert str(zoo_weights_file("resnet-50", tmp_path)) in message and "use_pretrained_model=0" in message


def test_model_archive_cannot_write_beside_the_model_folder(tmp_path: Path):
    import io
    import tarfile

    from ssd_detector.model import artifact
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../model-x/evil.txt")  # lands in a sibling whose name starts alike
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(UserError, match="outside the model folder"):
        artifact.locate(archive, tmp_path / "model")
    assert not (tmp_path / "model-x").exists()


def _archive_with(tmp_path: Path, *members) -> Path:  # (TarInfo, bytes | None)
    import io
    import tarfile

    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


def _member(name: str, kind: bytes = b"0", size: int = 0, mode: int = 0o644):  # TarInfo
    import tarfile

    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, size, mode
    return info


@pytest.mark.parametrize("member,words", [
    (_member("fifo", b"6"), "'fifo' is a device, FIFO or other special file"),
    (_member("dev", b"3"), "'dev' is a device, FIFO or other special file"),
    (_member("link", b"2"), "'link' is a link"),
])
def test_model_archive_holds_plain_files_only(tmp_path: Path, member, words: str):
    from ssd_detector.model import artifact

    archive = _archive_with(tmp_path, (member, None))
    with pytest.raises(UserError, match=words):
        artifact.locate(archive, tmp_path / "model")


def test_model_archive_modes_are_normalized_and_size_is_capped(tmp_path: Path, monkeypatch):
    import stat

    from ssd_detector.model import artifact

    archive = _archive_with(tmp_path, (_member(artifact.SYMBOL_FILE, size=2, mode=0o4777), b"{}"))
    folder = artifact.locate(archive, tmp_path / "model")
    mode = stat.S_IMODE((folder / artifact.SYMBOL_FILE).stat().st_mode)
    assert mode == 0o644, oct(mode)
    monkeypatch.setattr(artifact, "MAX_ARCHIVE_BYTES", 1)
    with pytest.raises(UserError, match="add up to more than"):
        artifact.locate(archive, tmp_path / "again")
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(UserError, match="not a readable gzip tar archive"):
        artifact.locate(tmp_path / "broken.tar.gz", tmp_path / "third")


def test_a_failed_model_write_leaves_no_staging_folder(tmp_path: Path):
    from ssd_detector.model import artifact

    class Broken:
        def export(self, prefix: str, epoch: int) -> None:
            Path(prefix + "-symbol.json").write_text("{}")
            raise RuntimeError("disk full")

    (tmp_path / artifact.STAGING).mkdir()  # left by an earlier crash
    (tmp_path / artifact.STAGING / "old").write_text("x")
    with pytest.raises(RuntimeError):
        artifact.write(tmp_path, Broken(), {}, {})
    assert list(tmp_path.iterdir()) == []
