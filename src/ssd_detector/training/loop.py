"""The epoch loop of one worker: train, log the metric lines, validate (VOC07 mAP), keep the
best model in ``model/``, checkpoint, and stop early when asked to. The job it runs is built by
``assembly.assemble``; a resume starts from the newest checkpoint. SIGTERM finishes the current
batch, saves a checkpoint and exits cleanly.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import FrameType
from typing import Any, Iterator

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ..data.loader import Batch, DetectionLoader
from ..data.sample import Issue
from ..data.stream import PassReport, StreamLoader
from ..errors import DataError, Stopped, UserError
from ..evaluation.voc_map import VOCMeanAP
from ..progress import format_seconds
from ..model import artifact
from . import checkpoint, distributed
from .assembly import assemble
from .averaging import WeightAverage
from .clipping import clip_global_norm
from .early_stopping import EarlyStopping, epochs_since_validation, validates
from .inputs import TrainingInputs, format_issues
from .metrics import MetricLog
from .protocol import mark_progress
from .report import EpochRow, TrainingReport
from .schedule import batches_per_epoch
from .time_budget import TimeBudget, seconds_per_epoch

LOG = logging.getLogger(__name__)

# Metric lines per epoch for the running training losses.
LOG_LINES_PER_EPOCH = 10


@dataclass
class EpochResult:
    cross_entropy: float
    smooth_l1: float
    images: int
    seconds: float
    stopped: bool  # SIGTERM arrived during the epoch
    clipped: int = 0  # updates whose gradient max_gradient_norm scaled down
    largest_norm: float = 0.0  # the largest gradient norm of the epoch (0 when not clipping)


class StopRequested:
    """Set by SIGTERM; the loop checks it between batches."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        LOG.warning("SIGTERM received: finishing the current batch, then saving and exiting")
        self.flag = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Training:
    """One worker's training: the job ``assemble`` builds, run epoch by epoch by ``run``."""

    def __init__(self, inputs: TrainingInputs, contexts: list[mx.Context], workers: int,
                 world: distributed.World | None = None) -> None:
        created = time.monotonic()  # the time budget counts from here, data loading included
        self.inputs = inputs
        self.hp = inputs.hyperparameters
        self.paths = inputs.paths
        self.contexts = contexts
        self.world = world or distributed.World()
        # Only rank 0 logs metric lines and writes model/ and checkpoints.
        self.metrics = MetricLog(inputs.resources.current_host, enabled=self.world.is_root)
        self.stop = StopRequested()
        self.early_stopping = EarlyStopping.from_hyperparameters(self.hp)
        job = assemble(inputs, contexts, workers, self.world, should_stop=lambda: self.stop.flag)
        self.net, self.detector, self.loss = job.net, job.detector, job.loss
        self.train_loader, self.val_loader = job.train_loader, job.val_loader
        self.trainer, self.schedule = job.trainer, job.schedule
        self.batch_size, self.updates_per_epoch = job.batch_size, job.updates_per_epoch
        self.average = WeightAverage(self.net.collect_params(), self.hp.ema_decay) if self.hp.ema_decay > 0 else None
        self.state = checkpoint.LoopState()
        self.budget = TimeBudget(self.hp.time_budget_seconds, created) if self.hp.time_budget_seconds else None
        self._validation_seconds = 0.0
        self._epoch_mark = 0.0  # when the latest epoch ended (time.monotonic())
        self.report = TrainingReport(self.paths.output_data_dir / "report", enabled=self.world.is_root)
        self.started = time.monotonic()
        self._first_epoch = 0  # the first epoch this process runs (later than 0 when resumed)
        self._pass_stopped = False  # the last pass over a Pipe-mode train channel ended by SIGTERM
        self._clipped, self._largest_norm = 0, 0.0  # this epoch's, with max_gradient_norm
        # What clipping reads every step, listed once (frozen layers are skipped by clip_global_norm).
        self._clip_params = list(self.net.collect_params().values()) if self.hp.max_gradient_norm > 0 else []

    # ----------------------------------------------------------------------------------------
    def run(self) -> None:
        hp = self.hp
        self.stop.install()
        try:
            if self.paths.checkpoint_dir.is_dir():
                restored = checkpoint.load(self.paths.checkpoint_dir, self.net, self.trainer, self.average)
                if restored is not None:
                    self.state = restored
            self._agree_on_state()
            if self.state.end_epoch and self.budget is not None:  # a resumed job keeps its budget's end
                self._move_end(self.hp.epochs, min(self.state.end_epoch, self.hp.epochs))
            else:
                self.state.end_epoch = 0  # restarted without a budget: every epoch
            LOG.info("training %s at %d on %s: %d training images, batch %d, %d epochs%s",
                     hp.base_network, hp.image_shape, ", ".join(str(c) for c in self.contexts),
                     hp.num_training_samples, hp.mini_batch_size, hp.epochs,
                     f", worker {self.world.rank} of {self.world.size} (batch {self.batch_size} each)"
                     if self.world.size > 1 else "")
            self.started, self._first_epoch = time.monotonic(), self.state.next_epoch
            self._epoch_mark = self.started
            epoch = self.state.next_epoch
            while epoch < self.planned_end:
                result = self.train_epoch(epoch)
                if result.stopped:
                    self.state.next_epoch = epoch  # the interrupted epoch runs again on resume
                    self._checkpoint()
                    LOG.warning("stopped by SIGTERM during epoch %d; checkpoint saved", epoch)
                    return
                try:
                    stop_early = self.end_epoch(epoch, result)
                except Stopped:  # SIGTERM while waiting for the validation stream: keep the epoch trained
                    self.state.next_epoch = epoch + 1
                    self._checkpoint()
                    LOG.warning("stopped by SIGTERM while validating after epoch %d; checkpoint saved", epoch)
                    return
                if self._agreed_stop(self.stop.flag):
                    LOG.warning("stopped by SIGTERM after epoch %d; checkpoint saved", epoch)
                    return
                if stop_early:
                    break
                epoch += 1
            self._finish()
        finally:
            self.stop.uninstall()
            self.train_loader.close()
            if self.val_loader is not None:
                self.val_loader.close()

    def _train_batches(self, epoch: int) -> Iterator[Batch]:
        loader = self.train_loader
        if isinstance(loader, DetectionLoader):
            loader.set_epoch(epoch)
            yield from loader
            return
        batches = loader.batches(epoch, read_ahead=epoch + 1 < self.planned_end)
        self._pass_stopped = False
        while True:
            batch = next(batches, None)
            if self.world.size > 1:
                # Parts of a stream differ in length: the pass goes on while any worker has a batch,
                # and a worker whose part has run out trains on recent samples meanwhile. A worker
                # stopped while waiting for its stream stops them all here.
                more, stops = self.world.allreduce_sum(np.array([float(batch is not None),
                                                                 float(loader.stopped)]))
                if stops:
                    self._pass_stopped = True
                    return
                if more == 0:
                    break
                if batch is None:
                    batch = loader.extra_batch()
            elif batch is None:
                break
            yield batch
        if loader.stopped:
            self._pass_stopped = True
            return
        self._end_pass(loader, "train", epoch)

    def train_epoch(self, epoch: int) -> EpochResult:
        total_batches = len(self.train_loader) if isinstance(self.train_loader, DetectionLoader) \
            else self.updates_per_epoch
        interval = max(1, total_batches // LOG_LINES_PER_EPOCH)
        ce_sum = l1_sum = 0.0
        ce_job = l1_job = 0.0
        seen = batches = 0
        self._clipped, self._largest_norm = 0, 0.0
        start = time.perf_counter()
        for index, batch in enumerate(self._train_batches(epoch)):
            assert batch.cls_targets is not None and batch.box_targets is not None  # training batches carry targets
            ce, l1, stop = self.train_step(batch.images, batch.cls_targets, batch.box_targets)
            mark_progress()
            if not (math.isfinite(ce) and math.isfinite(l1)):
                raise UserError(f"training diverged at epoch {epoch}, batch {index}: loss is not finite "
                                f"(cross_entropy={ce}, smooth_l1={l1}); lower learning_rate (now "
                                f"{self.hp.learning_rate:g}) or use a pretrained base network")
            ce_sum, l1_sum = ce_sum + ce, l1_sum + l1
            seen += len(batch.images)
            batches += 1
            if (index + 1) % interval == 0 or index + 1 == total_batches or stop:
                # Each worker's loss is its share of the job's loss: the sum is the job's.
                ce_job, l1_job = self.world.allreduce_sum(np.array([ce_sum, l1_sum])) / batches
                self.metrics.train_losses(epoch, index, float(ce_job), float(l1_job))
            if stop:
                return EpochResult(float(ce_job), float(l1_job), seen * self.world.size, time.perf_counter() - start,
                                   True)
        if self._pass_stopped:  # SIGTERM while waiting for the stream
            return EpochResult(float(ce_job), float(l1_job), seen * self.world.size, time.perf_counter() - start,
                               True)
        ce_job, l1_job = self.world.allreduce_sum(np.array([ce_sum, l1_sum])) / max(1, batches)
        return EpochResult(float(ce_job), float(l1_job), seen * self.world.size, time.perf_counter() - start, False,
                           self._clipped, self._largest_norm)

    def _end_pass(self, loader: StreamLoader, split: str, epoch: int) -> None:
        """After a pass over a Pipe-mode channel: fail on any bad record (all workers together),
        check the classes, and correct num_training_samples from the first training pass."""
        report = loader.report
        assert report is not None
        where = f" (Pipe mode, {report.channel}_{report.number})"
        issues, count = list(report.issues), report.issue_count
        sees_all = split != "train" or loader.source.num_parts == self.world.size  # the whole data set passed by
        if report.number == 0 and split == "train" and sees_all:
            missing = sorted(set(range(self.hp.num_classes)) - report.classes)
            if missing and report.images:
                listed = ", ".join(str(m) for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
                issues.append(Issue(split, f"class ids must be contiguous from 0 to {self.hp.num_classes - 1}: "
                                           f"no object has class id {listed}"))
                count += 1
        if not report.images and not count:
            issues.append(Issue(f"{report.channel}_{report.number}", "the stream held no images"))
            count = 1
        found = self.world.allreduce_sum(np.array([float(count > 0)]))[0]
        if count:
            raise DataError(format_issues(split, issues, count, where))
        if found:
            raise DataError(f"channel '{split}'{where}: {distributed.PEER_FAILED_TEXT}")
        for cid, name in report.class_names.items():
            self.inputs.class_names.setdefault(cid, name)
        if split == "train" and report.number == 0:
            self._correct_sample_count(report, loader, epoch)

    def _correct_sample_count(self, report: PassReport, loader: StreamLoader, epoch: int) -> None:
        counted = report.images
        if loader.source.num_parts != self.world.size:  # ShardedByS3Key: each host counted its own share
            counted = int(self.world.allreduce_sum(np.array([float(report.images if self.world.local_rank == 0
                                                                   else 0)]))[0])
        given = self.hp.num_training_samples
        if counted == given:
            return
        if self.world.is_root:
            LOG.warning("num_training_samples=%d but the first epoch streamed %d training images; using %d from "
                        "now on (the learning-rate schedule is computed from it)", given, counted, counted)
        self.hp = self.hp.with_value("num_training_samples", counted)
        self.updates_per_epoch = batches_per_epoch(counted, self.batch_size * self.world.size)
        self.schedule.rebase(self.trainer.optimizer.num_update, epoch + 1, self.updates_per_epoch)

    def train_step(self, images: np.ndarray, cls_targets: np.ndarray,
                   box_targets: np.ndarray) -> tuple[float, float, bool]:
        """One update on a batch split across this process's devices; returns this worker's share
        of the two losses and whether every worker is to stop (SIGTERM reached one of them)."""
        # Normalize by the positives of the whole batch of all workers, so the update does not
        # depend on the split; the stop flag travels in the same allreduce.
        local = np.array([(cls_targets > 0).sum(), float(self.stop.flag)], np.float64)
        job_positive, stops = self.world.allreduce_sum(local)
        num_positive = float(max(1.0, job_positive))
        contexts = self.contexts[:len(images)]
        xs = gluon.utils.split_and_load(images, contexts, even_split=False)
        cts = gluon.utils.split_and_load(cls_targets, contexts, even_split=False)
        bts = gluon.utils.split_and_load(box_targets, contexts, even_split=False)
        with autograd.record():
            parts = []
            for x, ct, bt in zip(xs, cts, bts):
                cls_pred, box_pred = self.net(x)
                parts.append(self.loss(cls_pred, box_pred, ct, bt, mx.nd.array([num_positive], ctx=x.context)))
            totals = [cls_loss + box_loss for cls_loss, box_loss in parts]
        autograd.backward(totals)
        norm = None
        if self.hp.max_gradient_norm > 0:
            self.trainer.allreduce_grads()
            # The optimizer applies the summed gradients times the trainer's own scale over step's
            # argument (with Horovod its average times the workers): clip that gradient.
            factor = self.trainer._scale / self.world.gradient_scale()
            norm = clip_global_norm(self._clip_params, self.hp.max_gradient_norm, factor)
            self.trainer.update(self.world.gradient_scale())
        else:
            self.trainer.step(self.world.gradient_scale())
        if self.average is not None:
            self.average.update()
        ce = sum(float(c.asscalar()) for c, _ in parts)
        l1 = sum(float(b.asscalar()) for _, b in parts)
        if norm is not None:  # read after the losses: the step is done by then
            value = float(norm.asscalar())
            self._clipped += value > self.hp.max_gradient_norm
            self._largest_norm = max(self._largest_norm, value)
        return ce, l1, stops > 0

    def _agreed_stop(self, flag: bool) -> bool:
        return bool(self.world.allreduce_sum(np.array([float(flag)]))[0] > 0)

    def _agree_on_state(self) -> None:
        """Every worker continues from rank 0's parameters and loop state (after a resume too)."""
        if self.world.size == 1:
            return
        self.world.broadcast_parameters(self.net.collect_params())
        self.state = checkpoint.LoopState.from_array(self.world.broadcast_array(self.state.to_array()))

    def validate(self, epoch: int = 0) -> float:
        """VOC07 mAP over the whole validation set. Every worker runs it (no slower than rank 0
        alone, and no worker idles in a collective meanwhile); rank 0's figure is everyone's, as
        batch-norm statistics may differ between workers."""
        return self.world.broadcast_float(self._validate_here(epoch))

    def _validation_batches(self, epoch: int) -> Iterator[Batch]:
        loader = self.val_loader
        assert loader is not None
        if isinstance(loader, DetectionLoader):
            yield from loader
            return
        yield from loader.batches(epoch)
        if loader.stopped:
            raise Stopped("SIGTERM while reading the validation stream")
        self._end_pass(loader, "validation", epoch)

    def _averaged(self) -> AbstractContextManager:
        """The weight average in the network inside the block, when ema_decay asks for one."""
        return self.average.applied() if self.average is not None else nullcontext()

    def _validate_here(self, epoch: int) -> float:
        metric = VOCMeanAP(self.hp.num_classes, self.hp.overlap_threshold, voc07=True)
        with self._averaged():
            return self._score(metric, epoch)

    def _score(self, metric: VOCMeanAP, epoch: int) -> float:
        for batch in self._validation_batches(epoch):
            mark_progress()
            contexts = self.contexts[:len(batch.images)]
            xs = gluon.utils.split_and_load(batch.images, contexts, even_split=False)
            detections = np.concatenate([self.detector(x).asnumpy() for x in xs])  # (B, N, 6)
            for rows, label in zip(detections, batch.labels):
                rows = rows[rows[:, 0] >= 0]
                label = label[label[:, 0] >= 0]
                metric.update(rows[:, 2:6], rows[:, 0].astype(np.int64), rows[:, 1],
                              label[:, 1:5], label[:, 0].astype(np.int64), label[:, 5] > 0)
        return metric.value()

    @property
    def planned_end(self) -> int:
        """The epoch the job ends before: ``epochs``, or earlier when the time budget moved it."""
        return self.state.end_epoch or self.hp.epochs

    def _move_end(self, old_end: int, end: int) -> None:
        """The job ends before ``end`` instead of ``old_end`` from now on; the learning-rate
        schedule moves with it."""
        self.schedule.end_at(old_end, end, self.trainer.optimizer.num_update, self.state.next_epoch,
                             self.updates_per_epoch)
        self.state.end_epoch = end

    def _fit_budget(self, epoch: int) -> None:
        """After epoch ``epoch`` (validated and saved): moves the end earlier when the epochs left
        do not fit the time budget, or later again when faster epochs leave room (never past
        ``epochs``). Rank 0's clock decides for every worker."""
        if self.budget is None:
            return
        now = time.monotonic()
        epoch_seconds, self._epoch_mark = now - self._epoch_mark, now
        end = self.budget.end_after(now, epoch_seconds, self._validation_seconds, epoch + 1, self.planned_end,
                                    self.hp.epochs)
        end = round(self.world.broadcast_float(float(end)))
        if end == self.planned_end:
            return
        self._move_end(self.planned_end, end)
        if not self.world.is_root:
            return
        steps = [e for e in self.schedule.step_epochs if e > epoch]
        LOG.warning("time_budget_seconds=%d: %s (%.1f s an epoch, %.0f s used); %s",
                    self.hp.time_budget_seconds,
                    "every epoch fits again" if end == self.hp.epochs
                    else f"epochs {end} to {self.hp.epochs - 1} do not fit, the job ends after epoch {end - 1}"
                    if end > epoch + 1 else f"no further epoch fits, the job ends after epoch {epoch}",
                    seconds_per_epoch(self.budget.epoch_seconds), now - self.budget.started,
                    f"learning-rate steps now at epochs {','.join(map(str, steps))}" if steps
                    else "no learning-rate step ahead")

    def end_epoch(self, epoch: int, result: EpochResult) -> bool:
        """Logs, validates, keeps the best model and checkpoints; returns whether to stop early."""
        throughput = result.images / max(result.seconds, 1e-9)
        self.metrics.throughput(throughput)
        summary = (f"Epoch {epoch}: cross_entropy={result.cross_entropy:.4f} smooth_l1={result.smooth_l1:.4f} "
                   f"{throughput:.1f} images/s, {result.seconds:.1f} s")
        if self.hp.max_gradient_norm > 0:
            summary += (f", gradient clipped in {result.clipped} updates (largest norm "
                        f"{result.largest_norm:.4g}, max_gradient_norm={self.hp.max_gradient_norm:g})")
        stop_early = False
        value: float | None = None
        if self.val_loader is None:
            self._save_model()
        elif validates(epoch, self.hp.validation_interval, self.planned_end):
            value, stop_early = self._validate_epoch(epoch)
        self.state.next_epoch = epoch + 1
        self._fit_budget(epoch)
        if self.val_loader is not None and value is None and epoch + 1 >= self.planned_end:
            value, stop_early = self._validate_epoch(epoch)  # the budget made this epoch the last
        if value is not None:
            summary += f", validation mAP={value:.4f}"
        elapsed = time.monotonic() - self.started
        left = elapsed / (epoch + 1 - self._first_epoch) * (self.planned_end - epoch - 1)
        summary += f", {format_seconds(elapsed)} elapsed, {format_seconds(left)} left"
        LOG.info("%s", summary)
        self.report.add_epoch(EpochRow(epoch, result.cross_entropy, result.smooth_l1, value,
                                       float(self.trainer.learning_rate), result.seconds, throughput))
        self.metrics.progress(100.0 * (epoch + 1) / self.planned_end)
        self._checkpoint()
        return stop_early

    def _validate_epoch(self, epoch: int) -> tuple[float, bool]:
        """Validates the weights after ``epoch``, saves them when best; returns the mAP and
        whether early stopping ends the job."""
        validation_start = time.monotonic()
        value = self.validate(epoch)
        self._validation_seconds = time.monotonic() - validation_start
        self.metrics.validation_map(epoch, value)
        verdict = self.early_stopping.observe(self.state, epoch, value,
                                              epochs_since_validation(epoch, self.hp.validation_interval))
        if verdict.improved:
            LOG.info("Updating the best model with validation-mAP=%.6f", value)
            self._save_model()
        if verdict.stop:
            LOG.info("early stopping after epoch %d: no improvement of validation mAP over %.4f for %d epochs",
                     epoch, self.state.best_map, self.state.epochs_without_improvement)
        return value, verdict.stop

    def _save_model(self) -> None:
        if not self.world.is_root:
            return
        with self._averaged():
            if self.val_loader is None:  # export needs one forward of the hybridized detector
                size = self.hp.image_shape
                self.detector(mx.nd.zeros((1, 3, size, size), ctx=self.contexts[0], dtype="uint8"))
            artifact.write(self.paths.model_dir, self.detector, self.hp.to_strings(), self.inputs.class_names)
        LOG.info('Saved model to "%s"', self.paths.model_dir / artifact.PARAMS_FILE)

    def _checkpoint(self) -> None:
        if self.world.is_root and self.paths.checkpoint_dir.is_dir():
            checkpoint.save(self.paths.checkpoint_dir, self.net, self.trainer, self.state, self.average)

    def _finish(self) -> None:
        if self.val_loader is not None:
            if self.state.best_epoch < 0:
                self._save_model()
            LOG.info("best validation mAP %.6f at epoch %d", self.state.best_map, self.state.best_epoch)
        LOG.info("training finished; model in %s", self.paths.model_dir)
        self.report.evaluate_model(self.paths.model_dir, self.inputs.validation, self.hp.num_classes)
