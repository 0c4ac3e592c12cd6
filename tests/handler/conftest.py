"""A receptionist and handlers in front of a real registry and scheduler (memory stores) on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from handler.app import create_app as handler_app
from handler.settings import Settings as HandlerSettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings

#: Runs a test once on each backend of the bulk data store.
ON_EACH_DATA_STORE = pytest.mark.parametrize("data_store_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def data_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The handlers' (and receptionists') bulk data store: SQLite, unless a test asks for each backend
    (:data:`ON_EACH_DATA_STORE`)."""
    if getattr(request, "param", "sqlite") == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path}/data.db"


#: What the gateway passes on for a signed-in user who may import bulk data (the ``importer`` permission).
IMPORTER = {"X-Conveyor-User": "ada", "X-Conveyor-Roles": "user", "X-Conveyor-Permissions": "importer"}


async def _pipeline(aiohttp_client: Any, core: Any, tmp_path: Path, data_store_url: str,
                    headers: dict[str, str] | None = None) -> Any:
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, time_scale=0, data_store_url=data_store_url)), headers=headers)

    async def start_handler(**overrides: Any) -> Any:
        values: dict[str, Any] = {"registry_url": core.registry_url, "scheduler_url": core.scheduler_url,
                                  "artifacts_dir": str(tmp_path), "time_scale": 0.0, "poll_wait_s": 1.0,
                                  "data_store_url": data_store_url}
        return await aiohttp_client(handler_app(HandlerSettings(**(values | overrides))))

    return receptionist, start_handler


@pytest.fixture
async def pipeline(aiohttp_client: Any, core: Any, tmp_path: Path, data_store_url: str) -> Any:
    """A receptionist client and a function that starts a handler with given settings."""
    return await _pipeline(aiohttp_client, core, tmp_path, data_store_url)


@pytest.fixture
async def importing(aiohttp_client: Any, core: Any, tmp_path: Path, data_store_url: str) -> Any:
    """:func:`pipeline`, its receptionist client sending :data:`IMPORTER`'s identity unless a request names
    its own (a header a request sets wins over the client's)."""
    return await _pipeline(aiohttp_client, core, tmp_path, data_store_url, IMPORTER)
