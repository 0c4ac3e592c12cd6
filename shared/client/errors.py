"""The client's errors, one class per kind of answer, mapped from the JSON errors of the API
(``{"error", "details": [{"field", "message"}]}``, :mod:`shared.errors` on the server side).

    ClientError                        anything the client raises; ``status`` (0: no answer), ``message``, ``details``
    ├── BadRequest (400)
    │   └── ValidationError (400)      names the ``field`` at fault (the first detail's)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)                 an illegal move (cancel a finished job), an idempotency clash
    ├── Gone (410)                     a result that expired
    ├── PayloadTooLarge (413)
    ├── RateLimited (429)              carries ``retry_after_s``
    ├── ServerError (500 and other 5xx)
    │   └── Unavailable (502, 503, 504) carries ``retry_after_s``; retried
    │       └── Unreachable (0)        no answer at all: refused, reset, timed out; retried
    └── WaitTimeout                    ``wait`` gave up before the job ended (also a ``TimeoutError``)

``str(error)`` is one line: ``404: no job 6f1c…`` or ``400: invalid request (payload.width: …)``.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    status = 0

    def __init__(self, message: str, *, status: int | None = None, details: list[dict[str, Any]] | None = None,
                 body: Any = None) -> None:
        self.message = message
        if status is not None:
            self.status = status
        self.details = details or []
        self.body = body
        super().__init__(self._line())

    def _line(self) -> str:
        fields = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in self.details if isinstance(d, dict))
        text = self.message + (f" ({fields})" if fields else "")
        return f"{self.status}: {text}" if self.status else text


class BadRequest(ClientError):
    status = 400


class ValidationError(BadRequest):
    @property
    def field(self) -> str | None:
        """The field the server named first (``payload.width``, ``kind``, ``limit``)."""
        return next((str(d["field"]) for d in self.details if isinstance(d, dict) and d.get("field")), None)


class Unauthorized(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


class NotFound(ClientError):
    status = 404


class Conflict(ClientError):
    status = 409


class Gone(ClientError):
    status = 410


class PayloadTooLarge(ClientError):
    status = 413


class RateLimited(ClientError):
    status = 429

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kwargs: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kwargs)


class ServerError(ClientError):
    status = 500


class Unavailable(ServerError):
    status = 503

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kwargs)


class Unreachable(Unavailable):
    """No answer: the connection was refused, dropped or timed out."""

    status = 0


class WaitTimeout(ClientError, TimeoutError):
    """The job had not ended when ``wait`` gave up; ``job`` is how it was last seen."""

    def __init__(self, message: str, job: Any = None) -> None:
        self.job = job
        super().__init__(message)


_BY_STATUS: dict[int, type[ClientError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone, 413: PayloadTooLarge}


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return None


def error_for(status: int, body: Any, headers: Any = None) -> ClientError:
    """The error of an answer with ``status`` (>= 400) and its decoded ``body`` (a JSON error, or text)."""
    headers = headers or {}
    if isinstance(body, dict):
        message = str(body.get("error") or "error")
        details = [d for d in body.get("details") or [] if isinstance(d, dict)]
    else:
        message = (str(body or "").strip().replace("\n", " ")[:200]) or f"HTTP {status}"
        details = []
    kwargs: dict[str, Any] = {"status": status, "details": details, "body": body}
    if status == 400:
        return (ValidationError if details else BadRequest)(message, **kwargs)
    if status == 429:
        return RateLimited(message, retry_after_s=_retry_after(headers) or 1.0, **kwargs)
    if status in (502, 503, 504):
        return Unavailable(message, retry_after_s=_retry_after(headers), **kwargs)
    if status >= 500:
        return ServerError(message, **kwargs)
    return _BY_STATUS.get(status, ClientError)(message, **kwargs)
