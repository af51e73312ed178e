"""gunicorn serving the app, and `serve` itself: settings checked and the model located (once) in
the first process, then gunicorn behind nginx (``supervisor``) or, without nginx, gunicorn alone in
this process. The model is loaded in each gunicorn worker after fork (MXNet is never loaded in the
master), threads shared out. ``python -m ssd_detector.serving.server SETTINGS`` is the gunicorn
process the supervisor starts."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.errors import AppImportError, HaltServer

from ..errors import UserError
from ..machine import gpu_count, gpu_image_without_gpu
from ..model import artifact
from .nginx import SEARCH_DIRS, find_nginx
from .settings import GRACEFUL_SECONDS, ServeSettings

LOG = logging.getLogger(__name__)
WORKER_AGE_VAR = "SSD_SERVE_WORKER_AGE"  # set in each worker by post_fork: 1, 2, ... (respawns count on)


_BOOTING: dict[str, Any] = {}  # this worker process's gunicorn worker, while it loads the model


def _post_fork(server, worker) -> None:
    os.environ[WORKER_AGE_VAR] = str(worker.age)
    _BOOTING["worker"] = worker


def _heartbeat_while_loading() -> threading.Event:
    """Loading a large model may take longer than the request timeout: keep telling gunicorn's
    arbiter this worker is alive until the returned event is set."""
    done = threading.Event()
    worker = _BOOTING.get("worker")
    if worker is not None:
        def beat() -> None:
            while not done.wait(1.0):
                worker.notify()
        threading.Thread(target=beat, name="load-heartbeat", daemon=True).start()
    return done


def worker_gpu(age: int, gpus: int) -> int | None:
    """The GPU of the worker gunicorn spawned as number ``age`` (1, 2, ...; a respawned worker
    takes the next number): worker i uses GPU i mod n. None: the CPU."""
    return (age - 1) % gpus if gpus > 0 else None


def load_app(settings: ServeSettings):
    """Runs in a worker: picks its device, loads the model, returns the Flask app."""
    import cv2
    import mxnet as mx

    from ..inference import Predictor
    from .app import create_app

    cv2.setNumThreads(settings.threads_per_worker)
    age = int(os.environ.get(WORKER_AGE_VAR, "1"))
    loading = _heartbeat_while_loading()
    try:
        # The master counted without MXNet; with MXNet loaded, gpu_count also checks SSD_NUM_GPUS
        # against the GPUs it sees, so a wrong value is named here rather than by MXNet.
        gpu = worker_gpu(age, gpu_count()) if settings.gpus else None
        ctx = mx.cpu() if gpu is None else mx.gpu(gpu)
        if settings.multi_model:
            from .multi_model import ModelStore, create_multi_model_app

            store = ModelStore(settings, lambda folder: Predictor(folder, ctx=ctx))
            store.watch()
            LOG.info("worker %d (pid %d) serving models on %s", age, os.getpid(), ctx)
            return create_multi_model_app(store, settings)
        predictor = Predictor(settings.model_dir, ctx=ctx)
    except Exception as exc:  # one clear line instead of a worker traceback
        first_line = (str(exc).strip().splitlines() or [""])[-1][:500]
        message = (f"worker {age} cannot load the model in {settings.model_dir}: {type(exc).__name__}: "
                   f"{first_line}")
        LOG.error("%s", message)
        # gunicorn stops the whole server ("App failed to load.") instead of respawning forever.
        raise AppImportError(message) from None
    finally:
        loading.set()
    LOG.info("worker %d (pid %d) serving on %s", age, os.getpid(), ctx)
    return create_app(predictor, settings)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": s.bind,
            "workers": s.workers,
            # Behind nginx, which hands over only complete requests and takes answers at once, a
            # sync worker is busy only while it predicts (docs/benchmarks.md: sync against gthread).
            "worker_class": "sync",
            "timeout": s.timeout,
            "graceful_timeout": GRACEFUL_SECONDS,
            "preload_app": False,
            "post_fork": _post_fork,
            "proc_name": "ssd-detector-serve",
        }
        if s.ready_file is not None:
            ready = s.ready_file
            options["post_worker_init"] = lambda worker: ready.touch()  # this worker has its model
        if os.path.isdir("/dev/shm"):
            options["worker_tmp_dir"] = "/dev/shm"  # heartbeat files off the (maybe slow) container disk
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        return load_app(self.settings)


def run_gunicorn(settings: ServeSettings) -> int:
    """gunicorn in this process until it stops (SIGTERM: requests in flight finish, then exit)."""
    master = os.getpid()
    if not settings.gpus:
        # MXNet reads these when it starts in each worker; a user's own values win.
        for name in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS"):
            os.environ.setdefault(name, str(settings.threads_per_worker))
    try:
        _Gunicorn(settings).run()
        return 0
    except HaltServer as exc:
        LOG.error("serving stopped: %s (the worker's reason is above)", exc.reason)
        return 1
    except SystemExit as exc:
        # gunicorn's master may also halt by sys.exit (4: "App failed to load."); workers leave
        # by SystemExit too, and their codes must reach the master unchanged.
        if os.getpid() != master or exc.code in (0, None):
            raise
        LOG.error("serving stopped: gunicorn exited with code %s (the worker's reason is above)", exc.code)
        return 1


def serve(settings: ServeSettings, proxy: bool = True) -> int:
    """Blocks until serving stops. proxy: nginx in front when it is installed."""
    scratch = Path(tempfile.mkdtemp(prefix="ssd-serve-"))
    first = os.getpid()
    try:
        if settings.multi_model:
            described = f"models loaded over /models from {settings.models_root}"
            settings = dataclasses.replace(settings, registry=scratch / "registry")
        else:
            # A model.tar.gz is unpacked once, here, into scratch space: /opt/ml/model may be read-only.
            model_dir = artifact.locate(settings.model_dir, extract_to=scratch / "model")
            try:
                image_shape: int | str = artifact.read_image_shape(model_dir)
            except UserError:  # the workers say why, in one line, as they load the model
                image_shape = "unknown"
            described = f"{model_dir} (image_shape {image_shape})"
            settings = dataclasses.replace(settings, model_dir=model_dir)
        if gpu_image_without_gpu(settings.gpus):
            LOG.warning("no GPU is visible in this container: the GPU image serves on the CPU")
        nginx = find_nginx() if proxy else None
        if proxy and nginx is None:
            LOG.warning("nginx is not installed (not on PATH nor in %s): gunicorn alone serves on %s:%d, "
                        "so slow clients can hold its workers", ", ".join(SEARCH_DIRS), settings.host, settings.port)
        LOG.info("serving %s on %s:%d%s: %d worker(s), %s, timeout %d s, payload limit %d MB",
                 described, settings.host, settings.port, " through nginx" if nginx else "",
                 settings.workers,
                 f"{settings.gpus} GPU(s)" if settings.gpus else f"{settings.threads_per_worker} thread(s) each",
                 settings.timeout, settings.max_payload_mb)
        if nginx is None:
            return run_gunicorn(settings)
        from .supervisor import Supervisor

        return Supervisor(settings, nginx, scratch).run()
    finally:
        # gunicorn's workers leave through here too (it exits them with SystemExit): only the first
        # process cleans.
        if os.getpid() == first:
            shutil.rmtree(scratch, ignore_errors=True)


def child_main(argv: list[str]) -> int:
    """The gunicorn process behind nginx: settings as JSON (ServeSettings.to_json) in argv[0]."""
    from ..cli import configure_logging

    configure_logging(verbose=False)
    return run_gunicorn(ServeSettings.from_json(argv[0]))


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
