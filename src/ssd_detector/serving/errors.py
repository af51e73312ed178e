"""Errors that carry their HTTP status; the app turns each into a JSON body."""
from __future__ import annotations


class HTTPError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class BadRequest(HTTPError):
    status = 400
    code = "bad_request"


class NotAcceptable(HTTPError):
    status = 406
    code = "not_acceptable"


class RequestTimeout(HTTPError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(HTTPError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(HTTPError):
    status = 415
    code = "unsupported_media_type"


class NotFound(HTTPError):
    status = 404
    code = "not_found"


class Conflict(HTTPError):
    status = 409
    code = "conflict"


class InsufficientStorage(HTTPError):
    """507: SageMaker's multi-model contract for "cannot load it now for lack of memory"."""
    status = 507
    code = "insufficient_storage"
