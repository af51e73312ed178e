"""Keeps the SageMaker SDK (v2 or v3) from reaching any network while tests drive it: fake
credentials, AWS endpoints on a closed local port, the SDK's telemetry turned off in its defaults
config, and every other HTTP(S) request sent to a closed proxy (local addresses excepted, for the
Docker socket and local mode's containers)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REGION = "us-east-1"
CLOSED = "http://127.0.0.1:9"
SDK_DEFAULTS = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


def offline_environment() -> None:
    config = Path(tempfile.mkdtemp(prefix="sdk-config-")) / "config.yaml"
    config.write_text(SDK_DEFAULTS)
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "AKIATESTTESTTESTTEST", "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": CLOSED, "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config), "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(config),
        "HTTP_PROXY": CLOSED, "HTTPS_PROXY": CLOSED, "http_proxy": CLOSED, "https_proxy": CLOSED,
        "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
    })
