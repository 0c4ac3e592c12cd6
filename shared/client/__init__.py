"""A Python client of Conveyor's public API: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

    from shared.client import Client

    with Client("http://127.0.0.1:8080", token=token) as client:
        job = client.submit("export", {"bookId": "123", "type": "epub"})
        job = client.wait(job, timeout=60)
        client.result(job, "book.epub")

Errors are typed (:mod:`shared.client.errors`); calls that are safe to repeat are retried on connection
failures, 502 and 503, and a submission always carries an ``Idempotency-Key``.
"""

from shared.client.aio import AsyncClient
from shared.client.errors import (
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    Unreachable,
    ValidationError,
    WaitTimeout,
)
from shared.client.models import TERMINAL_STATES, Event, Job
from shared.client.sync import Client
from shared.client.transport import DEFAULT_URL

__all__ = ["DEFAULT_URL", "TERMINAL_STATES", "AsyncClient", "BadRequest", "Client", "ClientError", "Conflict",
           "Event", "Forbidden", "Gone", "Job", "NotFound", "PayloadTooLarge", "RateLimited", "ServerError",
           "Unauthorized", "Unavailable", "Unreachable", "ValidationError", "WaitTimeout"]
