"""Discovery: the gateway's receptionist pool follows the receptionists the registry knows are alive.

Every ``GATEWAY_DISCOVERY_INTERVAL_S`` the gateway asks the registry for the alive receptionists
(:func:`shared.instances.alive_urls`) and merges them into its pool (:meth:`gateway.upstreams.UpstreamPool.merge`):
a new one is probed at once and takes requests as soon as its ``/health`` answers 200; one the registry
lists gone (it missed its heartbeats) or no more (it deregistered) leaves. The configured receptionists stay
whatever the registry says, and the gateway's own health probes and its skipping of a receptionist that
refuses a connection work on discovered ones as on those. A registry that cannot answer changes nothing:
the pool stays as it was, and the outage is logged once.
"""

from __future__ import annotations

import asyncio

import aiohttp
from loguru import logger

from gateway.upstreams import UpstreamPool
from shared.http import ServiceClient
from shared.instances import InstanceKind, alive_urls


async def discover_once(pool: UpstreamPool, registry: ServiceClient, session: aiohttp.ClientSession) -> None:
    """One round: ask the registry, merge, probe the newcomers. Raises when the registry cannot answer."""
    joined, left = pool.merge(await alive_urls(registry, InstanceKind.RECEPTIONIST))
    for upstream in left:
        logger.info("receptionist {} left the rotation: the registry lists it gone or no more", upstream.url)
    for upstream in joined:
        logger.info("receptionist {} found in the registry; probing it", upstream.url)
    if joined:
        await asyncio.gather(*(pool.probe(session, upstream) for upstream in joined))


async def discovery_loop(pool: UpstreamPool, registry: ServiceClient, session: aiohttp.ClientSession,
                         interval_s: float) -> None:
    """:func:`discover_once` every ``interval_s``, until cancelled; a failed round is logged (once per
    outage) and the next one tries again."""
    failing = False
    while True:
        try:
            await discover_once(pool, registry, session)
        except Exception as exc:
            if not failing:
                logger.warning("cannot ask the registry for receptionists ({}); keeping the {} known",
                               str(exc) or type(exc).__name__, len(pool.upstreams))
            failing = True
        else:
            if failing:
                logger.info("the registry answers again: receptionists are discovered again")
            failing = False
        await asyncio.sleep(interval_s)
