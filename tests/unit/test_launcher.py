"""The launcher's side of a distributed job without starting one: which worker a failure is
blamed on, and the files the launcher and its workers share (training.protocol)."""
import os
import signal
import time
from pathlib import Path

from ssd_detector.sagemaker_env import Paths
from ssd_detector.training import protocol
from ssd_detector.training.distributed import PEER_FAILED_TEXT, plan
from ssd_detector.training.launcher import Worker, _failure, _first_cause
from ssd_detector.training.protocol import WorkerFiles


def test_launcher_names_the_worker_that_caused_the_failure(tmp_path):
    """A killed worker is named before a survivor whose collectives then failed, whatever the
    ranks; a worker's own error before such consequences."""
    made = iter(range(100))

    def worker(rank: int, reason: str | None) -> Worker:
        """Each its own scratch folder: the same rank may stand for different outcomes."""
        files = WorkerFiles.in_scratch(tmp_path / f"worker-{next(made)}", rank, rank, False)
        files.reason_file.parent.mkdir()
        if reason is not None:
            files.reason_file.write_text(reason)
        return Worker(plan(["algo-1"], 4)[rank], None, files)  # type: ignore[arg-type]  # no process needed

    lost = worker(0, "internal error: MXNetError: Horovod has been shut down. This was caused by ...")
    killed = worker(1, None)
    own = worker(2, "data error: train/x.rec: bad record")
    silent = worker(3, None)
    failed = [(lost, 2), (silent, 2), (own, 1), (killed, -signal.SIGKILL)]
    assert _first_cause(failed)[0] is killed
    assert _first_cause(failed[:3])[0] is own
    assert _first_cause([(silent, 2), (lost, 2)])[0] is lost
    assert _first_cause([(silent, 2), (worker(0, None), 2)])[0].slot.rank == 0
    # Pipe mode: the worker that found bad records is named, not the one that stopped with it.
    follower = worker(0, f"channel 'train' (Pipe mode, train_0): {PEER_FAILED_TEXT}")
    finder = worker(3, "channel 'train' (Pipe mode, train_0) has 1 problem(s) in its data: ...")
    assert _first_cause([(follower, 1), (finder, 1)])[0] is finder
    # Rank 1 killed from outside, rank 0 aborted by Gloo when its peer vanished, both seen at once.
    aborted, killed_peer = worker(0, None), worker(1, None)
    assert _first_cause([(aborted, -signal.SIGABRT), (killed_peer, -signal.SIGKILL)])[0] is killed_peer
    assert _first_cause([(aborted, -signal.SIGABRT), (own, 1)])[0] is aborted  # an abort of its own


def test_a_failed_worker_is_reported_with_its_own_words(tmp_path: Path):
    files = WorkerFiles.in_scratch(tmp_path, 3, 1, False)
    worker = Worker(plan(["algo-1", "algo-2"], 2)[3], None, files)  # type: ignore[arg-type]
    assert "worker rank 3 on host algo-2 was killed by signal SIGKILL" in str(_failure(worker, -signal.SIGKILL))
    files.reason_file.write_text("data error: train/x.rec: bad record\n")
    error = _failure(worker, 1)
    assert str(error) == "worker rank 3 on host algo-2: data error: train/x.rec: bad record"
    assert error.exit_code == 1


def test_worker_files_travel_in_the_environment(tmp_path: Path):
    """What the launcher puts in a worker's environment is what the worker's side reads back."""
    paths = Paths(tmp_path / "opt_ml")
    files = WorkerFiles.in_scratch(tmp_path, rank=5, local_rank=1, shared_pipes=True)
    env = files.environment()
    assert protocol.failure_file(paths, env) == files.reason_file
    assert protocol.pipe_folder(paths, env) == files.pipe_dir == protocol.shared_pipe_dir(tmp_path, 1)
    # A process the launcher did not start: the job's failure file and SageMaker's FIFOs.
    assert protocol.failure_file(paths, {}) == paths.failure_file
    assert protocol.pipe_folder(paths, {}) == paths.data_dir
    assert protocol.PIPE_DIR_VAR not in WorkerFiles.in_scratch(tmp_path, 0, 0, shared_pipes=False).environment()
    assert not files.joined()
    protocol.mark_joined(env)
    assert files.joined() and files.quiet_seconds(time.time()) < 60
    protocol.mark_joined({})  # outside a distributed job: nothing to touch, no error
    os.utime(files.joined_file, (time.time() - 100, time.time() - 100))
    assert files.quiet_seconds(time.time()) >= 99


def test_a_consequence_is_told_from_a_cause(tmp_path: Path):
    files = WorkerFiles.in_scratch(tmp_path, 0, 0, False)
    assert files.reason() == "" and not files.reason_is_consequence()
    files.reason_file.write_text(f"channel 'train': {PEER_FAILED_TEXT}")
    assert files.reason_is_consequence()
    files.reason_file.write_text("internal error: MXNetError: Horovod has been shut down")
    assert files.reason_is_consequence()
    files.reason_file.write_text("data error: bad record")
    assert not files.reason_is_consequence()
