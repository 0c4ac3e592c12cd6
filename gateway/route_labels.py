"""The route template a proxied request is counted under in ``/metrics`` (``/jobs/{job_id}``), never its
raw path: the gateway's one catch-all route would label every call ``/{tail}``, and raw paths would make
a time series per job id. The templates are the paths of the OpenAPI document, so a route documented
there is labelled as documented; anything else is ``unmatched``."""

from __future__ import annotations

import functools
import re

from aiohttp import web

UNMATCHED = "unmatched"
#: The dashboard's relay of the public API (:mod:`gateway.dashboard.routes`).
DASHBOARD_API = "/dashboard/api"


@functools.cache
def _templates() -> dict[str, list[tuple[re.Pattern[str], str]]]:
    """The documented paths by their first segment, literal ones before those with parameters."""
    from gateway.openapi import build_spec

    by_first: dict[str, list[tuple[re.Pattern[str], str]]] = {}
    for path in sorted(build_spec()["paths"], key=lambda p: (p.count("{"), p)):
        pattern = re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
        by_first.setdefault(path.split("/", 2)[1], []).append((pattern, path))
    return by_first


def template_of(path: str) -> str:
    """The documented template ``path`` matches, or :data:`UNMATCHED`."""
    for pattern, template in _templates().get(path.split("/", 2)[1] if path.startswith("/") else "", ()):
        if pattern.match(path):
            return template
    return UNMATCHED


def label(request: web.Request, canonical: str) -> str:
    """A :attr:`shared.web.Metrics.route_label`: the catch-all's requests by their documented template, and
    the dashboard's relays (``/dashboard/api/<path>``) by the template of the route they relay to, under
    the prefix (``/dashboard/api/jobs/{job_id}``)."""
    if canonical == "/{tail}":
        return template_of(request.path)
    if canonical == DASHBOARD_API + "/{tail}":
        template = template_of(request.path[len(DASHBOARD_API):])
        return UNMATCHED if template == UNMATCHED else DASHBOARD_API + template
    return canonical


@functools.cache
def _keyed() -> frozenset[str]:
    """The documented POST routes that take an ``Idempotency-Key``: the submissions."""
    from gateway.openapi import build_spec

    return frozenset(path for path, operations in build_spec()["paths"].items()
                     if any(parameter.get("name") == "Idempotency-Key"
                            for parameter in (operations.get("post") or {}).get("parameters", [])))


def takes_idempotency_key(path: str) -> bool:
    """Whether a POST to ``path`` is a submission, which a repeated ``Idempotency-Key`` answers with the
    job already made instead of a new one (so the gateway may send it twice)."""
    return template_of(path) in _keyed()
