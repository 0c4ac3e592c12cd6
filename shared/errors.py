"""Domain errors, mapped to JSON answers by :func:`shared.web.service_middleware`.

    ConveyorError (500)                  anything of ours; carries status, message and field details
    ├── BadRequest (400)                 a request we cannot read
    │   └── ValidationFailed (400)       a body or query that breaks the contract, with one detail a field
    ├── Unauthorized (401)
    ├── Forbidden (403)                  known caller, not allowed (an operator route, a missing permission)
    ├── NotFound (404)
    ├── Conflict (409)                   an illegal transition, a stale attempt, an idempotency clash
    ├── Gone (410)                       it was here, and expired
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── TooManyRequests (429)            carries retry_after_s
    └── Unavailable (503)                a dependency we need is down; carries retry_after_s
        └── UpstreamError (502/503)      another service answered badly or not at all

Foreign exceptions are translated where they are caught (``raise Unavailable(...) from exc``).
"""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    status = 500

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "details": self.details}


class BadRequest(ConveyorError):
    status = 400


class ValidationFailed(BadRequest):
    pass


class Unauthorized(ConveyorError):
    status = 401


class Forbidden(ConveyorError):
    status = 403


class NotFound(ConveyorError):
    status = 404


class Conflict(ConveyorError):
    status = 409

    def __init__(self, message: str, details: list[dict[str, str]] | None = None, current: Any = None) -> None:
        super().__init__(message, details)
        self.current = current

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.current is not None:
            body["current"] = self.current
        return body


class Gone(ConveyorError):
    status = 410


class PayloadTooLarge(ConveyorError):
    status = 413


class UnsupportedMediaType(ConveyorError):
    status = 415


class TooManyRequests(ConveyorError):
    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ConveyorError):
    status = 503

    def __init__(self, message: str, details: list[dict[str, str]] | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, details)
        self.retry_after_s = retry_after_s


class UpstreamError(Unavailable):
    """Another service answered with an error we did not expect, or could not be reached.

    ``upstream_status`` is its HTTP status (0 when it could not be reached) and ``upstream_body`` its
    decoded JSON answer, so a caller can react to a 404 or 409 of a neighbour specifically.
    """

    def __init__(self, service: str, upstream_status: int, upstream_body: Any = None) -> None:
        what = "unreachable" if upstream_status == 0 else f"answered {upstream_status}"
        super().__init__(f"{service} {what}")
        self.service = service
        self.upstream_status = upstream_status
        self.upstream_body = upstream_body
        self.status = 503 if upstream_status in (0, 502, 503, 504) else 502
