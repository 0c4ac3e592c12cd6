"""A neighbour's refusal that concerns the client's request becomes the receptionist's own answer."""

from __future__ import annotations

from shared.errors import Conflict, NotFound, UpstreamError, ValidationFailed


def relay(exc: UpstreamError) -> Exception:
    """A 400, 404 or 409 of the registry or scheduler as our own error; anything else stays unavailable."""
    body = exc.upstream_body if isinstance(exc.upstream_body, dict) else {}
    if exc.upstream_status == 409:
        return Conflict(body.get("error", "conflict"), body.get("details"))
    if exc.upstream_status == 404:
        return NotFound(body.get("error", "not found"))
    if exc.upstream_status == 400:
        return ValidationFailed(body.get("error", "invalid request"), body.get("details"))
    return exc
