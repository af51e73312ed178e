"""Starting a job's worker processes on this host, without ssh or mpirun.

Every host of a SageMaker job runs the same ``train``. From ``resourceconfig.json`` each host's
launcher computes the same plan of ranks (one worker per GPU, one per host on a CPU, or
``SSD_WORKERS_PER_HOST``); hosts[0] also runs Horovod's rendezvous. Each local worker is
``ssd-detector train`` again, with its HOROVOD_* environment. The launcher forwards SIGTERM,
watches its workers, and ends the job when one fails or the job cannot form in time, writing
the failure reason with the host and rank. A job of one worker trains in this process.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Mapping

from ..data.pipe import PipeFanout, pipe_timeout
from ..machine import OMP_DEFAULTED_VAR, OMP_THREADS_VAR, gpu_count, usable_cpus
from ..errors import JobFailed, Stopped
from ..failure import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR
from ..sagemaker_env import BASE_DIR_ENV, Paths, ResourceConfig, env_int, read_input_data_config, read_resource_config
from . import distributed, interfaces
from .protocol import WorkerFiles, shared_pipe_dir

LOG = logging.getLogger(__name__)

WORKERS_PER_HOST_VAR = "SSD_WORKERS_PER_HOST"
RENDEZVOUS_PORT_VAR = "SSD_RENDEZVOUS_PORT"
JOIN_TIMEOUT_VAR = "SSD_JOIN_TIMEOUT"  # seconds for every host to join
PROGRESS_TIMEOUT_VAR = "SSD_PROGRESS_TIMEOUT"  # seconds a joined worker may go without progress
DEFAULT_PROGRESS_TIMEOUT = 1800
DEFAULT_RENDEZVOUS_PORT = 7777
DEFAULT_JOIN_TIMEOUT = 300
POLL_SECONDS = 0.2
# After one worker fails, the others get this long to stop on SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 10


def workers_per_host(environ: Mapping[str, str]) -> int:
    if environ.get(WORKERS_PER_HOST_VAR, "").strip():
        return env_int(environ, WORKERS_PER_HOST_VAR, 1, 1, 64)
    return max(1, gpu_count(environ))


def resolve(host: str, deadline: float) -> str:
    """The host's address; SageMaker's DNS entries may lag behind the start of the container."""
    while True:
        try:
            return socket.gethostbyname(host)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise JobFailed(f"host {host!r} of resourceconfig.json does not resolve ({exc}); "
                                "the job could not form", EXIT_INTERNAL_ERROR) from None
            time.sleep(1)


def wait_for_port(host: str, address: str, port: int, deadline: float, timeout: int) -> None:
    while True:
        try:
            with socket.create_connection((address, port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise JobFailed(f"the rendezvous on {host} ({address}:{port}) did not come up within {timeout} s; "
                                f"did {host} start, and is port {port} open between the hosts?",
                                EXIT_INTERNAL_ERROR) from None
            time.sleep(0.5)


@dataclass
class Worker:
    slot: distributed.Slot
    process: subprocess.Popen
    files: WorkerFiles

    def describe(self) -> str:
        return f"rank {self.slot.rank} on host {self.slot.hostname}"


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _first_cause(failed: list[tuple[Worker, int]]) -> tuple[Worker, int]:
    """The failed worker (and its exit code) to name: one killed by a signal from outside, then one
    that aborted (Gloo aborts a worker whose peer has vanished: seen in the same poll as the
    peer's SIGKILL, the abort is the consequence), then one with a reason of its own, then one whose
    collectives failed because another worker had gone, then one with no reason; the lowest rank
    among equals."""
    return min(failed, key=lambda wc: (_blame_order(*wc), wc[0].slot.rank))


def _blame_order(worker: Worker, code: int) -> int:
    if code < 0:
        return 1 if code == -signal.SIGABRT else 0
    if not worker.files.reason():
        return 4
    return 3 if worker.files.reason_is_consequence() else 2


def _failure(worker: Worker, code: int) -> JobFailed:
    reason = worker.files.reason()
    if reason:
        exit_code = EXIT_USER_ERROR if code == EXIT_USER_ERROR else EXIT_INTERNAL_ERROR
        return JobFailed(f"worker {worker.describe()}: {reason}", exit_code)
    return JobFailed(f"worker {worker.describe()} {_exit_description(code)}; the job was stopped", EXIT_INTERNAL_ERROR)


class Launcher:
    def __init__(self, paths: Paths, resources: ResourceConfig, per_host: int,
                 environ: Mapping[str, str] | None = None) -> None:
        self.paths = paths
        self.resources = resources
        self.per_host = per_host
        self.environ = dict(os.environ if environ is None else environ)
        self.port = env_int(self.environ, RENDEZVOUS_PORT_VAR, DEFAULT_RENDEZVOUS_PORT, 1, 65535)
        self.join_timeout = env_int(self.environ, JOIN_TIMEOUT_VAR, DEFAULT_JOIN_TIMEOUT, 1, 24 * 3600)
        self.progress_timeout = env_int(self.environ, PROGRESS_TIMEOUT_VAR, DEFAULT_PROGRESS_TIMEOUT, 10,
                                        7 * 24 * 3600)
        self.workers: list[Worker] = []
        self.interface = resources.network_interface_name  # checked against this host's in run()
        self._terminating = False

    def _forward_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.workers:  # still waiting for the rendezvous host: nothing to hand it to
            raise Stopped("SIGTERM while waiting for the job to form")
        LOG.warning("SIGTERM: passing it to the %d worker(s) of this host", len(self.workers))
        self._terminating = True
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)

    def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()

    def run(self) -> None:
        resources = self.resources
        deadline = time.monotonic() + self.join_timeout
        slots = distributed.plan(resources.hosts, self.per_host)
        mine = [s for s in slots if s.hostname == resources.current_host]
        master = resources.hosts[0]
        if len(resources.hosts) == 1:
            address = "127.0.0.1"  # one host: its name need not resolve (no resourceconfig.json)
        else:
            LOG.info("resolving the hosts %s", ", ".join(resources.hosts))
            address = resolve(master, deadline)
            for host in resources.hosts[1:]:
                resolve(host, deadline)
        self.interface = interfaces.choose_interface(resources.network_interface_name, address)
        LOG.info("distributed job: %d host(s) x %d worker(s); this is %s; rendezvous on %s (%s:%d), interface %s",
                 len(resources.hosts), self.per_host, resources.current_host, master, address, self.port,
                 self.interface)
        previous = signal.signal(signal.SIGTERM, self._forward_sigterm)
        try:
            rendezvous = distributed.Rendezvous(self.port, slots) if resources.is_master else None
        except OSError as exc:
            signal.signal(signal.SIGTERM, previous)
            raise JobFailed(f"cannot listen on port {self.port} for the Horovod rendezvous on {master}: "
                            f"{exc.strerror or exc}; another process holds it? Set {RENDEZVOUS_PORT_VAR} to a "
                            "free port (the same on every host)", EXIT_USER_ERROR) from None
        try:
            if rendezvous is None:
                wait_for_port(master, address, self.port, deadline, self.join_timeout)
            with tempfile.TemporaryDirectory(prefix="ssd-workers-") as scratch:
                fanout = self._share_pipes(mine, Path(scratch))
                try:
                    self._start(mine, address, Path(scratch), shared_pipes=fanout is not None)
                    self._watch(deadline)
                finally:
                    if fanout is not None:
                        fanout.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if any(w.process.poll() is None for w in self.workers):
                self._stop_all()
            if rendezvous is not None:
                rendezvous.stop()

    def _share_pipes(self, slots: list[distributed.Slot], scratch: Path) -> PipeFanout | None:
        """Pipe-mode channels with several workers on this host: each worker reads its own copy of
        the host's FIFOs (a FIFO's bytes go to one reader only)."""
        piped = [name for name, spec in read_input_data_config(self.paths).items()
                 if spec.input_mode == "Pipe" and name in ("train", "validation")]
        if not piped or len(slots) < 2:
            return None
        folders = [shared_pipe_dir(scratch, slot.local_rank) for slot in slots]
        LOG.info("Pipe mode: sharing %s between the %d workers of this host", ", ".join(piped), len(slots))
        return PipeFanout(self.paths.data_dir, folders, piped, pipe_timeout(self.environ)).start()

    def _start(self, slots: list[distributed.Slot], address: str, scratch: Path, shared_pipes: bool) -> None:
        cpus = usable_cpus()
        for slot in slots:
            files = WorkerFiles.in_scratch(scratch, slot.rank, slot.local_rank, shared_pipes)
            env = {**self.environ,
                   # Gloo's own timeout comes later than ours, so that the clearer message is ours.
                   **distributed.worker_environment(slot, address, self.port, self.interface,
                                                    self.join_timeout + 30),
                   **files.environment(),
                   BASE_DIR_ENV: str(self.paths.base)}
            # CPU workers share the cores (ignored on GPUs, where each worker has its own device);
            # a count the user gave is kept.
            if OMP_THREADS_VAR not in env or env.get(OMP_DEFAULTED_VAR):
                env[OMP_THREADS_VAR] = str(max(1, cpus // len(slots)))
            process = subprocess.Popen([sys.executable, "-m", "ssd_detector.cli", "train"], env=env)
            self.workers.append(Worker(slot, process, files))
            LOG.info("started worker rank %d (local rank %d), pid %d", slot.rank, slot.local_rank, process.pid)

    def _watch(self, join_deadline: float) -> None:
        joined = False
        while True:
            codes = [w.process.poll() for w in self.workers]
            if self._terminating:
                # A worker SIGTERM caught before its loop began ends by the signal: a stop, not a failure.
                codes = [0 if c == -signal.SIGTERM else c for c in codes]
            failed = [(w, c) for w, c in zip(self.workers, codes) if c not in (None, 0)]
            if failed:
                error = _failure(*_first_cause(failed))
                self._stop_all()
                raise error
            if all(c == 0 for c in codes):
                LOG.info("all %d worker(s) of this host finished", len(self.workers))
                return
            if joined and not self._terminating:
                self._check_progress()
            if not joined:
                joined = all(w.files.joined() for w in self.workers)
                if not joined and time.monotonic() > join_deadline and not self._terminating:
                    self._stop_all()
                    waiting = [w.describe() for w in self.workers if not w.files.joined()]
                    raise JobFailed(
                        f"the job did not form within {self.join_timeout} s ({JOIN_TIMEOUT_VAR}): "
                        f"{', '.join(waiting)} still waiting for the other hosts "
                        f"({', '.join(self.resources.hosts)}) at the rendezvous on {self.resources.hosts[0]}",
                        EXIT_INTERNAL_ERROR)
            time.sleep(POLL_SECONDS)

    def _check_progress(self) -> None:
        """Ends the job when a worker is alive but has made no progress for progress_timeout
        (a hang in a collective, a deadlocked data worker): bounded, with a reason."""
        now = time.time()
        try:
            quiet = [(w.files.quiet_seconds(now), w) for w in self.workers if w.process.poll() is None]
        except OSError:
            return  # a worker's file is being replaced; look again next time
        if not quiet:
            return
        if max(seconds for seconds, _ in quiet) > self.progress_timeout:
            # Peers of a stuck worker wait in its collectives, so all go quiet: name every one.
            named = ", ".join(f"{w.describe()} ({seconds:.0f} s)" for seconds, w in sorted(quiet, key=lambda q: -q[0])
                              if seconds > self.progress_timeout / 2)
            self._stop_all()
            raise JobFailed(
                f"no progress for more than {PROGRESS_TIMEOUT_VAR}={self.progress_timeout} s from worker(s) {named}: "
                "alive but stuck (a hang in a collective or in data loading), so the job was stopped",
                EXIT_INTERNAL_ERROR)


def for_host(paths: Paths, environ: Mapping[str, str] | None = None) -> Launcher | None:
    """This host's launcher of a distributed job, or None when the whole job is one worker (which
    then trains in this process)."""
    env = os.environ if environ is None else environ
    resources = read_resource_config(paths)
    per_host = workers_per_host(env)
    if per_host * len(resources.hosts) == 1:
        return None
    return Launcher(paths, resources, per_host, env)
