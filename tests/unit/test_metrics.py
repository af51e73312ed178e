"""The metric lines SageMaker's regexes read."""
import re

from ssd_detector.training.metrics import METRIC_DEFINITIONS, MetricLog


def test_metric_lines_match_the_built_in_regexes(caplog):
    log = MetricLog("algo-1")
    with caplog.at_level("INFO", logger="ssd_detector.metrics"):
        log.progress(10)
        log.train_losses(3, 100, 1.25, 0.5)
        log.throughput(115.2)
        log.validation_map(3, 0.4123)
    lines = [r.getMessage() for r in caplog.records]
    captured = {}
    for definition in METRIC_DEFINITIONS:
        values = [m.group(1) for line in lines if (m := re.search(definition["Regex"], line))]
        assert len(values) == 1, (definition, lines)
        captured[definition["Name"]] = float(values[0])
    assert captured == {"train:progress": 10.0, "train:smooth_l1": 0.5, "train:cross_entropy": 1.25,
                        "train:throughput": 115.2, "validation:mAP": 0.4123}
    assert "#quality_metric: host=algo-1, epoch=3, validation mAP <score>=(0.412300)" in lines
