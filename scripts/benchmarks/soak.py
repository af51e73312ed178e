"""Soak: 8 clients for 10 minutes against a real `serve` (nginx in front of gunicorn), mixing valid requests with
hostile ones (garbage, truncated and decompression-bomb images, a JPEG whose header hides its
size, wrong content types and Accept values, bodies over the limit, stalled bodies). Prints the
request count, the number of 5xx answers and broken connections (both must be 0), p50/p99 of the
valid requests, and each worker's resident memory at the start and the end (growth must stay
under 10%). Run with `make bench-soak`; `--seconds` shortens it. Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import random
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .serve import model_and_picture, start_server, stop, worker_rss_mb

LOG = logging.getLogger("bench_soak")
MAX_RSS_GROWTH = 0.10


def bomb_png(side: int) -> bytes:
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(b"\x00" * (side + 1)) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def hidden_size_jpeg(real: bytes) -> bytes:
    """SOI, FF 00 <len>, a real stream, then a fake 16x16 frame header."""
    body = real[2:]
    fake = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8\xff\x00" + struct.pack(">H", len(body) + 2) + body + fake


def build_requests(jpeg: bytes, png: bytes, big_jpeg: bytes) -> list[tuple[str, dict, bytes, bool]]:
    """(name, headers, body, valid) for each kind of request; the first five are valid."""
    from ssd_detector.data.images import encode

    ok = {"Content-Type": "image/jpeg"}
    wide = encode(np.zeros((8, 70_000, 3), np.uint8), "png")
    return [
        ("jpeg", ok, jpeg, True),
        ("png-annotation", {"Content-Type": "image/png", "Accept": "application/json;annotation=1"}, png, True),
        ("octet-stream", {"Content-Type": "application/octet-stream"}, jpeg, True),
        ("drawn", {"Content-Type": "image/jpeg", "Accept": "image/jpeg"}, jpeg, True),
        ("jsonlines", {"Content-Type": "image/jpeg", "Accept": "application/jsonlines; charset=utf-8"}, jpeg, True),
        ("garbage", ok, bytes(random.Random(1).getrandbits(8) for _ in range(5000)), False),
        ("truncated", ok, jpeg[: len(jpeg) // 2], False),
        ("bomb", {"Content-Type": "image/png"}, bomb_png(12_000), False),
        ("hidden-size", ok, hidden_size_jpeg(big_jpeg), False),
        ("too-wide-for-jpeg", {"Content-Type": "image/png", "Accept": "image/jpeg"}, wide, False),
        ("text/csv", {"Content-Type": "text/csv"}, b"1,2,3", False),
        ("octet-garbage", {"Content-Type": "application/octet-stream"}, b"GIF89a" + bytes(100), False),
        ("bad-accept", {"Content-Type": "image/jpeg", "Accept": ";;,text/html"}, jpeg, False),
        ("bad-attributes", {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "threshold=9"},
         jpeg, False),
        ("over-limit", ok, b"\0" * (7 * 1024 * 1024), False),
    ]


def send(port: int, headers: dict, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/invocations", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        conn.close()


def stalled(port: int) -> int:
    """Headers and part of a body, then silence: the server must end it on its own. Behind nginx
    (serve's default) the connection is closed after nginx's body timeout, without an answer (0
    here); gunicorn alone (--no-proxy) answers 408."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 50000\r\n\r\n\xff\xd8")
        answer = conn.recv(100)
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--base-network", default="mobilenet-0.25")
    parser.add_argument("--image-shape", type=int, default=256)
    parser.add_argument("--root", type=Path, default=Path("build/bench/soak"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    from ssd_detector.data.images import encode

    model, image = model_and_picture(args.root, args.base_network, args.image_shape)
    jpeg, png = encode(image, "jpeg"), encode(image, "png")
    # The stream hidden behind FF 00 must fit a 16-bit length: a flat 2000x2000 picture does; it is
    # read at its true size (4 MP) and answered, not mistaken for 16x16.
    big = encode(np.full((2_000, 2_000, 3), 80, np.uint8), "jpeg")
    requests = build_requests(jpeg, png, big)
    server, port = start_server(model, None, args.root / "serve.log")
    reader = None
    statuses: Counter[tuple[str, int]] = Counter()
    broken: Counter[str] = Counter()
    valid_latencies: list[float] = []
    lock = threading.Lock()
    try:
        # Memory is read once the mixed traffic has run for a while (every worker has then met
        # every kind of request and its allocator has settled), and again at the end.
        warm_up = min(60.0, args.seconds * 0.1)
        rss_start: list[float] = []
        reader = threading.Timer(warm_up, lambda: rss_start.extend(worker_rss_mb(server.pid)))
        reader.start()
        deadline = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                roll = rng.random()
                try:
                    if roll < 0.01:
                        name, status, seconds, valid = "stalled", stalled(port), 0.0, False
                    else:
                        # Half the traffic is valid, the rest spread over the hostile kinds.
                        name, headers, body, valid = (requests[rng.randrange(5)] if roll < 0.5
                                                      else requests[rng.randrange(5, len(requests))])
                        status, seconds = send(port, headers, body)
                except OSError as exc:
                    with lock:
                        broken[f"{type(exc).__name__}"] += 1
                    continue
                with lock:
                    statuses[(name, status)] += 1
                    if valid and status == 200:
                        valid_latencies.append(seconds)

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        rss_end = worker_rss_mb(server.pid)
    finally:
        if reader is not None:
            reader.cancel()
        stop(server)
    log = (args.root / "serve.log").read_text()
    respawned = log.count("Booting worker") - len(rss_start)
    total = sum(statuses.values())
    errors_5xx = sum(n for (_, status), n in statuses.items() if status >= 500)
    growth = (sum(rss_end) - sum(rss_start)) / sum(rss_start)
    LOG.info("%d requests in %.0f s from %d clients (%.1f req/s); answers by kind:", total, args.seconds,
             args.clients, total / args.seconds)
    for (name, status), n in sorted(statuses.items()):
        LOG.info("  %-20s %3d  x%d", name, status, n)
    LOG.info("5xx answers: %d (must be 0); broken connections: %s", errors_5xx, dict(broken) or 0)
    LOG.info("valid requests: p50 %.1f ms, p99 %.1f ms", np.percentile(valid_latencies, 50) * 1e3,
             np.percentile(valid_latencies, 99) * 1e3)
    LOG.info("worker RSS MB after %.0f s %s, at the end %s: growth %+.1f%% (must stay under %.0f%%); workers respawned: %d",
             warm_up, [round(v) for v in rss_start], [round(v) for v in rss_end], growth * 100, MAX_RSS_GROWTH * 100,
             respawned)
    ok = errors_5xx == 0 and not broken and growth < MAX_RSS_GROWTH and respawned == 0
    LOG.info("soak %s", "passed" if ok else "FAILED")
    (args.root / "result.json").write_text(json.dumps({
        "requests": total, "errors_5xx": errors_5xx, "broken": dict(broken), "rss_start_mb": rss_start,
        "rss_end_mb": rss_end, "rss_growth": growth, "respawned": respawned,
        "statuses": {f"{n} {s}": c for (n, s), c in statuses.items()}}, indent=1))
    return 0 if ok else 1
