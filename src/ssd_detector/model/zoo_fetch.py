"""Fetches the ImageNet weights of the five base networks into a model zoo folder, as MXNet's
model zoo lays them out (``ROOT/models/<name>-<short hash>.params``), checking each SHA-1.

Run at image build time (``python -m ssd_detector.model.zoo_fetch ROOT``). It does not load
MXNet, so it also runs where the GPU build of MXNet cannot start (no driver at build time).
``MXNET_GLUON_REPO`` points at a mirror of the zoo, as it does for MXNet itself.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import urllib.request
import zipfile
from pathlib import Path

LOG = logging.getLogger(__name__)
# SHA-1 of each file, as MXNet's model_store lists them; the file name uses the first 8 digits.
SHA1 = {
    "vgg16": "e660d4569ccb679ec68f1fd3cce07a387252a90a",
    "resnet50_v1": "0aee57f96768c0a2d5b23a6ec91eb08dfb0a45ce",
    "mobilenet1.0": "6b8c5106c730e8750bcd82ceb75220a3351157cd",
    "mobilenet0.5": "8e9d539cc66aa5efa71c4b6af983b936ab8701c3",
    "mobilenet0.25": "9f83e440996887baf91a6aff1cccc1c903a64274",
}
DEFAULT_REPO = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/"


def fetch(name: str, root: Path, repo: str, timeout: float = 120) -> Path:
    sha1 = SHA1[name]
    target = root / "models" / f"{name}-{sha1[:8]}.params"
    if target.is_file() and hashlib.sha1(target.read_bytes()).hexdigest() == sha1:
        return target
    url = f"{repo.rstrip('/')}/gluon/models/{name}-{sha1[:8]}.zip"
    LOG.info("fetching %s", url)
    with urllib.request.urlopen(url, timeout=timeout) as response:  # a fixed https URL
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    data = archive.read(f"{name}-{sha1[:8]}.params")
    if hashlib.sha1(data).hexdigest() != sha1:
        raise ValueError(f"{url}: SHA-1 mismatch, not the published weights")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(argv) != 1:
        LOG.error("usage: python -m ssd_detector.model.zoo_fetch ROOT")
        return 2
    root = Path(argv[0])
    repo = os.environ.get("MXNET_GLUON_REPO", DEFAULT_REPO)
    try:
        for name in SHA1:
            LOG.info("%s", fetch(name, root, repo))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        LOG.error("could not fetch the ImageNet weights: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
