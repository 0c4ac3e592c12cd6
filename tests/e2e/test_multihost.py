"""Two hosts that share only PostgreSQL, Redis, an S3 endpoint and HTTP (issue 9).

Host A (this network namespace) runs the gateway, two receptionists, the registry (PostgreSQL), the
scheduler (Redis) and the logging service (PostgreSQL), each listening on A's veth address; host B (a
network namespace of its own, see :mod:`tests.e2e.multihost`) runs two handlers. Each host has its own
data dir. B reaches A's services at A's veth address and the S3 server (which listens on loopback only)
through a TCP forwarder there; B's own loopback is down, so a hidden ``127.0.0.1`` anywhere fails.

Through A's gateway a book export (downloaded), a task, an ECG, a CSV import and an async data export
(downloaded) finish. Then, with 1,000 tasks in flight, one handler on B is SIGKILLed and A's scheduler and
registry are restarted, and every accepted job still ends, finished or failed, and none finishes twice.

The bulk data store is on PostgreSQL where this tree has that backend (``shared.datastore.postgres``), and a
streamed ``GET /v1/exports`` on A then reads what B imported. Otherwise it is SQLite, one file a host: the
import and the async export both run on B's handlers and share B's file, and the streamed export is left
out, since it would read A's own file.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import pytest

from tests.conftest import POSTGRES_URL
from tests.e2e.multihost import Forwarder, Link, ServiceProcess, free_port, netns_unavailable
from tests.e2e.test_kinds_e2e import USERS_CSV, until_state
from tests.support import unavailable, wait_until

pytestmark = pytest.mark.timeout(240)

ADMIN_PASSWORD = "multihost admin password"
LOAD = 1000
TIME_SCALE = 0.05  # a book export takes 0.5 s, an import 3 s, a 20 s task 1 s


def _data_on_postgres() -> bool:
    """Whether this tree's bulk data store has a PostgreSQL backend (issue 9 adds it)."""
    try:
        return importlib.util.find_spec("shared.datastore.postgres") is not None
    except ModuleNotFoundError:  # shared.datastore is a plain module: SQLite only
        return False


DATA_ON_POSTGRES = _data_on_postgres()


@pytest.fixture
def link() -> Iterator[Link]:
    """Host B's network namespace and the veth pair to it; deleted after, whatever happened."""
    if reason := netns_unavailable():
        unavailable(reason)
    link = Link.create()
    try:
        yield link
    finally:
        link.delete()
    assert not link.exists()


@pytest.fixture
def schemas(postgres_url: str) -> Iterator[dict[str, str]]:
    """PostgreSQL URLs of fresh schemas, the registry's, the logs' and the bulk data's; dropped after."""
    base = postgres_url.rsplit("schema=", 1)[1]
    names = {"registry": f"{base}_registry", "logs": f"{base}_logs", "data": f"{base}_data"}
    yield {what: f"{POSTGRES_URL}?schema={name}" for what, name in names.items()}
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            for name in names.values():
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def _via(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (user and password kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}:{port}" if user else f"{host}:{port}"))


def _with_endpoint(s3_url: str, endpoint: str) -> str:
    """``s3_url`` with its ``endpoint`` query parameter replaced."""
    parts = urlsplit(s3_url)
    query = "&".join(p if not p.startswith("endpoint=") else f"endpoint={endpoint}" for p in parts.query.split("&"))
    return urlunsplit(parts._replace(query=query))


@dataclass
class Deployment:
    link: Link
    session: aiohttp.ClientSession
    token: str
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.services["gateway"].url

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """A request to A's gateway (the shape :func:`until_state` uses)."""
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            raw = await resp.read()
            body = orjson.loads(raw) if resp.content_type == "application/json" and raw else raw
            return resp.status, body, resp.headers

    async def registry(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """A request straight to the registry, as a service would make it."""
        url = self.services["registry"].url + path
        async with self.session.request(method, url, headers={"X-Service-Token": self.token}, **kwargs) as resp:
            return resp.status, await resp.json()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{svc.tail()}" for name, svc in self.services.items())


@pytest.fixture
async def deployment(link: Link, schemas: dict[str, str], redis_url: str, s3_url: str,
                     tmp_path: Path) -> AsyncIterator[Deployment]:
    """Host A's services on A's veth address and host B's two handlers in B's namespace, each host in its
    own data dir; every process stopped after."""
    s3_port = urlsplit(s3_url.split("endpoint=")[1].split("&")[0]).port
    pg_port = urlsplit(POSTGRES_URL).port or 5432
    assert s3_port is not None
    forwarder = Forwarder()
    a_dir, b_dir = tmp_path / "host-a", tmp_path / "host-b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = link.host_ip
    ports = {name: free_port(a) for name in ("gateway", "receptionist-1", "receptionist-2", "registry",
                                               "scheduler", "logging_service")}
    url = {name: f"http://{a}:{port}" for name, port in ports.items()}
    token = secrets.token_urlsafe(32)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    deployment = Deployment(link, session, token)

    def env(prefix: str, name: str, port: int, host: str = a, **values: str) -> dict[str, str]:
        return {f"{prefix}HOST": host, f"{prefix}PORT": str(port), f"{prefix}INSTANCE": name,
                f"{prefix}SERVICE_TOKEN": token, f"{prefix}LOG_URL": url["logging_service"],
                **{f"{prefix}{key.upper()}": value for key, value in values.items()}}

    def on_a(name: str, module: str, prefix: str, **values: str) -> ServiceProcess:
        svc = ServiceProcess(name, module, url[name], env(prefix, name, ports[name], **values), a_dir)
        deployment.services[name] = svc
        return svc

    on_a("logging_service", "logging_service", "LOGGING_", store_url=schemas["logs"])
    on_a("registry", "registry", "REGISTRY_", store_url=schemas["registry"])
    on_a("scheduler", "scheduler", "SCHEDULER_", store_url=redis_url, reap_interval_s="0.2")
    for i in (1, 2):
        on_a(f"receptionist-{i}", "receptionist", "RECEPTIONIST_", registry_url=url["registry"],
             scheduler_url=url["scheduler"], logging_url=url["logging_service"], artifacts_url=s3_url,
             artifacts_dir=str(a_dir / "artifacts"),
             data_store_url=schemas["data"] if DATA_ON_POSTGRES else f"sqlite:///{a_dir}/data.db",
             time_scale=str(TIME_SCALE))
    on_a("gateway", "gateway", "GATEWAY_", receptionists=f"{url['receptionist-1']},{url['receptionist-2']}",
         registry_url=url["registry"], jwt_secret=secrets.token_urlsafe(48), rate_limit_per_s="0")
    try:
        forwarder.start(a, [s3_port, pg_port])  # the servers listen on loopback only
        b_s3_url = _with_endpoint(s3_url, f"http://{a}:{forwarder.ports[s3_port]}")
        b_data_url = (_via(schemas["data"], a, forwarder.ports[pg_port]) if DATA_ON_POSTGRES
                      else f"sqlite:///{b_dir}/data.db")
        for i in (1, 2):
            name, port = f"handler-{i}", 8100 + i  # B's namespace is empty: any port is free there
            deployment.services[name] = ServiceProcess(name, "handler", f"http://{link.guest_ip}:{port}", env(
                "HANDLER_", name, port, host=link.guest_ip, registry_url=url["registry"],
                scheduler_url=url["scheduler"], artifacts_url=b_s3_url, artifacts_dir=str(b_dir / "artifacts"),
                data_store_url=b_data_url, time_scale=str(TIME_SCALE), concurrency="32",
                lease_s="3", heartbeat_s="1", poll_wait_s="1", grace_s="1"), b_dir, prefix=link.exec_prefix)
        for group in (["logging_service"], ["registry", "scheduler"], ["receptionist-1", "receptionist-2"],
                      ["gateway", "handler-1", "handler-2"]):
            await asyncio.gather(*(deployment.services[name].start(session) for name in group))
        status, body = await deployment.registry("POST", "/users", json={
            "username": "admin", "password": ADMIN_PASSWORD, "roles": ["admin"]})
        assert status == 201, body
        yield deployment
    finally:
        print(deployment.logs())  # shown when the test failed
        for svc in reversed(deployment.services.values()):
            await svc.stop()
        forwarder.stop()
        await session.close()


async def login(deployment: Deployment, username: str, password: str) -> dict[str, str]:
    status, answer, _ = await deployment.request("POST", "/auth/token",
                                                 json={"username": username, "password": password})
    assert status == 200, answer
    return {"Authorization": f"Bearer {answer['access_token']}"}


async def task_counts(deployment: Deployment) -> dict[str, int] | None:
    """The registry's tasks by state; None while it cannot answer (it is being restarted)."""
    try:
        status, counts = await deployment.registry("GET", "/counts", params={"kind": "task"})
    except (aiohttp.ClientError, TimeoutError):
        return None
    return counts if status == 200 else None


async def task_history(deployment: Deployment) -> dict[str, list[dict[str, Any]]]:
    """Every task's events, oldest first, by job id, read from the registry's event log."""
    history: dict[str, list[dict[str, Any]]] = {}
    after = 0
    while True:
        status, page = await deployment.registry("GET", "/events", params={
            "kind": "task", "after": str(after), "limit": "1000"})
        assert status == 200, page
        for event in page["items"]:
            history.setdefault(event["job_id"], []).append(event)
        if not page["items"]:
            return history
        after = page["items"][-1]["seq"]


async def test_two_hosts_share_only_servers_and_http(deployment: Deployment, s3_url: str) -> None:
    admin = await login(deployment, "admin", ADMIN_PASSWORD)
    status, body, _ = await deployment.request("POST", "/users", headers=admin, json={
        "username": "alice", "password": "alice password", "roles": ["user"], "permissions": ["exporter", "importer"]})
    assert status == 201, body
    alice = await login(deployment, "alice", "alice password")

    # Every kind, submitted on A, run on B, its artifacts on S3.
    status, book, _ = await deployment.request("POST", "/exports", headers=alice, json={"bookId": "mh", "type": "epub"})
    assert status == 201, book
    status, task, _ = await deployment.request("POST", "/tasks", headers=alice, json={
        "description": "one", "duration_s": 1, "fail_probability": 0})
    assert status == 201, task
    status, ecg, _ = await deployment.request("POST", "/ecgs", headers=alice, json={
        "id": "mh-ecg", "date": "2026-11-30T10:00:00Z", "leads": [{"name": "I", "signal": [1, -1, 0, 2, -3]}]})
    assert status == 201, ecg
    form = aiohttp.FormData()
    form.add_field("file", USERS_CSV.encode(), filename="users.csv", content_type="text/csv")
    status, imported, _ = await deployment.request("POST", "/v1/imports", params={"resource": "users"},
                                                   headers=alice, data=form)
    assert status == 201, imported

    await until_state(deployment, f"/jobs/{book['id']}", alice, "finished")
    status, epub, headers = await deployment.request("GET", f"/jobs/{book['id']}/result", headers=alice)
    assert status == 200 and epub.startswith(b"PK") and headers["Content-Type"] == "application/epub+zip"
    done = await until_state(deployment, f"/jobs/{task['id']}", alice, "finished")
    assert done["result"]["outcome"] == "SUCCESS"
    analysed = await until_state(deployment, f"/ecgs/{ecg['id']}", alice, "finished")
    assert analysed["result"] == {"leads": [{"name": "I", "zero_crossings": 3}]}
    report = await until_state(deployment, f"/v1/imports/{imported['id']}", alice, "finished")
    assert report["counters"] == {"read": 3, "imported": 2, "rejected": 1}
    status, export, _ = await deployment.request("POST", "/v1/exports", headers=alice, json={
        "resource": "users", "format": "csv", "fields": ["id", "email"]})
    assert status == 201, export
    finished = await until_state(deployment, f"/v1/exports/{export['id']}", alice, "finished")
    status, data, _ = await deployment.request("GET", finished["download_url"], headers=alice)
    assert status == 200 and data.decode().splitlines() == ["id,email", "u1,ada@example.com", "u3,cy@example.com"]
    if DATA_ON_POSTGRES:  # A's receptionists read what B's handlers imported
        status, streamed, _ = await deployment.request("GET", "/v1/exports", headers=alice, params={
            "resource": "users", "format": "csv", "fields": "id,email"})
        assert status == 200 and streamed == data, streamed
    # Nothing of a job is on either host's disk: the artifacts are on S3.
    for host in ("host-a", "host-b"):
        local = deployment.services["gateway" if host == "host-a" else "handler-1"].cwd / "artifacts"
        assert not local.exists() or not [p for p in local.rglob("*") if p.is_file()], host

    # 1,000 tasks in flight; a handler of B dies, A's scheduler and registry restart.
    semaphore = asyncio.Semaphore(64)

    async def submit(i: int) -> str | None:
        async with semaphore:
            status, job, _ = await deployment.request("POST", "/tasks", headers=alice, json={
                "description": f"load {i}", "duration_s": 20, "fail_probability": 0})
            return job["id"] if status == 201 else None

    accepted = {job_id for job_id in await asyncio.gather(*(submit(i) for i in range(LOAD))) if job_id}
    assert len(accepted) == LOAD  # nothing was refused before the trouble starts
    ours = accepted | {task["id"]}

    def ended(counts: dict[str, int]) -> int:
        return sum(counts.get(state, 0) for state in ("finished", "failed", "cancelled"))

    async def past(n: int) -> dict[str, int] | None:
        counts = await task_counts(deployment)
        return counts if counts is not None and counts.get("finished", 0) >= n else None

    counts = await wait_until(lambda: past(100), timeout_s=60, interval_s=0.05, what="100 tasks finished")
    assert ended(counts) < len(ours), counts  # still in flight
    await deployment.services["handler-1"].kill()
    counts = await wait_until(lambda: past(300), timeout_s=60, interval_s=0.05, what="300 tasks finished")
    assert ended(counts) < len(ours), counts
    await deployment.services["scheduler"].restart(deployment.session)
    counts = await wait_until(lambda: past(500), timeout_s=60, interval_s=0.05, what="500 tasks finished")
    assert ended(counts) < len(ours), counts
    await deployment.services["registry"].restart(deployment.session)

    async def all_ended() -> dict[str, int] | None:
        counts = await task_counts(deployment)
        return counts if counts is not None and ended(counts) >= len(ours) else None

    counts = await wait_until(all_ended, timeout_s=90, interval_s=0.2, what="every task ended")
    assert counts.get("pending", 0) == counts.get("processing", 0) == 0, counts

    history = await task_history(deployment)
    assert ours <= history.keys()
    last = {job_id: history[job_id][-1]["state"] for job_id in ours}
    assert set(last.values()) <= {"finished", "failed"}, Counter(last.values())
    into_finished = {job_id: sum(1 for e in history[job_id] if e["state"] == "finished"
                                 and e["previous_state"] != "finished") for job_id in ours}
    twice = {job_id: n for job_id, n in into_finished.items() if n != (last[job_id] == "finished")}
    assert not twice, twice
    assert deployment.services["scheduler"].starts == deployment.services["registry"].starts == 2
