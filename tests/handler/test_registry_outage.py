"""A handler whose registries are all down takes no jobs until one answers: it backs off instead of
dequeuing and handing back the same jobs in a loop (before, a dead registry had a handler dequeue them
hundreds of times in a few seconds). Real registry, scheduler and handler apps on loopback; the registry
stops and comes back on its port, its jobs kept in its SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from handler.app import create_app as handler_app
from handler.backoff import Backoff
from handler.settings import Settings as HandlerSettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from tests.support import wait_until

JOBS = 20
CONCURRENCY = 4
WINDOW_S = 3.0


async def test_a_handler_with_every_registry_down_backs_off_and_resumes_when_one_answers(
        aiohttp_server: Any, aiohttp_client: Any, core: Any, tmp_path: Path, unused_tcp_port_factory: Any) -> None:
    port, spare = unused_tcp_port_factory(), unused_tcp_port_factory()
    store_url = f"sqlite:///{tmp_path}/registry.db"
    registry = await aiohttp_server(registry_app(RegistrySettings(store_url=store_url)), port=port)
    registry_url = f"http://127.0.0.1:{port}"
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, time_scale=0)))
    ids = []
    for n in range(JOBS):
        resp = await receptionist.post("/tasks", json={"description": f"t{n}", "fail_probability": 0,
                                                       "duration_s": 0})
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["id"])
    await registry.close()  # both of the handler's registries are down now: nothing listens on either port

    handler = await aiohttp_client(handler_app(HandlerSettings(
        registry_url=f"{registry_url},http://127.0.0.1:{spare}", scheduler_url=core.scheduler_url,
        artifacts_dir=str(tmp_path), data_store_url=f"sqlite:///{tmp_path}/data.db", time_scale=0,
        poll_wait_s=0.5, concurrency=CONCURRENCY,
        backoff_base_s=0.1, backoff_cap_s=0.5)))

    async def status() -> dict[str, Any]:
        return await (await handler.get("/status")).json()

    async def noticed() -> dict[str, Any] | None:
        current = await status()
        return current if (current["last_error"] or "").startswith("registry unreachable") else None

    await wait_until(noticed, timeout_s=15, what="the handler to find no registry")
    # The measure: count the dequeues while every registry stays down for a while (a spinning
    # handler dequeued and handed back the same jobs 215 times in 3 s).
    await asyncio.sleep(WINDOW_S)
    down = await status()
    assert down["dequeued"] <= CONCURRENCY  # the first poll's jobs, handed back; then nothing
    assert down["polls"] <= 2
    assert down["registry"]["probes"] >= 3  # backing off from 0.1 s to 0.5 s, it kept asking /health
    assert down["registry"]["reachable"] is False and down["registry"]["outages"] == 1
    assert down["succeeded"] == 0 and down["running"] == []
    assert [r["up"] for r in down["instances"]["registry"]] == [False, False]
    _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": ids})
    assert set(held["states"].values()) == {"ready"}  # handed back, not held under leases nobody reports

    # The registry comes back on its port with its jobs: the handler resumes and runs them all, once.
    registry = await aiohttp_server(registry_app(RegistrySettings(store_url=store_url)), port=port)

    async def all_finished() -> dict[str, Any] | None:
        current = await status()
        return current if current["succeeded"] == JOBS else None

    done = await wait_until(all_finished, timeout_s=30, interval_s=0.1, what="every job to finish")
    assert done["registry"]["reachable"] is True and done["registry"]["outages"] == 1
    async with core.session.get(f"{registry_url}/counts", params={"kind": "task"}) as resp:
        counts = await resp.json()
    assert counts["finished"] == JOBS


def test_backoff_doubles_to_its_cap_with_jitter_and_never_waits_nothing() -> None:
    backoff = Backoff(0.2, 5.0)
    delays = [backoff.next_s() for _ in range(10)]
    ceilings = [min(5.0, 0.2 * 2**n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    backoff.reset()
    assert 0.1 <= backoff.next_s() <= 0.2
