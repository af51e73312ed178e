"""The log lines SageMaker's built-in algorithm prints, which its metric definitions parse.

Each line matches, character for character, one regex of the built-in's metric definitions:
  train:progress        #progress_metric: host=\\S+, completed (\\S+) %
  train:smooth_l1       #quality_metric: host=\\S+, epoch=\\S+, batch=\\S+ train smooth_l1 <loss>=(\\S+)
  train:cross_entropy   #quality_metric: host=\\S+, epoch=\\S+, batch=\\S+ train cross_entropy <loss>=(\\S+)
  train:throughput      #throughput_metric: host=\\S+, train throughput=(\\S+) records/second
  validation:mAP        #quality_metric: host=\\S+, epoch=\\S+, validation mAP <score>=\\((\\S+)\\)
"""
from __future__ import annotations

import logging
import re

LOG = logging.getLogger("ssd_detector.metrics")

METRIC_DEFINITIONS = (
    {"Name": "train:progress", "Regex": r"#progress_metric: host=\S+, completed (\S+) %"},
    {"Name": "train:smooth_l1",
     "Regex": r"#quality_metric: host=\S+, epoch=\S+, batch=\S+ train smooth_l1 <loss>=(\S+)"},
    {"Name": "train:cross_entropy",
     "Regex": r"#quality_metric: host=\S+, epoch=\S+, batch=\S+ train cross_entropy <loss>=(\S+)"},
    {"Name": "train:throughput", "Regex": r"#throughput_metric: host=\S+, train throughput=(\S+) records/second"},
    {"Name": "validation:mAP", "Regex": r"#quality_metric: host=\S+, epoch=\S+, validation mAP <score>=\((\S+)\)"},
)


def metric_values(log_text: str, name: str) -> list[float]:
    """Every value a metric definition (by its name, e.g. "validation:mAP") extracts from a job's
    log, in order: what SageMaker would chart from the same lines."""
    regexes = {d["Name"]: d["Regex"] for d in METRIC_DEFINITIONS}
    if name not in regexes:
        raise ValueError(f"metric {name!r} is not one of {', '.join(regexes)}")
    return [float(v) for v in re.findall(regexes[name], log_text)]


class MetricLog:
    """Writes the metric lines of one host."""

    def __init__(self, host: str, enabled: bool = True) -> None:
        self.host = host
        self.enabled = enabled

    def _emit(self, line: str) -> None:
        if self.enabled:
            LOG.info("%s", line)

    def progress(self, percent: float) -> None:
        self._emit(f"#progress_metric: host={self.host}, completed {percent:g} % of epochs")

    def train_losses(self, epoch: int, batch: int, cross_entropy: float, smooth_l1: float) -> None:
        self._emit(f"#quality_metric: host={self.host}, epoch={epoch}, batch={batch} "
                   f"train cross_entropy <loss>={cross_entropy:.6f}")
        self._emit(f"#quality_metric: host={self.host}, epoch={epoch}, batch={batch} "
                   f"train smooth_l1 <loss>={smooth_l1:.6f}")

    def throughput(self, records_per_second: float) -> None:
        self._emit(f"#throughput_metric: host={self.host}, train throughput={records_per_second:.4f} records/second")

    def validation_map(self, epoch: int, value: float) -> None:
        self._emit(f"#quality_metric: host={self.host}, epoch={epoch}, validation mAP <score>=({value:.6f})")
