"""The ``ssd-detector`` command: SageMaker's `train` and `serve`, and the tools around them (data
checks and conversion, synthetic data, prediction, evaluation, INT8 and ONNX, a fresh model).

``parser`` defines the commands; their work is in ``data``, ``model`` and ``runtime``; ``signals``
handles SIGTERM from a command's first line; ``info`` reports what the installation is made of.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

LOG = logging.getLogger("ssd_detector")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s %(levelname)s %(name)s] %(message)s", datefmt="%m/%d/%Y %H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import Stopped, UserError
    from .parser import build_parser
    from .signals import EXIT_TERMINATED, stop_on_sigterm

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    stop_on_sigterm(f"SIGTERM during {args.command}")
    try:
        return args.func(args)
    except UserError as exc:
        LOG.error("%s", exc)
        return 1
    except Stopped as exc:
        LOG.warning("stopped: %s", exc)
        return EXIT_TERMINATED
