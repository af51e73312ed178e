"""Runs scripts/sagemaker_launch.py with the real SageMaker SDK of this interpreter's environment,
against botocore Stubbers instead of AWS, and prints every request the SDK sent as JSON.

  python stubbed_launch.py PLAN.json  ->  {"rc": 0, "calls": [[service, operation, params], ...], ...}

PLAN.json: {"argv": [...launch arguments...], "responses": {service: [[operation, response], ...]}}.
Each service's client is created once (the SDK asks for clients several times) and stubbed with
its list of responses, in order; a request beyond the plan fails the run. Nothing reaches the
network (offline.py): credentials are fake, and any other client or request goes to a closed port.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from offline import REGION, offline_environment


def _plain(value: Any) -> Any:
    """Request parameters as JSON (bytes and streams as base64, dates as text)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if hasattr(value, "read"):
        return {"base64": base64.b64encode(value.read()).decode()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _response(operation: str, response: dict) -> dict:
    """Streaming bodies in a plan are given as text; botocore hands them out as streams."""
    if operation == "InvokeEndpoint" and isinstance(response.get("Body"), str):
        from botocore.response import StreamingBody

        data = response["Body"].encode()
        return {**response, "Body": StreamingBody(io.BytesIO(data), len(data))}
    return response


def stubbed_session(plan: dict[str, list], calls: list) -> Any:
    import boto3
    from botocore.stub import Stubber

    session = boto3.Session(aws_access_key_id="AKIATESTTESTTESTTEST", aws_secret_access_key="secret",
                            region_name=REGION)
    clients: dict[str, Any] = {}
    make_client = session.client

    def client(service_name: str, *args: Any, **kwargs: Any) -> Any:
        if service_name not in clients:
            made = make_client(service_name, *args, **kwargs)
            stubber = Stubber(made)
            for operation, response in plan.get(service_name, []):
                method = made.meta.method_to_api_mapping
                name = next(m for m, api in method.items() if api == operation)
                stubber.add_response(name, _response(operation, response))
            stubber.activate()

            def record(params: dict, model: Any, **_: Any) -> None:
                calls.append([service_name, model.name, _plain(params)])
            made.meta.events.register("provide-client-params.*.*", record)
            clients[service_name] = made
        return clients[service_name]

    session.client = client  # type: ignore[method-assign]
    return session


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    offline_environment()
    import sagemaker_launch as launch  # scripts/ and src/ come through PYTHONPATH (the test sets it)

    calls: list = []
    out, error = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            rc = launch.main(plan["argv"], boto_session=stubbed_session(plan["responses"], calls))
    except Exception:  # reported to the test, which shows it
        rc, error = -1, traceback.format_exc()
    sdk = importlib.metadata.version("sagemaker")
    print(json.dumps({"rc": rc, "calls": calls, "stdout": out.getvalue(), "error": error, "sdk": sdk}))
    return 0


if __name__ == "__main__":
    import importlib.metadata

    sys.exit(main())
