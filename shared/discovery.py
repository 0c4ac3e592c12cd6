"""Receptionists and handlers find the scheduler instances the way the gateway finds receptionists
(:mod:`gateway.discovery`): every ``<P>_DISCOVERY_INTERVAL_S`` they ask the registry for the alive
schedulers (:func:`shared.instances.alive_urls`) and give their scheduler client that list
(:meth:`shared.http.ServiceClient.set_urls`), the configured ones first, so a scheduler started on another
host is used within seconds and one that is gone is no longer tried first. The configured list stays
whatever the registry says (they are the seeds, and a scheduler that does not register is still
reachable); a registry that cannot answer changes nothing, and the outage is logged once."""

from __future__ import annotations

import asyncio

from loguru import logger

from shared.http import ServiceClient
from shared.instances import InstanceKind, alive_urls


async def follow_once(client: ServiceClient, registry: ServiceClient, kind: InstanceKind, seeds: list[str]) -> None:
    """One round: the configured instances, then those the registry lists alive. Raises when it cannot ask."""
    found = await alive_urls(registry, kind)
    wanted = list(dict.fromkeys([*seeds, *found]))
    if wanted != client.urls:
        added = sorted(set(wanted) - set(client.urls))
        client.set_urls(wanted)
        if added:
            logger.info("{} instances found in the registry: {}", kind.value, ", ".join(added))


async def follow_instances(client: ServiceClient, registry: ServiceClient, kind: InstanceKind,
                           interval_s: float) -> None:
    """:func:`follow_once` every ``interval_s`` until cancelled."""
    seeds = list(client.urls)
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            await follow_once(client, registry, kind, seeds)
        except Exception as exc:
            if not failing:
                logger.warning("cannot ask the registry for {} instances ({}); keeping the {} known", kind.value,
                               str(exc) or type(exc).__name__, len(client.urls))
            failing = True
        else:
            if failing:
                logger.info("the registry answers again: {} instances are discovered again", kind.value)
            failing = False
