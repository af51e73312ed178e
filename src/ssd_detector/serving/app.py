"""The Flask app: /ping, /invocations and /execution-parameters, every error a JSON body (and the
parts a multi-model server shares: ``base_app``, ``answer``)."""
from __future__ import annotations

import json
import logging
import socket
import time
from typing import Protocol

import numpy as np
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..data.images import MAX_PIXELS
from . import codecs
from .errors import HTTPError, PayloadTooLarge, RequestTimeout
from .settings import BATCH_STRATEGY, PAYLOAD_VAR, ServeSettings

LOG = logging.getLogger(__name__)
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


class Model(Protocol):
    class_names: dict[int, str]

    def predict(self, image_rgb: np.ndarray, threshold: float = 0.0,
                max_detections: int | None = None) -> np.ndarray: ...


def json_response(status: int, body: dict) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


# A sync worker serves one request at a time, so a client that sends slowly holds it. Without
# SageMaker's front end (a plain `docker run`), these bound what one client can take:
IDLE_SECONDS = 5  # no byte of the body for this long: 408
BODY_BASE_SECONDS = 10  # the whole body within this, plus BODY_SECONDS_PER_MB per MB of it: 408
BODY_SECONDS_PER_MB = 1.0
# A refused body is read and dropped (so a client still sending gets the answer, not a reset),
# but no more than this much, for no longer than DRAIN_SECONDS.
DRAIN_LIMIT = 8 * 1024 * 1024
DRAIN_SECONDS = 2.0
CHUNK = 1 << 20


def _socket() -> socket.socket | None:
    """The client's socket, when gunicorn serves (the Flask test client has none)."""
    return request.environ.get("gunicorn.socket")


def _drain() -> None:
    """Reads and drops what is left of a refused body, within DRAIN_LIMIT and DRAIN_SECONDS."""
    left, deadline = DRAIN_LIMIT, time.monotonic() + DRAIN_SECONDS
    sock = _socket()
    try:
        if sock is not None:
            sock.settimeout(DRAIN_SECONDS)
        while left > 0 and time.monotonic() < deadline:
            chunk = request.stream.read(min(left, CHUNK))
            if not chunk:
                break
            left -= len(chunk)
    except Exception:  # the client went away or stalled; nothing more to read
        LOG.debug("could not drain the request body", exc_info=True)


def _read_body(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body is {length} bytes, over the limit of {limit} bytes "
                              f"({limit // (1024 * 1024)} MB, {PAYLOAD_VAR})")
    expected = length if length is not None else limit
    allowed = BODY_BASE_SECONDS + BODY_SECONDS_PER_MB * expected / (1024 * 1024)
    deadline = time.monotonic() + allowed
    sock = _socket()
    if sock is not None:
        sock.settimeout(IDLE_SECONDS)
    parts, size = [], 0
    try:
        # Chunked bodies have no length: read one byte past the limit to tell.
        while size <= limit:
            chunk = request.stream.read(min(CHUNK, limit + 1 - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise RequestTimeout(f"the body did not arrive within {allowed:.0f} s ({size} bytes so far)")
    except TimeoutError:  # the socket's idle timeout
        raise RequestTimeout(f"no part of the body arrived for {IDLE_SECONDS} s ({size} bytes so far)") from None
    if size > limit:
        raise PayloadTooLarge(f"the body is over the limit of {limit} bytes "
                              f"({limit // (1024 * 1024)} MB, {PAYLOAD_VAR})")
    return b"".join(parts)


def answer(model: Model, settings: ServeSettings, max_pixels: int = MAX_PIXELS) -> Response:
    """/invocations' work for this request and model (a multi-model server's invoke too)."""
    # Checked before reading the body, so a wrong request costs nothing.
    chosen, content_type, encoder = codecs.negotiate(request.headers.get("Accept"), settings.default_accept)
    controls = codecs.parse_controls(request.headers.get(CUSTOM_ATTRIBUTES))
    codecs.check_content_type(request.content_type)
    image = codecs.decode_image(request.content_type, _read_body(settings.max_payload_bytes), max_pixels)
    codecs.check_drawable(chosen, image)
    threshold = controls.threshold
    if threshold is None:
        threshold = codecs.DRAW_THRESHOLD if chosen.startswith("image/") else 0.0
    rows = model.predict(image, threshold, controls.max_detections)
    body = encoder(codecs.Result(image, rows, model.class_names))
    return Response(body, status=200, mimetype=content_type)


def base_app() -> Flask:
    """/ping and the error handlers: every error a JSON body, never a traceback."""
    app = Flask("ssd_detector.serving")

    @app.get("/ping")
    def ping() -> Response:
        return Response("", status=200)

    @app.errorhandler(HTTPError)
    def http_error(exc: HTTPError) -> Response:
        LOG.info("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        if not isinstance(exc, RequestTimeout):  # a stalled client has nothing more to drain
            _drain()
        return json_response(exc.status, exc.body())

    @app.errorhandler(HTTPException)
    def werkzeug_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        _drain()
        return json_response(exc.code or 500, {"error": code, "message": exc.description or exc.name})

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        # The traceback goes to the log, never to the client.
        LOG.exception("internal error on %s %s", request.method, request.path)
        return json_response(500, {"error": "internal_error", "message": f"the server failed: {type(exc).__name__}"})

    return app


def create_app(model: Model, settings: ServeSettings, max_pixels: int = MAX_PIXELS) -> Flask:
    app = base_app()

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return json_response(200, {"MaxConcurrentTransforms": settings.max_concurrent_transforms,
                           "BatchStrategy": BATCH_STRATEGY, "MaxPayloadInMB": settings.max_payload_mb})

    @app.post("/invocations")
    def invocations() -> Response:
        return answer(model, settings, max_pixels)

    return app
