"""Helpers for tests: waiting on a condition with a deadline instead of sleeping, and what a test does when
something it needs from the machine is missing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout_s: float = 10.0, interval_s: float = 0.02,
                     what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def unavailable(message: str) -> NoReturn:
    """Something the test needs (a backend server, root's network namespaces) is missing: skip on a laptop
    without it, fail where ``CONVEYOR_REQUIRE_BACKENDS=1`` (``.ci/run``) says it must run."""
    if os.environ.get("CONVEYOR_REQUIRE_BACKENDS") == "1":
        pytest.fail(message + " (CONVEYOR_REQUIRE_BACKENDS=1)")
    pytest.skip(message)


def gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every gauge sample of a ``/metrics`` page, read with prometheus_client's own parser, by name and
    sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) if family.type == "gauge"
            for sample in family.samples}


async def stored_keys(root: Path, under: str = "") -> list[str]:
    """Every artifact a local store at ``root`` holds (its small ones are rows, the others files), as
    another process of the machine sees them; those whose key starts with ``under`` when given."""
    from shared.artifacts import LocalArtifactStore

    store = LocalArtifactStore(root)
    try:
        return sorted([info.key async for info in store.list_older(float("inf")) if info.key.startswith(under)])
    finally:
        await store.close()
