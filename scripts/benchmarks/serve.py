"""Serving speed over real HTTP on loopback, against the bare predictor in the same run.

1. Overhead: median latency of one client's /invocations (JPEG in, JSON out) against the same
   work done in this process without a server (decode + predict + JSON), the server given one
   worker with as many threads as this process has, so the ratio is the server's own cost.
2. Load: the default worker count (one per CPU), 1, 2, 4 and 8 concurrent clients: throughput,
   p50 and p99 latency, and each worker's resident memory; for the FP32 model and for its INT8
   copy (`ssd-detector quantize`, naive calibration on synthetic pictures), one after the other.
3. The stack: through nginx (serve's default) against gunicorn alone (--no-proxy), same model and
   worker count, the two servers driven in turn at 1 and 8 clients: median and p99 latency and
   req/s, and nginx's overhead as ratios.
4. A model of the built-in algorithm (resnet-50 at 512, its shape made by
   ssd_detector.model.builtin_example with random weights) served as it is, against the same
   weights imported into our format (`import-builtin`): median latency of one client, the two
   servers (one worker each) asked in turn.
The model is a freshly initialized network (its untrained scores make the NMS work hardest), or
a trained one with --model-dir (e.g. build/bench/infer/job/model from `make bench-infer`).
Run with `make bench-serve`.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from script_helpers import free_port

LOG = logging.getLogger("bench_serve")
TARGET_OVERHEAD = 1.10
TARGET_PROXY_OVERHEAD = 1.05



def invoke(port: int, body: bytes) -> float:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/invocations", body, {"Content-Type": "image/jpeg", "Accept": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/invocations answered {response.status}")
    finally:
        conn.close()
    return time.perf_counter() - start


def start_server(model: Path, workers: int | None, log: Path, proxy: bool = True,
                 env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "ssd_detector.cli", "serve", "--model-dir", str(model), "--host", "127.0.0.1",
               "--port", str(port), *([] if proxy else ["--no-proxy"])]
    env = {**os.environ, **(env_extra or {})}
    if workers is not None:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited: " + log.read_text())
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server not ready: " + log.read_text())


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, resident MB) of every process now."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields["VmRSS"].split()[0]) / 1024 if "VmRSS" in fields else 0.0
        table[int(entry.name)] = (int(fields.get("PPid", "0")), fields.get("Name", "").strip(), rss)
    return table


def worker_rss_mb(serve: int) -> list[float]:
    """Resident memory of each gunicorn worker under serve's process: the Python processes below it
    that have no child (the gunicorn master is serve itself, or its child when nginx is in front)."""
    table = _processes()
    below, queue = set(), [serve]
    while queue:
        parent = queue.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in below:
                below.add(pid)
                queue.append(pid)
    parents = {ppid for ppid, _, _ in table.values()}
    return [table[pid][2] for pid in sorted(below) if pid not in parents and table[pid][1].startswith("python")]


def model_and_picture(root: Path, base_network: str, image_shape: int) -> tuple[Path, np.ndarray]:
    """A freshly initialized model under root (its untrained scores make the NMS work hardest)
    and a 640x480 synthetic picture (RGB)."""
    from ssd_detector.data.synthetic import SynthSpec, make_image
    from ssd_detector.model.untrained import export_untrained

    root.mkdir(parents=True, exist_ok=True)
    model = export_untrained(root / "model", {"num_classes": "5", "base_network": base_network,
                                              "image_shape": str(image_shape)})
    image, _, _ = make_image(np.random.default_rng(0), SynthSpec(train=1, validation=0, classes=5, width=640,
                                                                 height=480))
    return model, image


def load_rows(model: Path, log: Path, jpeg: bytes, requests: int) -> tuple[list[dict], list[float]]:
    """The default worker count serving model: req/s, p50 and p99 at 1, 2, 4 and 8 clients, and
    each worker's resident memory."""
    server, port = start_server(model, None, log)
    rows = []
    try:
        rss = worker_rss_mb(server.pid)
        for clients in (1, 2, 4, 8):
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lambda _: invoke(port, jpeg), range(clients * 2)))  # warm-up
                start = time.perf_counter()
                latencies = list(pool.map(lambda _: invoke(port, jpeg), range(requests)))
                wall = time.perf_counter() - start
            rows.append({"clients": clients, "throughput": requests / wall,
                         "p50_ms": float(np.percentile(latencies, 50) * 1e3),
                         "p99_ms": float(np.percentile(latencies, 99) * 1e3)})
        rss = worker_rss_mb(server.pid) or rss
    finally:
        stop(server)
    return rows, rss


def ping(port: int) -> float:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/ping")
        conn.getresponse().read()
    finally:
        conn.close()
    return time.perf_counter() - start


def proxy_rows(model: Path, root: Path, jpeg: bytes, requests: int, workers: int) -> tuple[list[dict], dict]:
    """nginx in front against gunicorn alone, same model and workers: at 1 and 8 clients, the two
    servers driven in turn, a quarter of the requests at a time, so drifts in load hit both alike;
    and the median /ping of each (no model work: what the proxy itself adds), in turn."""
    servers = {"nginx": start_server(model, workers, root / "serve-nginx.log"),
               "alone": start_server(model, workers, root / "serve-alone.log", proxy=False)}
    rows = []
    pings: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for index in range(requests * 2 + 10):
            for name, (_, port) in servers.items():
                took = ping(port)
                if index >= 10:
                    pings[name].append(took)
        for clients in (1, 8):
            latencies: dict[str, list[float]] = {name: [] for name in servers}
            walls = dict.fromkeys(servers, 0.0)
            with ThreadPoolExecutor(clients) as pool:
                for name, (_, port) in servers.items():  # warm-up
                    list(pool.map(lambda _: invoke(port, jpeg), range(clients * 2)))
                for _ in range(4):
                    for name, (_, port) in servers.items():
                        start = time.perf_counter()
                        latencies[name] += pool.map(lambda _: invoke(port, jpeg), range(max(1, requests // 4)))
                        walls[name] += time.perf_counter() - start
            for name in servers:
                rows.append({"server": name, "clients": clients, "throughput": len(latencies[name]) / walls[name],
                             "p50_ms": float(np.percentile(latencies[name], 50) * 1e3),
                             "p99_ms": float(np.percentile(latencies[name], 99) * 1e3)})
    finally:
        for process, _ in servers.values():
            stop(process)
    return rows, {name: float(np.median(values) * 1e3) for name, values in pings.items()}


def quantized_copy(model: Path, out: Path) -> Path:
    """The INT8 copy of model, calibrated (naive) on 32 synthetic pictures."""
    from ssd_detector.data.synthetic import SynthSpec, make_image
    from ssd_detector.data.transforms import ValTransform
    from ssd_detector.model import artifact
    from ssd_detector.model.quantize import QuantizeOptions, quantize

    size = int(artifact.read_hyperparameters(model)["image_shape"])
    rng, spec, transform = np.random.default_rng(1), SynthSpec(train=1, validation=0, classes=5), ValTransform(size)
    pictures = np.stack([transform(make_image(rng, spec)[0], np.zeros((0, 4), np.float32))[0] for _ in range(32)])
    quantize(model, pictures, out, QuantizeOptions(num_calibration=len(pictures)))
    return out


def builtin_latency(root: Path, jpeg: bytes, requests: int, size: int) -> dict:
    """Median /invocations latency of a built-in resnet-50 served as it is and imported."""
    from ssd_detector.model.builtin import import_model
    from ssd_detector.model.builtin_example import write_builtin_model

    builtin = write_builtin_model(root / "builtin", "resnet-50", 5, size)
    imported = root / "builtin-imported"
    if not (imported / "model_algo_1-symbol.json").exists():
        import_model(builtin, imported)
    servers = {name: start_server(model, 1, root / f"serve-{name}.log")
               for name, model in (("built-in", builtin), ("imported", imported))}
    times: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for index in range(requests + 3):  # in turn, so drifts in machine load hit both alike
            for name, (_, port) in servers.items():
                took = invoke(port, jpeg)
                if index >= 3:  # warm-up
                    times[name].append(took)
    finally:
        for process, _ in servers.values():
            stop(process)
    medians = {name: float(np.median(values) * 1e3) for name, values in times.items()}
    return {"image_shape": size, "median_ms": medians, "ratio": medians["built-in"] / medians["imported"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-network", default="mobilenet-1.0")
    parser.add_argument("--image-shape", type=int, default=300)
    parser.add_argument("--requests", type=int, default=60, help="per measurement")
    parser.add_argument("--root", type=Path, default=Path("build/bench/serve"))
    parser.add_argument("--proxy-requests", type=int, default=200,
                        help="per server and client count, nginx against gunicorn alone")
    parser.add_argument("--model-dir", type=Path, help="a trained model instead of a freshly initialized one")
    parser.add_argument("--builtin-requests", type=int, default=20, help="per server for the built-in row (0: skip)")
    parser.add_argument("--builtin-image-shape", type=int, default=512)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    from ssd_detector.data.images import decode_rgb, encode
    from ssd_detector.inference import Predictor
    from ssd_detector.serving import codecs

    model, image = model_and_picture(args.root, args.base_network, args.image_shape)
    if args.model_dir:
        from ssd_detector.model import artifact

        model = artifact.locate(args.model_dir)
    jpeg = encode(image, "jpeg")
    cpus = os.cpu_count() or 1
    LOG.info("model %s, 640x480 JPEG of %d bytes, %d CPUs",
             model if args.model_dir else f"{args.base_network}@{args.image_shape} (untrained)", len(jpeg), cpus)

    predictor = Predictor.load(model)

    def bare() -> float:
        start = time.perf_counter()
        rows = predictor.predict(decode_rgb(jpeg))
        codecs.encode_json(codecs.Result(image, rows, {}))
        return time.perf_counter() - start

    server, port = start_server(model, 1, args.root / "serve-1.log")
    try:
        for _ in range(5):  # warm both up
            bare(), invoke(port, jpeg)
        bare_times, http_times = [], []
        for _ in range(args.requests):  # interleaved, so drifts in machine load hit both alike
            bare_times.append(bare())
            http_times.append(invoke(port, jpeg))
    finally:
        stop(server)
    bare_ms, http_ms = np.median(bare_times) * 1e3, np.median(http_times) * 1e3
    ratio = http_ms / bare_ms
    LOG.info("overhead: bare predictor %.1f ms, /invocations %.1f ms (median of %d): %.3fx (target <= %.2fx: %s)",
             bare_ms, http_ms, args.requests, ratio, TARGET_OVERHEAD, "met" if ratio <= TARGET_OVERHEAD else "NOT met")
    del predictor

    loads = {"FP32": load_rows(model, args.root / "serve-default.log", jpeg, args.requests)}
    int8 = quantized_copy(model, args.root / "model-int8")
    loads["INT8"] = load_rows(int8, args.root / "serve-int8.log", jpeg, args.requests)
    LOG.info("load with the default worker count, %d requests each:", args.requests)
    LOG.info("  model  clients  req/s    p50 ms   p99 ms  req/s vs FP32")
    for name, (rows, _) in loads.items():
        for r, base in zip(rows, loads["FP32"][0]):
            LOG.info("  %-5s  %7d  %6.1f  %7.1f  %7.1f  %6.2fx", name, r["clients"], r["throughput"], r["p50_ms"],
                     r["p99_ms"], r["throughput"] / base["throughput"])
    for name, (_, rss) in loads.items():
        LOG.info("resident memory per worker, %s: %s MB", name, ", ".join(f"{v:.0f}" for v in rss))
    workers = os.cpu_count() or 1
    proxy, pings = proxy_rows(model, args.root, jpeg, args.proxy_requests, workers)
    LOG.info("through nginx against gunicorn alone, %d worker(s) each, %d requests per server and client count:",
             workers, args.proxy_requests)
    LOG.info("  clients  server  req/s    p50 ms   p99 ms")
    for r in proxy:
        LOG.info("  %7d  %-6s  %6.1f  %7.1f  %7.1f", r["clients"], r["server"], r["throughput"], r["p50_ms"], r["p99_ms"])
    for clients in (1, 8):
        via, alone = (next(r for r in proxy if r["clients"] == clients and r["server"] == name)
                      for name in ("nginx", "alone"))
        worst = max(via["p50_ms"] / alone["p50_ms"], alone["throughput"] / via["throughput"])
        LOG.info("nginx's overhead at %d client(s): median %.3fx, p99 %.3fx, req/s %.3fx (target: median and req/s "
                 "within %.2fx: %s)", clients, via["p50_ms"] / alone["p50_ms"], via["p99_ms"] / alone["p99_ms"],
                 via["throughput"] / alone["throughput"], TARGET_PROXY_OVERHEAD,
                 "met" if worst <= TARGET_PROXY_OVERHEAD else "NOT met")
    LOG.info("/ping (no model work), median of %d each: %.2f ms through nginx, %.2f ms alone: nginx adds %.2f ms",
             args.proxy_requests * 2, pings["nginx"], pings["alone"], pings["nginx"] - pings["alone"])
    builtin = None
    if args.builtin_requests:
        builtin = builtin_latency(args.root, jpeg, args.builtin_requests, args.builtin_image_shape)
        LOG.info("built-in resnet-50@%d served as it is: %.1f ms, imported: %.1f ms (median of %d, one client): "
                 "%.3fx (target <= %.2fx: %s)", builtin["image_shape"], builtin["median_ms"]["built-in"],
                 builtin["median_ms"]["imported"], args.builtin_requests, builtin["ratio"], TARGET_OVERHEAD,
                 "met" if builtin["ratio"] <= TARGET_OVERHEAD else "NOT met")
    (args.root / "result.json").write_text(json.dumps({"builtin": builtin, "proxy": proxy, "ping_ms": pings,
        "bare_ms": bare_ms, "http_ms": http_ms, "ratio": ratio, "load": loads["FP32"][0],
        "worker_rss_mb": loads["FP32"][1], "int8_load": loads["INT8"][0], "int8_worker_rss_mb": loads["INT8"][1]},
        indent=1))
    return 0
