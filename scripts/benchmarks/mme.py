"""A multi-model endpoint against single-model `serve`, the same model, both behind nginx with the
default worker count, real HTTP on loopback:

1. First invoke: for each of 10 models (freshly initialized `mobilenet-1.0`@300, each its own
   weights), the time from `POST /models` to its first `/models/NAME/invoke` answered (the load
   included), and the load alone.
2. Warm: with all 10 loaded and every worker's copies made, one client's `/models/m0/invoke`
   against single-model `/invocations` of the same model, the two servers asked in turn: median
   and p99, and the ratio (target: within 1.1x).
Run with `make bench-mme`.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .serve import model_and_picture, start_server, stop

LOG = logging.getLogger("bench_mme")
TARGET_WARM = 1.10
MODELS = 10


def post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, bytes, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, body, {"Content-Type": content_type})
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    return response.status, answer, time.perf_counter() - start


def checked(result: tuple[int, bytes, float], what: str) -> float:
    status, answer, seconds = result
    if status != 200:
        raise RuntimeError(f"{what} answered {status}: {answer[:300]!r}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-network", default="mobilenet-1.0")
    parser.add_argument("--image-shape", type=int, default=300)
    parser.add_argument("--requests", type=int, default=100, help="warm requests per server")
    parser.add_argument("--root", type=Path, default=Path("build/bench/mme"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    from ssd_detector.data.images import encode

    base = args.root / "opt_ml"
    names = [f"m{i}" for i in range(MODELS)]
    image = None
    for name in names:  # each its own freshly initialized weights
        _, image = model_and_picture(base / "models" / name, args.base_network, args.image_shape)
    jpeg = encode(image, "jpeg")
    single, single_port = start_server(base / "models" / "m0" / "model", None, args.root / "serve-single.log")
    multi, port = start_server(base / "model", None, args.root / "serve-multi.log",
                               env_extra={"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_BASE_DIR": str(base)})
    try:
        loads, firsts = [], []
        for name in names:
            body = json.dumps({"model_name": name, "url": str(base / "models" / name / "model")}).encode()
            loads.append(checked(post(port, "/models", body, "application/json"), f"loading {name}"))
            firsts.append(loads[-1] + checked(post(port, f"/models/{name}/invoke", jpeg, "image/jpeg"), name))
        with ThreadPoolExecutor(8) as pool:  # every worker makes its copy of every model
            list(pool.map(lambda n: checked(post(port, f"/models/{n}/invoke", jpeg, "image/jpeg"), n), names * 8))
            list(pool.map(lambda _: checked(post(single_port, "/invocations", jpeg, "image/jpeg"), "single"),
                          range(16)))
        warm: dict[str, list[float]] = {"multi-model": [], "single-model": []}
        for _ in range(args.requests):  # in turn, so drifts in machine load hit both alike
            warm["multi-model"].append(checked(post(port, "/models/m0/invoke", jpeg, "image/jpeg"), "m0"))
            warm["single-model"].append(checked(post(single_port, "/invocations", jpeg, "image/jpeg"), "single"))
    finally:
        stop(multi)
        stop(single)
    LOG.info("%d models (%s@%d), 640x480 JPEG, default workers, behind nginx:", MODELS, args.base_network,
             args.image_shape)
    LOG.info("  load alone: median %.0f ms (%.0f to %.0f); load + first invoke: median %.0f ms (%.0f to %.0f)",
             np.median(loads) * 1e3, min(loads) * 1e3, max(loads) * 1e3, np.median(firsts) * 1e3,
             min(firsts) * 1e3, max(firsts) * 1e3)
    stats = {k: (float(np.median(v) * 1e3), float(np.percentile(v, 99) * 1e3)) for k, v in warm.items()}
    for kind, (median, p99) in stats.items():
        LOG.info("  warm, %-12s median %.1f ms, p99 %.1f ms (%d requests, one client)", kind, median, p99,
                 args.requests)
    ratio = stats["multi-model"][0] / stats["single-model"][0]
    LOG.info("warm latency of a model among %d against single-model serve: %.3fx (target <= %.2fx: %s)", MODELS,
             ratio, TARGET_WARM, "met" if ratio <= TARGET_WARM else "NOT met")
    (args.root / "result.json").write_text(json.dumps({
        "load_ms": [v * 1e3 for v in loads], "first_invoke_ms": [v * 1e3 for v in firsts],
        "warm_ms": {k: {"median": m, "p99": p} for k, (m, p) in stats.items()}, "ratio": ratio}, indent=1))
    return 0
