#!/usr/bin/env python
"""Where ONNX Runtime spends its time on an exported model.onnx: ONNX Runtime's own profiler
(SessionOptions.enable_profiling), summed per operator type over timed runs at each batch size.
Needs numpy and onnxruntime only, like scripts/onnx_infer.py (run it with .venv-onnx/bin/python).

    python scripts/ort_profile.py model.onnx [--batches 1,8] [--threads 2] [--runs 20] [--images images.npz]

Prints, per batch size, the mean wall time of a run and each operator type's milliseconds per
run and share of the operators' total, largest first. The input is random uint8 pixels unless
--images gives an .npz with ``images`` (B, 3, S, S) uint8, as onnx_infer.py takes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import onnxruntime as ort

LOG = logging.getLogger("ort_profile")


def profile(path: str, images: np.ndarray, threads: int, runs: int) -> tuple[float, dict[str, float]]:
    """Mean seconds per run and, per operator type, microseconds summed over the timed runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="ort-profile-"), "run")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(3):  # warm-up, left out of the sums below by its run count
        session.run(None, {"data": images})
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, {"data": images})
    seconds = (time.perf_counter() - start) / runs
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    # Each run is one "model_run" event; the timed ones are the last `runs`, and an operator's
    # event belongs to them when it starts at or after the first of those.
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = starts[-runs]
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if (event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
                and event["ts"] >= timed_from):
            totals[event["args"]["op_name"]] += event["dur"]
    return seconds, dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--images", help=".npz with images (B, 3, S, S) uint8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    size = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"]).get_inputs()[0].shape[-1]
    if not isinstance(size, int):
        LOG.error("%s: the input's side is not fixed (%r)", args.model, size)
        return 2
    pool = (np.load(args.images)["images"] if args.images
            else np.random.default_rng(0).integers(0, 256, (8, 3, size, size), dtype=np.uint8))
    LOG.info("%s, onnxruntime %s, %d thread(s), %d timed runs per batch size", args.model, ort.__version__,
             args.threads, args.runs)
    for batch in (int(b) for b in args.batches.split(",")):
        images = np.resize(pool, (batch, *pool.shape[1:])).astype(np.uint8)
        seconds, totals = profile(args.model, images, args.threads, args.runs)
        total = sum(totals.values()) or 1.0
        LOG.info("batch %d: %.1f ms per run (%.1f img/s); operators %.1f ms per run:", batch, seconds * 1e3,
                 batch / seconds, total / args.runs / 1e3)
        for op, micros in sorted(totals.items(), key=lambda item: -item[1]):
            if micros / total >= 0.002:
                LOG.info("  %-28s %8.2f ms  %5.1f%%", op, micros / args.runs / 1e3, 100 * micros / total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
