"""Fixtures every test package uses: real backends (PostgreSQL, Redis) over real connections.

Without a reachable server those tests skip, so a laptop without them still gets a green ``make test``;
``.ci/run`` sets ``CONVEYOR_REQUIRE_BACKENDS=1``, which turns a missing backend into a failure instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.support import unavailable

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


#: The data store a receptionist or handler opens when not told another (``sqlite:///var/data.db``, under
#: the working directory): a test that makes one must give it a file of the test's own.
_CHECKOUT_DATA_STORE = os.path.join("var", "data.db")
_HAD_DATA_STORE = pytest.StashKey[bool]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_HAD_DATA_STORE] = os.path.exists(_CHECKOUT_DATA_STORE)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run when a test made the checkout's default data store: every test that did shared one
    file with every other, and left it behind. (Checked once, by the process that ran the session.)"""
    if hasattr(session.config, "workerinput") or session.config.stash.get(_HAD_DATA_STORE, True):
        return
    if os.path.exists(_CHECKOUT_DATA_STORE):
        session.config.get_terminal_writer().line(
            f"{_CHECKOUT_DATA_STORE} was made by a test: give its receptionist or handler a data_store_url of "
            "its own (sqlite:///<tmp_path>/data.db)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True, scope="session")
def _not_the_callers_login(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CLIs the tests run (and the processes they start) must not find the token and gateway of whoever
    runs the tests (``conveyor login`` keeps them under ~/.config/conveyor): a developer's own login made the
    loadtest's anonymous run a 401. Each test process gets an empty config directory of its own instead."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    for name in ("CONVEYOR_TOKEN", "CONVEYOR_URL"):
        os.environ.pop(name, None)


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=1):
            return True
    except OSError:
        return False


def _require(url: str, what: str) -> None:
    if _reachable(url):
        return
    unavailable(f"{what} is not reachable at {url}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``schema`` query parameter names a schema of this test alone; dropped after."""
    _require(POSTGRES_URL, "PostgreSQL")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{POSTGRES_URL}?schema={schema}"
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis URL whose ``prefix`` query parameter is a key prefix of this test alone; its keys are
    deleted after."""
    _require(REDIS_URL, "Redis")
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield f"{REDIS_URL}?prefix={prefix}"
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class Core:
    """Real registry and scheduler apps on loopback (memory stores), and clients of each."""

    def __init__(self, registry_url: str, scheduler_url: str, session: Any) -> None:
        self.registry_url = registry_url
        self.scheduler_url = scheduler_url
        self.session = session

    async def registry(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.registry_url + path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def scheduler(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.scheduler_url + path, **kwargs) as resp:
            return resp.status, (await resp.json() if resp.content_type == "application/json" else None)


@pytest.fixture
async def core(aiohttp_server: Any) -> AsyncIterator[Core]:
    """The registry and the scheduler, each a real app on a real loopback port."""
    import aiohttp

    from registry.app import create_app as registry_app
    from registry.settings import Settings as RegistrySettings
    from scheduler.app import create_app as scheduler_app
    from scheduler.settings import Settings as SchedulerSettings

    registry = await aiohttp_server(registry_app(RegistrySettings(store_url="memory://")))
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", reap_interval_s=0.05)))
    async with aiohttp.ClientSession() as session:
        yield Core(str(registry.make_url("")).rstrip("/"), str(scheduler.make_url("")).rstrip("/"), session)


# A real S3-compatible server (moto's, as a process) for the artifact store's S3 backend.
from tests.s3_server import s3_endpoint, s3_url  # noqa: E402, F401
