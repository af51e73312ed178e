"""Runs an exported model.onnx in ONNX Runtime on preprocessed images; needs numpy and
onnxruntime only (no MXNet), so it runs in any environment, and is the example of the file's use.
The INT8 file of `export-onnx --int8` runs the same way (standard QuantizeLinear and
DequantizeLinear operators, which ONNX Runtime fuses into INT8 convolutions); the printed summary
says which kind of file ran (``quantization``, from the file's metadata).

Input: an .npz with ``images`` (B, 3, S, S) uint8 RGB, already resized to the model's S x S.
Output: an .npz with ``detections`` (M, 6) [class_id, score, xmin, ymin, xmax, ymax] and
``batch_index`` (M,), plus ``seconds`` per batch when --repeat times batches of --batch images.

    python scripts/onnx_infer.py model.onnx images.npz out.npz [--batch 8] [--threads 2] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import onnxruntime as ort

LOG = logging.getLogger("onnx_infer")


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """All images in batches of `batch` -> every detection row and its image's index in `images`."""
    rows, index = [], []
    for start in range(0, len(images), batch):
        detections, batch_index = sess.run(["detections", "batch_index"], {"data": images[start:start + batch]})
        rows.append(detections)
        index.append(batch_index + start)
    return (np.concatenate(rows) if rows else np.zeros((0, 6), np.float32),
            np.concatenate(index) if index else np.zeros((0,), np.int64))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("images", help=".npz with images (B, 3, S, S) uint8")
    parser.add_argument("output", help=".npz to write")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's choice)")
    parser.add_argument("--repeat", type=int, default=0, help="also time this many passes over the images")
    args = parser.parse_args(argv)
    images = np.load(args.images)["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        LOG.error("%s: images must be (B, 3, S, S) uint8, not %s %s", args.images, images.shape, images.dtype)
        return 2
    sess = session(args.model, args.threads)
    detections, batch_index = run(sess, images, args.batch)
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        run(sess, images, args.batch)
        seconds.append(time.perf_counter() - start)
    np.savez(args.output, detections=detections, batch_index=batch_index, seconds=np.array(seconds))
    metadata = sess.get_modelmeta().custom_metadata_map
    print(json.dumps({"images": len(images), "detections": len(detections), "onnxruntime": ort.__version__,
                      "quantization": json.loads(metadata["quantization"]) if "quantization" in metadata else None,
                      "images_per_second": [len(images) / s for s in seconds]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
