"""Everything Horovod, and only here: the rendezvous server, the plan of ranks, each worker's
environment, and the collective operations the training loop uses.

A job of one worker never loads Horovod: ``World`` is then a single process and every
collective is the identity. Under Horovod the loop follows the fixed order init -> pin the
device -> shard -> broadcast the parameters -> DistributedTrainer.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

LOG = logging.getLogger(__name__)
# What Horovod's collectives raise on the surviving workers once another worker has gone: the
# launcher reads it as a consequence, not the cause, of a failed job.
PEER_LOST_TEXT = "Horovod has been shut down"
# What a worker reports when it stops because another worker found the problem.
PEER_FAILED_TEXT = "another worker found problems in the data and reports them; this worker stopped with it"

@dataclass(frozen=True)
class Slot:
    """One worker of the plan."""
    hostname: str
    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int


def plan(hosts: Sequence[str], per_host: int) -> list[Slot]:
    """Horovod's own assignment of ranks to hosts (the one horovodrun makes): every host's
    launcher computes the same plan from the same resourceconfig.json."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    slots = get_host_assignments(parse_hosts(",".join(f"{h}:{per_host}" for h in hosts)), len(hosts) * per_host)
    return [Slot(s.hostname, s.rank, s.size, s.local_rank, s.local_size, s.cross_rank, s.cross_size) for s in slots]


class Rendezvous:
    """Horovod's HTTP rendezvous (key-value store) on a fixed port, run by hosts[0]'s launcher.
    horovodrun would pick a random port; the other hosts must know it in advance."""

    def __init__(self, port: int, slots: Sequence[Slot]) -> None:
        from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
        from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

        self._httpd = RendezvousHTTPServer(("", port), RendezvousHandler, 0)
        hosts = list(dict.fromkeys(s.hostname for s in slots))
        per_host = slots[0].local_size
        self._httpd.init(get_host_assignments(parse_hosts(",".join(f"{h}:{per_host}" for h in hosts)), len(slots)))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rendezvous", daemon=True)
        self._thread.start()
        LOG.info("Horovod rendezvous listening on port %d for %d worker(s)", port, len(slots))

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def worker_environment(slot: Slot, rendezvous_address: str, rendezvous_port: int, interface: str,
                       timeout_seconds: int) -> dict[str, str]:
    """The HOROVOD_* variables that make a process started on its own join the job (no ssh, no mpirun)."""
    return {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous_address,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous_port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_GLOO_IFACE": interface,
        "NCCL_SOCKET_IFNAME": interface,
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(timeout_seconds),
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
    }


def is_worker(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by the launcher as one Horovod worker."""
    return "HOROVOD_RANK" in (os.environ if environ is None else environ)


class World:
    """The single-process world: one worker, collectives are the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def broadcast_array(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's values, on every worker (float64)."""
        return np.asarray(values, np.float64)

    def broadcast_float(self, value: float) -> float:
        return float(self.broadcast_array(np.array([value]))[0])

    def broadcast_parameters(self, params: Mapping[str, Any]) -> None:
        """params: a gluon ParameterDict; every worker gets rank 0's values."""
        pass

    def trainer(self, params: Mapping[str, Any], optimizer: str, optimizer_params: dict,
                kvstore: str | None, update_on_kvstore: bool | None = None) -> Any:
        """update_on_kvstore=False: the gradients are summed first and then each device updates,
        so the summed gradients can be changed in between (clipping)."""
        from mxnet import gluon

        return gluon.Trainer(params, optimizer, optimizer_params, kvstore=kvstore,
                             update_on_kvstore=update_on_kvstore if kvstore else None)

    def gradient_scale(self) -> float:
        """What trainer.step takes so that the update is the sum of the workers' gradients."""
        return 1.0

    def gradient_factor(self) -> float:
        """What the optimizer multiplies the summed gradients by when stepped with gradient_scale():
        the trainer rescales by its own scale over step's argument, and these are equal here
        (gluon.Trainer: 1 and 1; Horovod's DistributedTrainer: 1/size and 1/size)."""
        return 1.0

    def shutdown(self, clean: bool = True) -> None:
        pass


class HorovodWorld(World):
    def __init__(self) -> None:
        import horovod.mxnet as hvd

        self._hvd = hvd
        hvd.init()
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        LOG.info("Horovod worker rank %d of %d (local rank %d of %d)", self.rank, self.size, self.local_rank,
                 self.local_size)

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        import mxnet as mx

        tensor = mx.nd.array(values, dtype="float64")  # exact sums of counts and flags
        return self._hvd.allreduce(tensor, average=False, name="allreduce_sum").asnumpy()

    def broadcast_array(self, values: np.ndarray) -> np.ndarray:
        import mxnet as mx

        tensor = mx.nd.array(values, dtype="float64")
        return self._hvd.broadcast(tensor, root_rank=0, name=f"broadcast_array.{tensor.size}").asnumpy()

    def broadcast_parameters(self, params: Mapping[str, Any]) -> None:
        import mxnet as mx

        # Copies made by MXNet's engine, in the plain layout Horovod sends. A copy outside the
        # engine (asnumpy) waits only for the writes queued when it starts: an inference forward
        # still running (materialize() in every job, validation before a resume) queues, as each
        # oneDNN convolution runs, an in-place change of its weight to a blocked layout, which can
        # land while asnumpy copies and hand Horovod half-reordered bytes (one head's weights off
        # by 50-140% on every worker, rank 0 included). The engine orders its own copy before or
        # after that change.
        plain = []
        for name, param in sorted(params.items()):
            copy = param.data().copyto(mx.cpu())
            self._hvd.broadcast_(copy, root_rank=0, name=f"parameter.{name}")
            plain.append((param, copy))
        mx.nd.waitall()
        for param, copy in plain:
            param.set_data(copy)

    def trainer(self, params: Mapping[str, Any], optimizer: str, optimizer_params: dict,
                kvstore: str | None, update_on_kvstore: bool | None = None) -> Any:
        # One device per worker, no kvstore: allreduce_grads() then update() work as they are.
        return self._hvd.DistributedTrainer(params, optimizer, optimizer_params)

    def gradient_scale(self) -> float:
        # DistributedTrainer averages the workers' gradients; the loss is already normalized by
        # the positives of all workers, so the sum is wanted: step(1/size) rescales by size.
        return 1.0 / self.size

    def shutdown(self, clean: bool = True) -> None:
        """clean: the loop ended normally; wait for this worker's last collectives, then for
        every worker (rank 0 may still be writing), so nobody's pending operation meets a
        Horovod that is gone. After an error, just leave: the launcher stops the others."""
        import mxnet as mx

        if clean:
            mx.nd.waitall()
            self.allreduce_sum(np.zeros(1))
        self._hvd.shutdown()


def current_world() -> World:
    """A Horovod world when started as a worker by the launcher, else the single process."""
    return HorovodWorld() if is_worker() else World()


def horovod_build() -> dict:
    """What this Horovod was built with (for `ssd-detector info`): its version and, for each of
    NCCL, Gloo and CUDA, whether it is in (NCCL as its version code, e.g. 22105 for 2.21.5)."""
    try:
        import horovod
        import horovod.mxnet as hvd
    except ImportError as exc:
        return {"error": f"horovod.mxnet does not load: {exc}"}
    return {"version": horovod.__version__, "nccl": int(hvd.nccl_built()), "gloo": bool(hvd.gloo_built()),
            "cuda": bool(hvd.cuda_built()), "mpi": bool(hvd.mpi_built())}
