"""Fixtures of the shared modules' tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.upstream_client import UpstreamClient


@pytest.fixture(params=["aiohttp", "lean"])
async def upstream(request: Any) -> AsyncIterator[UpstreamClient | None]:
    """A ServiceClient test taking this runs over both of its transports: aiohttp's ``ClientSession``
    (None), and the lean client the services give it (:mod:`shared.upstream_client`)."""
    if request.param == "aiohttp":
        yield None
        return
    client = UpstreamClient(limit=10, connect_timeout_s=3.0, read_timeout_s=3600.0)
    yield client
    await client.close()
