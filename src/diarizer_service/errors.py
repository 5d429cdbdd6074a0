"""The one error type the API turns into a JSON answer: {"error": {"code", "message"[, "field"]}}."""
from __future__ import annotations


class ApiError(Exception):
    """A client-visible failure with an HTTP status, a stable machine code and a human message."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retryable = retryable

    def to_body(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        if self.retryable:
            error["retryable"] = True
        return {"error": error}


def invalid_field(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_field", message, field=field)


def missing_field(field: str, message: str) -> ApiError:
    return ApiError(400, "missing_field", message, field=field)


def service_unavailable(message: str = "Storage or queue temporarily unavailable; retry later.") -> ApiError:
    return ApiError(503, "service_unavailable", message, retryable=True)


class BackendError(Exception):
    """A storage/queue call failed for a reason other than a condition (network, throttling, outage)."""
