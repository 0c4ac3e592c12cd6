"""The registry's test fixtures: ``store``, one fresh store of each backend (the contract suites run on all)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.store import JobStore, store_from_url


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/registry.db"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = store_from_url(url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
