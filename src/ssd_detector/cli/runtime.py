"""The commands SageMaker runs, ``train`` and ``serve``, and ``info`` about the installation."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from ..machine import default_cpu_threads

    default_cpu_threads()  # before MXNet loads
    from ..failure import run_job
    from ..sagemaker_env import Paths
    from ..training.entry import train
    from ..training.protocol import failure_file

    paths = Paths(Path(args.base_dir)) if args.base_dir else Paths.from_env()
    return run_job(lambda: train(paths), failure_file(paths))


def cmd_serve(args: argparse.Namespace) -> int:
    from ..sagemaker_env import Paths
    from ..serving.server import serve
    from ..serving.settings import ServeSettings

    paths = Paths(Path(args.base_dir)) if args.base_dir else Paths.from_env()
    settings = ServeSettings.from_env(args.model_dir or paths.model_dir, port=args.port, workers=args.workers,
                                      host=args.host, multi_model=True if args.multi_model else None,
                                      models_root=paths.base / "models")
    return serve(settings, proxy=not args.no_proxy)


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe

    print(json.dumps(describe(), indent=2 if args.pretty else None))
    return 0
