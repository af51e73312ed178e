#!/usr/bin/env python
"""Runs one of the project's benchmarks: ``python scripts/bench.py NAME [OPTIONS]``, which is what
``make bench-NAME`` does. NAME is a module of scripts/benchmarks/ (accuracy, data, infer, peer,
pipe, scaling, serve, soak, train, mme); ``--help`` after it lists that benchmark's options."""
from __future__ import annotations

import importlib
import sys

NAMES = ("accuracy", "data", "infer", "mme", "peer", "pipe", "scaling", "serve", "soak", "train")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in NAMES:
        print(f"usage: bench.py NAME [OPTIONS], NAME one of {', '.join(NAMES)}", file=sys.stderr)
        return 2
    # This file's folder is the first entry of sys.path, so the benchmarks package is found.
    module = importlib.import_module(f"benchmarks.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
