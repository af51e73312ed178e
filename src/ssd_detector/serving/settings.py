"""Serving settings from the environment SageMaker (and BYOC convention) sets; each bad value
is named in the error. Serving's variable names live here and nowhere else (SSD_NUM_GPUS, which
training reads too, lives with the GPU count in ``machine``)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..machine import gpu_count
from ..errors import UserError
from ..sagemaker_env import env_int

PORT_VARS = ("SAGEMAKER_BIND_TO_PORT",)
WORKERS_VARS = ("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS")
TIMEOUT_VARS = ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT")
PAYLOAD_VAR = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
DEFAULT_ACCEPT_VAR = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
MULTI_MODEL_VAR = "SAGEMAKER_MULTI_MODEL"
# The memory all copies of all models may take in a multi-model server (every worker holds a copy
# of each model it serves); default: MODELS_MEMORY_SHARE of the container's limit, less what the
# workers take without models.
MODELS_MEMORY_VAR = "SSD_MODELS_MEMORY_MB"
MODELS_MEMORY_SHARE = 0.8
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT = 60
DEFAULT_PAYLOAD_MB = 6
MAX_PAYLOAD_MB = 100  # batch transform's ceiling
# CreateTransformJob requires MaxConcurrentTransforms x MaxPayloadInMB <= 100.
MAX_CONCURRENCY_X_PAYLOAD_MB = 100
# The CreateTransformJob spelling (the SDK's local mode accepts no other); one image per request.
BATCH_STRATEGY = "SingleRecord"
# What /invocations can answer with (the Accept values); serving.codecs has one encoder each.
ACCEPT_TYPES = ("application/json", "application/json;annotation=1", "image/png", "image/jpeg",
                "application/jsonlines")
# SageMaker sends SIGKILL 30 s after SIGTERM: workers get this long to finish their request.
GRACEFUL_SECONDS = 25


@dataclass(frozen=True)
class ServeSettings:
    model_dir: Path
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    workers: int = 1
    timeout: int = DEFAULT_TIMEOUT
    max_payload_bytes: int = DEFAULT_PAYLOAD_MB * 1024 * 1024
    default_accept: str = "application/json"
    gpus: int = 0
    threads_per_worker: int = 1
    # Behind nginx: gunicorn listens on this unix socket only, and each worker touches ready_file
    # once it has loaded the model (the supervisor starts nginx then).
    socket: Path | None = None
    ready_file: Path | None = None
    # Multi-model mode: models loaded and unloaded over /models from folders under models_root;
    # registry is the folder the workers share them through (set by serve).
    multi_model: bool = False
    models_root: Path = Path("/opt/ml/models")
    models_memory_bytes: int | None = None
    registry: Path | None = None

    @property
    def bind(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"

    def to_json(self) -> str:
        """For the gunicorn process the supervisor starts (from_json reads it back)."""
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        values: dict[str, Any] = json.loads(text)
        for name in ("model_dir", "socket", "ready_file", "models_root", "registry"):
            if values[name] is not None:
                values[name] = Path(values[name])
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    @property
    def max_payload_mb(self) -> int:
        return self.max_payload_bytes // (1024 * 1024)

    @property
    def max_concurrent_transforms(self) -> int:
        """One request per worker, within CreateTransformJob's concurrency x payload limit."""
        return max(1, min(self.workers, MAX_CONCURRENCY_X_PAYLOAD_MB // max(1, self.max_payload_mb)))

    @classmethod
    def from_env(cls, model_dir: Path, environ: Mapping[str, str] | None = None, cpu_count: int | None = None,
                 *, port: int | None = None, workers: int | None = None, host: str | None = None,
                 gpus: int | None = None, multi_model: bool | None = None,
                 models_root: Path | None = None) -> ServeSettings:
        """Keyword arguments (command-line options) win over the environment; cpu_count and gpus
        default to this machine's (machine.gpu_count)."""
        environ = os.environ if environ is None else environ
        cpus = cpu_count or os.cpu_count() or 1
        gpus = gpu_count(environ) if gpus is None else gpus
        if workers is not None and not 1 <= workers <= 256:
            raise UserError(f"--workers {workers} must be from 1 to 256")
        if port is not None and not 1 <= port <= 65535:
            raise UserError(f"--port {port} must be from 1 to 65535")
        if workers is None:
            workers = env_int(environ, WORKERS_VARS, gpus if gpus else cpus, 1, 256)
        payload_mb = env_int(environ, (PAYLOAD_VAR,), DEFAULT_PAYLOAD_MB, 1, MAX_PAYLOAD_MB)
        accept = environ.get(DEFAULT_ACCEPT_VAR, "").replace(" ", "").lower() or "application/json"
        if accept not in ACCEPT_TYPES:
            raise UserError(f"environment variable {DEFAULT_ACCEPT_VAR}={accept!r} must be one of "
                            + ", ".join(ACCEPT_TYPES))
        if multi_model is None:
            flag = environ.get(MULTI_MODEL_VAR, "false").strip().lower()
            if flag not in ("true", "false", ""):
                raise UserError(f"environment variable {MULTI_MODEL_VAR}={environ[MULTI_MODEL_VAR]!r} must be true or false")
            multi_model = flag == "true"
        memory_mb = env_int(environ, (MODELS_MEMORY_VAR,), 0, 1, 1 << 24) if environ.get(MODELS_MEMORY_VAR) else None
        return cls(
            multi_model=multi_model,
            models_root=Path(models_root) if models_root else Path("/opt/ml/models"),
            models_memory_bytes=memory_mb * 1024 * 1024 if memory_mb else None,
            model_dir=Path(model_dir),
            port=port if port is not None else env_int(environ, PORT_VARS, DEFAULT_PORT, 1, 65535),
            host=host or "0.0.0.0",
            workers=workers,
            timeout=env_int(environ, TIMEOUT_VARS, DEFAULT_TIMEOUT, 1, 3600),
            max_payload_bytes=payload_mb * 1024 * 1024,
            default_accept=accept,
            gpus=gpus,
            # CPU workers share the cores instead of each starting one thread per core.
            threads_per_worker=max(1, cpus // workers),
        )
