"""The client's typed errors, as :func:`shared.client.errors.error_for` makes them from an answer's status,
body and headers (the live answers behind them: ``tests/e2e/test_client_e2e.py``)."""

from __future__ import annotations

import pytest

from shared.client import (
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
    ValidationError,
)
from shared.client.errors import error_for


@pytest.mark.parametrize(("status", "kind"), [
    (401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict), (410, Gone), (413, PayloadTooLarge),
    (500, ServerError), (502, Unavailable), (503, Unavailable), (504, Unavailable), (418, ClientError)])
def test_each_status_has_its_class(status: int, kind: type[ClientError]) -> None:
    error = error_for(status, {"error": "no", "details": []})
    assert type(error) is kind and error.status == status and str(error) == f"{status}: no"


def test_a_400_names_its_field_and_reads_as_one_line() -> None:
    error = error_for(400, {"error": "invalid request", "details": [
        {"field": "payload.width", "message": "Input should be greater than 0"}, {"field": "kind", "message": "x"}]})
    assert isinstance(error, ValidationError) and error.field == "payload.width"
    assert str(error) == "400: invalid request (payload.width: Input should be greater than 0; kind: x)"
    assert type(error_for(400, {"error": "malformed", "details": []})) is BadRequest


def test_retry_after_and_bodies_that_are_not_json() -> None:
    limited = error_for(429, {"error": "slow down"}, {"Retry-After": "3"})
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 3.0
    busy = error_for(503, "<html>\nBad Gateway</html>", {"Retry-After": "soon"})
    assert isinstance(busy, Unavailable) and busy.retry_after_s is None
    assert str(busy) == "503: <html> Bad Gateway</html>"
    assert str(error_for(502, None)) == "502: HTTP 502"
