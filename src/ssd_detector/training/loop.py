"""The epoch loop of one worker over an assembled job: train, log the metric lines, validate
(VOC07 mAP), keep the best model in ``model/``, checkpoint, fit the time budget, and stop early
when asked to. A resume starts from the newest checkpoint; SIGTERM finishes the current batch,
saves a checkpoint and exits cleanly. The parts it drives live beside it: ``step`` (one update),
``passes`` (Pipe-mode streams), ``validation``, ``time_budget`` and ``early_stopping``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Iterator

import mxnet as mx
import numpy as np

from ..data.loader import Batch, DetectionLoader
from ..errors import Stopped, UserError
from ..model import artifact
from ..progress import format_seconds
from . import checkpoint
from .assembly import Job  # the type only: the loop runs what assembly built
from .averaging import averaged
from .distributed import World
from .early_stopping import EarlyStopping, epochs_since_validation, validates
from .inputs import TrainingInputs
from .metrics import MetricLog
from .passes import StreamPasses
from .protocol import mark_progress
from .report import EpochRow, TrainingReport
from .schedule import batches_per_epoch
from .signals import StopRequested
from .time_budget import JobEnd, TimeBudget
from .validation import Validator

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


class Loop:
    """``Loop(job, inputs, world, stop, created).run()``; ``created`` is when the job began
    (time.monotonic()), from which the time budget counts, data loading included."""

    def __init__(self, job: Job, inputs: TrainingInputs, world: World, stop: StopRequested,
                 created: float) -> None:
        self.job, self.inputs, self.world, self.stop = job, inputs, world, stop
        self.hp, self.paths = inputs.hyperparameters, inputs.paths
        self.updates_per_epoch = job.updates_per_epoch
        # Only rank 0 logs metric lines and writes model/, checkpoints and the report.
        self.metrics = MetricLog(inputs.resources.current_host, enabled=world.is_root)
        self.report = TrainingReport(self.paths.output_data_dir / "report", enabled=world.is_root)
        self.early_stopping = EarlyStopping.from_hyperparameters(self.hp)
        self.passes = StreamPasses(world, self.hp.num_classes, inputs.class_names, self._use_sample_count)
        self.validator = Validator(job.detector, job.contexts, world, self.hp.num_classes,
                                   self.hp.overlap_threshold, self._validation_batches, job.average)
        budget = TimeBudget(self.hp.time_budget_seconds, created) if self.hp.time_budget_seconds else None
        self.end = JobEnd(self.hp.epochs, job.schedule, budget, world)
        self.state = checkpoint.LoopState()
        self.started = time.monotonic()
        self._first_epoch = 0  # the first epoch this process runs (later than 0 when resumed)
        self._validation_seconds = 0.0

    @property
    def planned_end(self) -> int:
        return self.end.planned(self.state)

    def run(self) -> None:
        self.stop.install()
        try:
            self._restore()
            self._log_start()
            epoch = self._first_epoch = self.state.next_epoch
            self.started = self.end.epoch_mark = time.monotonic()
            while epoch < self.planned_end:
                result = self.train_epoch(epoch)
                if result.stopped:
                    self.state.next_epoch = epoch  # the interrupted epoch runs again on resume
                    return self._stopped(f"during epoch {epoch}")
                try:
                    stop_early = self.end_epoch(epoch, result)
                except Stopped:  # SIGTERM while waiting for the validation stream: keep the epoch trained
                    self.state.next_epoch = epoch + 1
                    return self._stopped(f"while validating after epoch {epoch}")
                if self._agreed(self.stop.flag):
                    LOG.warning("stopped by SIGTERM after epoch %d; checkpoint saved", epoch)
                    return
                if stop_early:
                    break
                epoch += 1
            self._finish()
        finally:
            self.stop.uninstall()
            self.job.train_loader.close()
            if self.job.val_loader is not None:
                self.job.val_loader.close()

    # ------------------------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int) -> EpochResult:
        loader = self.job.train_loader
        total = len(loader) if isinstance(loader, DetectionLoader) else self.updates_per_epoch
        interval = max(1, total // LOG_LINES_PER_EPOCH)
        ce_sum = l1_sum = ce_job = l1_job = 0.0
        seen = batches = 0
        stopped = False
        self.job.step.reset_counts()
        start = time.perf_counter()
        for index, batch in enumerate(self._train_batches(epoch)):
            assert batch.cls_targets is not None and batch.box_targets is not None  # training batches carry targets
            result = self.job.step(batch.images, batch.cls_targets, batch.box_targets, self.stop.flag)
            mark_progress()
            ce, l1 = result.cross_entropy, result.smooth_l1
            if not (math.isfinite(ce) and math.isfinite(l1)):
                raise UserError(f"training diverged at epoch {epoch}, batch {index}: loss is not finite "
                                f"(cross_entropy={ce}, smooth_l1={l1}); lower learning_rate (now "
                                f"{self.hp.learning_rate:g}) or use a pretrained base network")
            ce_sum, l1_sum, seen, batches = ce_sum + ce, l1_sum + l1, seen + len(batch.images), batches + 1
            if (index + 1) % interval == 0 or index + 1 == total or result.stop:
                # Each worker's loss is its share of the job's loss: the sum is the job's.
                ce_job, l1_job = self.world.allreduce_sum(np.array([ce_sum, l1_sum])) / batches
                self.metrics.train_losses(epoch, index, float(ce_job), float(l1_job))
            if result.stop:
                stopped = True
                break
        seconds, images = time.perf_counter() - start, seen * self.world.size
        if stopped or self.passes.stopped:  # SIGTERM, also while waiting for a stream
            return EpochResult(float(ce_job), float(l1_job), images, seconds, True)
        ce_job, l1_job = self.world.allreduce_sum(np.array([ce_sum, l1_sum])) / max(1, batches)
        return EpochResult(float(ce_job), float(l1_job), images, seconds, False, self.job.step.clipped,
                           self.job.step.largest_norm)

    def _train_batches(self, epoch: int) -> Iterator[Batch]:
        loader = self.job.train_loader
        if isinstance(loader, DetectionLoader):
            loader.set_epoch(epoch)
            return iter(loader)
        return self.passes.train_batches(loader, epoch, read_ahead=epoch + 1 < self.planned_end)

    def _validation_batches(self, epoch: int) -> Iterator[Batch]:
        loader = self.job.val_loader
        assert loader is not None  # validate only with a validation channel
        if isinstance(loader, DetectionLoader):
            return iter(loader)
        return self.passes.validation_batches(loader, epoch)

    def _use_sample_count(self, counted: int, epoch: int) -> None:
        """The first Pipe-mode pass counted the training images: the schedule uses that count."""
        given = self.hp.num_training_samples
        if counted == given:
            return
        if self.world.is_root:
            LOG.warning("num_training_samples=%d but the first epoch streamed %d training images; using %d from "
                        "now on (the learning-rate schedule is computed from it)", given, counted, counted)
        self.hp = self.hp.with_value("num_training_samples", counted)
        self.updates_per_epoch = batches_per_epoch(counted, self.job.batch_size * self.world.size)
        self.job.schedule.rebase(self._updates_done, epoch + 1, self.updates_per_epoch)

    @property
    def _updates_done(self) -> int:
        return int(self.job.trainer.optimizer.num_update)

    def end_epoch(self, epoch: int, result: EpochResult) -> bool:
        """Logs, validates, keeps the best model and checkpoints; returns whether to stop early."""
        throughput = result.images / max(result.seconds, 1e-9)
        self.metrics.throughput(throughput)
        summary = (f"Epoch {epoch}: cross_entropy={result.cross_entropy:.4f} smooth_l1={result.smooth_l1:.4f} "
                   f"{throughput:.1f} images/s, {result.seconds:.1f} s")
        if self.hp.max_gradient_norm > 0:
            summary += (f", gradient clipped in {result.clipped} updates (largest norm "
                        f"{result.largest_norm:.4g}, max_gradient_norm={self.hp.max_gradient_norm:g})")
        stop_early, value = False, None
        if self.job.val_loader is None:
            self._save_model()
        elif validates(epoch, self.hp.validation_interval, self.planned_end):
            value, stop_early = self._validate(epoch)
        self.state.next_epoch = epoch + 1
        self.end.fit(self.state, epoch, time.monotonic(), self._validation_seconds, self._updates_done,
                     self.updates_per_epoch)
        if self.job.val_loader is not None and value is None and epoch + 1 >= self.planned_end:
            value, stop_early = self._validate(epoch)  # the budget made this epoch the last
        if value is not None:
            summary += f", validation mAP={value:.4f}"
        elapsed = time.monotonic() - self.started
        left = elapsed / (epoch + 1 - self._first_epoch) * (self.planned_end - epoch - 1)
        LOG.info("%s, %s elapsed, %s left", summary, format_seconds(elapsed), format_seconds(left))
        self.report.add_epoch(EpochRow(epoch, result.cross_entropy, result.smooth_l1, value,
                                       float(self.job.trainer.learning_rate), result.seconds, throughput))
        self.metrics.progress(100.0 * (epoch + 1) / self.planned_end)
        self._checkpoint()
        return stop_early

    def _validate(self, epoch: int) -> tuple[float, bool]:
        """Validates the weights after ``epoch``, saves them when best; returns the mAP and
        whether early stopping ends the job."""
        started = time.monotonic()
        value = self.validator(epoch)
        self._validation_seconds = time.monotonic() - started
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

    # ------------------------------------------------------------------- start, state and end
    def _restore(self) -> None:
        """The newest checkpoint, then rank 0's parameters and loop state on every worker."""
        if self.paths.checkpoint_dir.is_dir():
            restored = checkpoint.load(self.paths.checkpoint_dir, self.job.net, self.job.trainer, self.job.average)
            if restored is not None:
                self.state = restored
        if self.world.size > 1:
            self.world.broadcast_parameters(self.job.net.collect_params())
            self.state = checkpoint.LoopState.from_array(self.world.broadcast_array(self.state.to_array()))
        self.end.resume(self.state, self._updates_done, self.updates_per_epoch)

    def _log_start(self) -> None:
        hp = self.hp
        LOG.info("training %s at %d on %s: %d training images, batch %d, %d epochs%s",
                 hp.base_network, hp.image_shape, ", ".join(str(c) for c in self.job.contexts),
                 hp.num_training_samples, hp.mini_batch_size, hp.epochs,
                 f", worker {self.world.rank} of {self.world.size} (batch {self.job.batch_size} each)"
                 if self.world.size > 1 else "")

    def _agreed(self, flag: bool) -> bool:
        return bool(self.world.allreduce_sum(np.array([float(flag)]))[0] > 0)

    def _stopped(self, when: str) -> None:
        self._checkpoint()
        LOG.warning("stopped by SIGTERM %s; checkpoint saved", when)

    def _save_model(self) -> None:
        if not self.world.is_root:
            return
        with averaged(self.job.average):
            if self.job.val_loader is None:  # export needs one forward of the hybridized detector
                size = self.hp.image_shape
                self.job.detector(mx.nd.zeros((1, 3, size, size), ctx=self.job.contexts[0], dtype="uint8"))
            artifact.write(self.paths.model_dir, self.job.detector, {**self.hp.to_strings(), **self.job.artifact_entries},
                           self.inputs.class_names)
        LOG.info('Saved model to "%s"', self.paths.model_dir / artifact.PARAMS_FILE)

    def _checkpoint(self) -> None:
        if self.world.is_root and self.paths.checkpoint_dir.is_dir():
            checkpoint.save(self.paths.checkpoint_dir, self.job.net, self.job.trainer, self.state, self.job.average)

    def _finish(self) -> None:
        if self.job.val_loader is not None:
            if self.state.best_epoch < 0:
                self._save_model()
            LOG.info("best validation mAP %.6f at epoch %d", self.state.best_map, self.state.best_epoch)
        LOG.info("training finished; model in %s", self.paths.model_dir)
        self.report.evaluate_model(self.paths.model_dir, self.inputs.validation, self.hp.num_classes)
