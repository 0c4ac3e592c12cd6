"""The receptionist's upkeep loops (the sweeper, the schedule firer, the artifact sweeper): one step every
interval, jittered so that receptionists drift apart, until cancelled. A failed step is logged and counted,
and the loop carries on."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from shared.errors import Unavailable, UpstreamError


async def every(interval_s: float, step: Callable[[], Awaitable[Any]], what: str,
                counters: dict[str, int] | None = None) -> None:
    """Run ``step`` every ``interval_s`` (±20%) until cancelled. An upstream that failed or is unavailable
    is a warning ("<what> stopped early: ..."), anything else an error with its traceback; each counts in
    ``counters["errors"]`` when given."""
    while True:
        await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))
        try:
            await step()
        except (UpstreamError, Unavailable) as exc:
            if counters is not None:
                counters["errors"] += 1
            logger.warning("{} stopped early: {}", what, exc)
        except Exception:  # an upkeep loop logs and carries on
            if counters is not None:
                counters["errors"] += 1
            logger.exception("{} failed", what)
