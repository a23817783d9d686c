"""One family of errors for the whole platform.

Every failure a client can see is an `InfergateError` carrying its HTTP status and the OpenAI
error fields. `http_errors.py` is the single place that turns them into HTTP responses; engines
and storage raise them without knowing about HTTP frameworks.
"""

from __future__ import annotations


class InfergateError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class InvalidRequest(InfergateError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(InfergateError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(InfergateError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(InfergateError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(InfergateError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(InfergateError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnprocessableEntity(InfergateError):
    status = 422
    type = "invalid_request_error"
    code = "unprocessable_entity"


class RateLimited(InfergateError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(InfergateError):
    """The model provider answered with an error or garbage (502)."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class Unavailable(InfergateError):
    """The model cannot serve right now: upstream unreachable, queue full, shutting down (503)."""

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class UpstreamTimeout(InfergateError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
