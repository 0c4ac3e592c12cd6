"""What the services that talk to Redis (the scheduler's queues, the gateway's rate limit) do alike."""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger

#: How long a Redis client gets to close its connections when a service stops.
CLOSE_TIMEOUT_S = 5.0


async def close_redis(client: Any, what: str, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close a redis-py asyncio client, giving up after ``timeout_s``: a socket whose close never completes
    (redis-py waits on the stream writer's ``wait_closed``, which can hang) must not hold a service's
    shutdown; the process's exit closes it anyway."""
    try:
        await asyncio.wait_for(client.aclose(), timeout_s)
    except TimeoutError:
        logger.warning("the {} Redis connections did not close within {} s; left to close on exit", what, timeout_s)
