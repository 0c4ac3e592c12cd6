"""Fixtures of the gateway's tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(params=["memory", "redis"])
def rate_limit_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Gateway settings that put the rate limit's buckets in process, or on Redis under a prefix of the
    test's own: rate-limit tests take it to run on both backends. The timeout is generous: a loaded test
    machine must not look like an unreachable Redis."""
    if request.param == "memory":
        return {}
    return {"rate_limit_url": request.getfixturevalue("redis_url"), "rate_limit_timeout_s": 5.0}
