"""The public API's conventions, route by route, through the real gateway in front of a real receptionist,
registry, scheduler and logging service on loopback.

The routes come from the gateway's OpenAPI document, and :data:`ROUTES` says what each one is: a
submission (its answer must be the view its own GET shows), a list (paged like every other list), one
resource, an action, a stream or the gateway's own. A route the document lists and the table does not
fails :func:`test_every_public_route_is_in_the_contract_table`: add it to the table (how to create it,
how to list it) so the conventions below cover it. And the document must be the routes the services really
have: :func:`test_the_document_is_the_routes_the_gateway_serves_and_relays` compares it with the
receptionist's and the gateway's routers, both ways, so no route escapes the table.

- A submission answers exactly what its resource's GET shows (same fields, same case, same values); a
  cancel (``DELETE /jobs/{id}``, the one cancel route, for every kind) what ``GET /jobs/{id}`` shows then.
- Every list takes ``limit`` and ``cursor``, answers ``{items, next_cursor}`` (the grouped book lists:
  their groups and ``next_cursor``) with a ``Link: <...>; rel="next"`` header naming the next page while
  there is one; the pages are disjoint and together hold everything.
- An unknown query parameter, a blank one and a malformed filter value are each a 400 naming it, on every
  route the receptionist answers.
- The ids of the events of one stream are unique, and resuming after any of them (``Last-Event-ID``) gives
  each later event exactly once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from gateway.admission import OPERATOR_PATHS
from gateway.app import create_app as gateway_app
from gateway.dashboard.session import COOKIE_PATH
from gateway.openapi import build_spec
from gateway.settings import Settings as GatewaySettings
from logging_service.app import create_app as logging_app
from logging_service.settings import Settings as LoggingSettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from tests.sse import SseReader

TOKEN = "contract-test-service-token"
SECRET = "c" * 48
PASSWORD = "correct horse battery"
METHODS = {"get", "put", "post", "delete", "patch"}
ECG = {"id": "label-1", "date": "2023-07-30T10:15:00Z", "leads": [{"name": "I", "signal": [1, -1, 1]}]}
SEEDED = 3  # items each list gets before it is paged two at a time


def base(server: Any) -> str:
    return str(server.make_url("")).rstrip("/")


class Stack:
    """The gateway (``client``), the internal services' URLs, and a token for each role."""

    def __init__(self, client: Any, registry: str, scheduler: str, logs: str) -> None:
        self.client = client
        self.registry, self.scheduler, self.logs = registry, scheduler, logs
        self.as_: dict[str, dict[str, str]] = {}
        self.job_ids: dict[str, str] = {}  # a job of each kind, alice's

    async def internal(self, method: str, url: str, **kwargs: Any) -> Any:
        async with self.client.session.request(method, url, headers={"X-Service-Token": TOKEN}, **kwargs) as resp:
            assert resp.status < 300, (url, resp.status, await resp.text())
            return await resp.json() if resp.content_type == "application/json" else None

    async def login(self, username: str, roles: list[str], permissions: list[str] | None = None) -> None:
        await self.internal("POST", self.registry + "/users", json={
            "username": username, "password": PASSWORD, "roles": roles, "permissions": permissions or []})
        resp = await self.client.post("/auth/token", json={"username": username, "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        self.as_[username] = {"Authorization": "Bearer " + (await resp.json())["access_token"]}

    async def call(self, method: str, path: str, who: str = "alice", status: int | None = None,
                   **kwargs: Any) -> tuple[int, Any, Any]:
        resp = await self.client.request(method, path, headers=self.as_[who], **kwargs)
        body = await resp.json() if resp.content_type == "application/json" else await resp.read()
        if status is not None:
            assert resp.status == status, (method, path, resp.status, body)
        return resp.status, body, resp.headers


@pytest.fixture
async def stack(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Any) -> Stack:
    registry = await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
    logs = await aiohttp_server(logging_app(LoggingSettings(store_url="memory://", service_token=TOKEN)))
    front = await aiohttp_server(receptionist_app(ReceptionistSettings(
        registry_url=base(registry), scheduler_url=base(scheduler), logging_url=base(logs),
        artifacts_dir=str(tmp_path / "artifacts"), data_store_url=f"sqlite:///{tmp_path}/data.db",
        service_token=TOKEN, sweep_interval_s=0, artifact_sweep_interval_s=0, event_keepalive_s=0.5,
        log_stream_tick_s=0.1)))
    client = await aiohttp_client(gateway_app(GatewaySettings(
        receptionists=[base(front)], registry_url=base(registry), service_token=TOKEN, jwt_secret=SECRET,
        rate_limit_per_s=0)))
    stack = Stack(client, base(registry), base(scheduler), base(logs))
    await stack.login("alice", ["user"], ["exporter", "importer"])
    await stack.login("olga", ["operator"])
    await stack.login("root", ["admin"])
    return stack


# -- how to make each resource, and where its GET shows it ----------------------------------------------------

Make = Callable[[Stack, int], Awaitable[tuple[int, Any]]]


async def _post(stack: Stack, path: str, n: int, who: str = "alice", **kwargs: Any) -> tuple[int, Any]:
    status, body, _ = await stack.call("POST", path, who, **kwargs)
    return status, body


def _json(path: str, body: Callable[[int], Any], who: str = "alice", **kwargs: Any) -> Make:
    async def make(stack: Stack, n: int) -> tuple[int, Any]:
        return await _post(stack, path, n, who, json=body(n), **kwargs)
    return make


async def _find(stack: Stack, path: str, key: str, value: Any, who: str = "alice") -> Any:
    """The item whose ``key`` is ``value`` in the list at ``path``, every page of it."""
    url = f"{path}?limit=1000"
    while url:
        _, page, _ = await stack.call("GET", url, who, status=200)
        items = page["items"] if "items" in page else [i for k, v in page.items() if k != "next_cursor" for i in v]
        for item in items:
            if item[key] == value:
                return item
        url = f"{path}?limit=1000&cursor={page['next_cursor']}" if page["next_cursor"] else ""
    raise AssertionError(f"{key}={value} is not in {path}")


def _by_id(template: str) -> Callable[[Stack, Any], Awaitable[Any]]:
    async def view(stack: Stack, created: Any) -> Any:
        _, body, _ = await stack.call("GET", template.format(id=created["id"]), status=200)
        return body
    return view


def _in_list(path: str, key: str, who: str = "alice") -> Callable[[Stack, Any], Awaitable[Any]]:
    async def view(stack: Stack, created: Any) -> Any:
        return await _find(stack, path, key, created[key], who)
    return view


@dataclass
class Creates:
    """A submission route: how to send one (the ``n``-th), and how its resource's own GET shows it."""

    make: Make
    view: Callable[[Stack, Any], Awaitable[Any]]
    who: str = "alice"


@dataclass
class Lists:
    """A list: how to put ``SEEDED`` items in it, whose list it is, each item's identity, its bad filters
    (``{parameter: a malformed value}``; every list also gets the paging ones), and filters that keep
    what the test did not make out of it."""

    seed: Callable[[Stack], Awaitable[None]]
    who: str = "alice"
    key: Callable[[Any], Any] = lambda item: item["id"]
    grouped: bool = False
    bad: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Other:
    """Any other route: what it is (why it has neither a view to compare nor a list to page), who calls
    it, and whether the receptionist answers it (then an unknown parameter is a 400 there too)."""

    what: str
    who: str = "alice"
    strict: bool = True
    path: Callable[[Stack], Awaitable[str]] | None = None


def _seed(make: Make) -> Callable[[Stack], Awaitable[None]]:
    async def seed(stack: Stack) -> None:
        for n in range(SEEDED):
            status, _ = await make(stack, n)
            assert status == 201
    return seed


EXPORT = _json("/exports", lambda n: {"bookId": f"b{n}", "type": "epub"})
IMPORT = _json("/imports", lambda n: {"bookId": f"b{n}", "type": "word", "url": f"https://example.com/{n}.docx"})
TASK = _json("/tasks", lambda n: {"description": f"task {n}"})
JOB = _json("/jobs", lambda n: {"kind": "export", "payload": {"bookId": f"j{n}", "type": "pdf"}})
ECG_MAKE = _json("/ecgs", lambda n: {**ECG, "id": f"label-{n}"})
DATA_IMPORT = _json("/v1/imports?resource=users", lambda n: {"url": f"https://example.com/users-{n}.csv"})
DATA_EXPORT = _json("/v1/exports", lambda n: {"resource": "users", "format": "csv"})
SCHEDULE = _json("/schedules", lambda n: {"kind": "export", "payload": {"bookId": f"s{n}", "type": "epub"},
                                          "every_s": 3600 + n})
USER = _json("/users", lambda n: {"username": f"user-{uuid.uuid4().hex[:8]}", "password": PASSWORD,
                                  "roles": ["user"]}, who="root")


async def _log_lines(stack: Stack) -> None:
    """Log lines of alice's task, from a service of the test's own, at distinct times."""
    now = datetime.now(timezone.utc)
    job_id = await _a_job(stack, "task")
    await stack.internal("POST", stack.logs + "/logs", json=[
        {"timestamp": (now - timedelta(seconds=n)).isoformat(), "service": "contract", "level": "info",
         "message": f"line {n}", "meta": {"job_id": job_id}} for n in range(SEEDED)])


async def _dead_letters(stack: Stack) -> None:
    """Dead letters: tasks taken off their queue and nacked for good, as a handler would."""
    for n in range(SEEDED):
        status, _ = await TASK(stack, n)
        assert status == 201
        taken = await stack.internal("POST", stack.scheduler + "/dequeue", json={"queues": ["task"]})
        for delivery in taken["deliveries"]:
            await stack.internal("POST", stack.scheduler + "/leases/nack", json={
                "job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"], "error": "boom", "retry": False})


async def _queues(stack: Stack) -> None:
    """Queues the scheduler knows: kinds' queues, paused before they held a job."""
    for name in ("task", "export", "ecg")[:SEEDED]:
        await stack.call("POST", f"/queues/{name}/pause", "olga", status=200)


async def _instances(stack: Stack) -> None:
    now = datetime.now(timezone.utc).isoformat()
    for n in range(SEEDED):
        await stack.internal("PUT", f"{stack.registry}/instances/{uuid.uuid4()}", json={
            "name": f"handler-{n}", "kind": "handler", "url": f"http://127.0.0.1:{9100 + n}", "version": "1",
            "started_at": now, "heartbeat_s": 60})


async def _a_job(stack: Stack, kind: str) -> str:
    """The id of a job of ``kind`` of alice's (made once)."""
    if kind not in stack.job_ids:
        make = {"task": TASK, "export": EXPORT, "ecg": ECG_MAKE, "data_import": DATA_IMPORT,
                "data_export": DATA_EXPORT}[kind]
        status, body = await make(stack, 0)
        assert status == 201
        stack.job_ids[kind] = body["id"]
    return stack.job_ids[kind]


def _job_path(template: str, kind: str = "task") -> Callable[[Stack], Awaitable[str]]:
    async def path(stack: Stack) -> str:
        return template.replace("{job_id}", await _a_job(stack, kind)).replace("{task_id}", await _a_job(stack, kind))
    return path


def _schedule_path(template: str) -> Callable[[Stack], Awaitable[str]]:
    async def path(stack: Stack) -> str:
        if "schedule" not in stack.job_ids:
            status, body = await SCHEDULE(stack, 0)
            assert status == 201
            stack.job_ids["schedule"] = body["id"]
        return template.replace("{schedule_id}", stack.job_ids["schedule"])
    return path


def _fixed(path: str) -> Callable[[Stack], Awaitable[str]]:
    async def same(stack: Stack) -> str:
        return path
    return same


#: Every public route: ``(method, path)`` to what it is. The contract tests below walk it.
ROUTES: dict[tuple[str, str], Creates | Lists | Other] = {
    ("post", "/exports"): Creates(EXPORT, _in_list("/exports", "id")),
    ("post", "/imports"): Creates(IMPORT, _in_list("/imports", "id")),
    ("post", "/tasks"): Creates(TASK, _by_id("/tasks/{id}")),
    ("post", "/jobs"): Creates(JOB, _by_id("/jobs/{id}")),
    ("post", "/ecgs"): Creates(ECG_MAKE, _by_id("/ecgs/{id}")),
    ("post", "/v1/imports"): Creates(DATA_IMPORT, _by_id("/v1/imports/{id}")),
    ("post", "/v1/exports"): Creates(DATA_EXPORT, _by_id("/v1/exports/{id}")),
    ("post", "/schedules"): Creates(SCHEDULE, _by_id("/schedules/{id}")),
    ("post", "/users"): Creates(USER, _in_list("/users", "username", who="root"), who="root"),
    ("get", "/exports"): Lists(_seed(EXPORT), grouped=True),
    ("get", "/imports"): Lists(_seed(IMPORT), grouped=True),
    ("get", "/jobs"): Lists(_seed(TASK), params={"created_after": "2000-01-01T00:00:00Z"},
                            bad={"state": "sleeping", "kind": "laundry", "owner": "someone",
                                 "created_before": "yesterday", "created_after": "1700000000"}),
    ("get", "/tasks"): Lists(_seed(TASK)),
    ("get", "/ecgs"): Lists(_seed(ECG_MAKE)),
    ("get", "/v1/imports"): Lists(_seed(DATA_IMPORT)),
    ("get", "/v1/exports/jobs"): Lists(_seed(DATA_EXPORT)),
    ("get", "/schedules"): Lists(_seed(SCHEDULE)),
    ("get", "/users"): Lists(_seed(USER), who="root", key=lambda user: user["id"]),
    ("get", "/instances"): Lists(_instances, who="olga", params={"kind": "handler"},
                                 bad={"kind": "toaster", "gone": "maybe"}),
    ("get", "/dead"): Lists(_dead_letters, who="olga", key=lambda item: item["job_id"], bad={"queue": "no such!"}),
    ("get", "/logs"): Lists(_log_lines, who="olga", params={"service": "contract", "q": "LINE"},
                            key=lambda line: (line["timestamp"], line["message"]),
                            bad={"level": "bogus", "min_level": "loud", "since": "yesterday", "job_id": "42",
                                 "q": ""}),
    ("get", "/jobs/{job_id}/logs"): Lists(_log_lines, key=lambda line: (line["timestamp"], line["message"]),
                                          params={"service": "contract", "q": "line"},
                                          bad={"level": "bogus", "until": "soon", "q": "x" * 201}),
    ("get", "/jobs/{job_id}"): Other("one job", path=_job_path("/jobs/{job_id}")),
    ("delete", "/jobs/{job_id}"): Other("an action: cancel", path=_job_path("/jobs/{job_id}")),
    ("get", "/jobs/{job_id}/result"): Other("a file", path=_job_path("/jobs/{job_id}/result")),
    ("get", "/tasks/{task_id}"): Other("one task", path=_job_path("/tasks/{task_id}")),
    ("get", "/ecgs/{job_id}"): Other("one ECG", path=_job_path("/ecgs/{job_id}", "ecg")),
    ("get", "/v1/imports/{job_id}"): Other("one import", path=_job_path("/v1/imports/{job_id}", "data_import")),
    ("get", "/v1/imports/{job_id}/errors"): Other("a file", path=_job_path("/v1/imports/{job_id}/errors",
                                                                           "data_import")),
    ("get", "/v1/exports/{job_id}"): Other("one export", path=_job_path("/v1/exports/{job_id}", "data_export")),
    ("get", "/v1/exports"): Other("a file streamed from the data store: every other parameter is a filter"),
    ("get", "/queues"): Lists(_queues, who="olga", key=lambda queue: queue["queue"]),
    ("post", "/dead/requeue"): Other("an action: redrive", who="olga"),
    ("post", "/dead/discard"): Other("an action: discard", who="olga"),
    ("post", "/queues/{name}/pause"): Other("an action: pause", who="olga", path=_fixed("/queues/tasks/pause")),
    ("post", "/queues/{name}/resume"): Other("an action: resume", who="olga", path=_fixed("/queues/tasks/resume")),
    ("get", "/schedules/{schedule_id}"): Other("one schedule", path=_schedule_path("/schedules/{schedule_id}")),
    ("delete", "/schedules/{schedule_id}"): Other("an action: remove",
                                                  path=_schedule_path("/schedules/{schedule_id}")),
    ("post", "/schedules/{schedule_id}/pause"): Other("an action: pause",
                                                      path=_schedule_path("/schedules/{schedule_id}/pause")),
    ("post", "/schedules/{schedule_id}/resume"): Other("an action: resume",
                                                       path=_schedule_path("/schedules/{schedule_id}/resume")),
    ("delete", "/users/{username}"): Other("an action", who="root", path=_fixed("/users/alice")),
    ("put", "/users/{username}/password"): Other("an action", who="root", path=_fixed("/users/alice/password")),
    ("put", "/users/{username}/roles"): Other("an action", who="root", path=_fixed("/users/alice/roles")),
    ("get", "/events"): Other("a stream (see the event id test)"),
    ("get", "/logs/stream"): Other("a stream (tests/receptionist/test_log_stream.py)", who="olga"),
    ("get", "/jobs/{job_id}/events"): Other("a stream (see the event id test)",
                                            path=_job_path("/jobs/{job_id}/events")),
    ("post", "/auth/token"): Other("the gateway's own: a token", strict=False),
    ("get", "/health"): Other("the gateway's own: a probe", strict=False),
    ("get", "/openapi.json"): Other("the gateway's own: this document", strict=False),
    ("get", "/docs"): Other("the gateway's own: Swagger UI", strict=False),
}


def _operations() -> list[tuple[str, str]]:
    return [(method, path) for path, item in build_spec()["paths"].items() for method in item if method in METHODS]


def _of(kind: type) -> list[tuple[str, str]]:
    return [route for route, what in ROUTES.items() if isinstance(what, kind)]


def test_every_public_route_is_in_the_contract_table() -> None:
    missing = [f"{method.upper()} {path}" for method, path in _operations() if (method, path) not in ROUTES]
    assert not missing, (
        f"{', '.join(missing)}: not in tests/gateway/test_api_contract.py's ROUTES. Say there how to create "
        "the resource (Creates: its POST and its GET view), how to fill its list (Lists), or what else it is "
        "(Other), so that the API's conventions are checked on it too")
    gone = [route for route in ROUTES if route not in set(_operations())]
    assert not gone, f"{gone}: in ROUTES but not in the OpenAPI document"


def _routes(app: web.Application) -> set[tuple[str, str]]:
    """``(method, path template)`` of every route of ``app`` a method names (aiohttp's implicit HEAD of
    a GET, and the ``*`` routes that refuse other methods, aside)."""
    return {(route.method.lower(), route.resource.canonical) for route in app.router.routes()
            if route.method not in ("HEAD", "*") and route.resource is not None}


async def _relayed(gateway: web.Application, method: str, template: str) -> bool:
    """Whether the gateway relays ``method`` on a path of ``template`` (its catch-all takes it), rather
    than answering it with a route of its own (its ``/health``, ``/status``, ``/metrics``)."""
    request = make_mocked_request(method.upper(), re.sub(r"\{[^}]+\}", "x", template), app=gateway)
    match = await gateway.router.resolve(request)
    return match.route.resource is not None and match.route.resource.canonical == "/{tail}"


async def test_the_document_is_the_routes_the_gateway_serves_and_relays(tmp_path: Any) -> None:
    """The OpenAPI document's operations are exactly the receptionist's routes the gateway relays, and the
    gateway's own public routes. Not the API, so not in the document: the receptionist's ``/health``,
    ``/status`` and ``/metrics`` (the gateway answers those paths itself, never relaying them), the
    gateway's ``/status`` and ``/metrics`` (operators' and scrapers', :data:`gateway.admission.OPERATOR_PATHS`),
    its dashboard's pages (cookie-signed HTML under ``/dashboard``) and Swagger UI's files."""
    url = "http://127.0.0.1:9"
    receptionist = receptionist_app(ReceptionistSettings(
        registry_url=url, scheduler_url=url, artifacts_dir=str(tmp_path / "artifacts"),
        data_store_url=f"sqlite:///{tmp_path}/data.db", service_token=TOKEN))
    gateway = gateway_app(GatewaySettings(receptionists=[url], registry_url=url, service_token=TOKEN,
                                          jwt_secret=SECRET))
    relayed = {route for route in _routes(receptionist) if await _relayed(gateway, *route)}
    assert relayed == _routes(receptionist) - {("get", path) for path in ("/health", "/status", "/metrics")}
    own = {(method, path) for method, path in _routes(gateway)
           if path != "/{tail}" and path not in OPERATOR_PATHS and not path.startswith(COOKIE_PATH)
           and not path.startswith("/docs/static/")}
    documented = set(_operations())
    assert not relayed & own, f"{relayed & own}: both relayed and the gateway's own"
    assert relayed | own == documented, (
        f"served, not in the OpenAPI document (gateway/openapi.py): {sorted((relayed | own) - documented)}; "
        f"in the document, served by no router: {sorted(documented - relayed - own)}")


@pytest.mark.parametrize("route", _of(Creates), ids=lambda route: f"{route[0].upper()} {route[1]}")
async def test_a_submission_answers_the_view_of_its_get(stack: Stack, route: tuple[str, str]) -> None:
    case = ROUTES[route]
    assert isinstance(case, Creates)
    status, created = await case.make(stack, 0)
    assert status == 201, created
    shown = await case.view(stack, created)
    assert created == shown, f"{route}: the POST answers {created}, its GET shows {shown}"
    # A repeat (the same Idempotency-Key) answers the same model as the first submission.
    answers = build_spec()["paths"][route[1].split("?")[0]]["post"]["responses"]
    assert "200" not in answers or answers["201"]["content"] == answers["200"]["content"]


#: A job of each kind the stack has: ``DELETE /jobs/{id}`` cancels any of them.
CANCELS = {"task": TASK, "export": EXPORT, "import": IMPORT, "export by POST /jobs": JOB, "ecg": ECG_MAKE,
           "data_import": DATA_IMPORT, "data_export": DATA_EXPORT}


async def test_a_cancel_answers_the_view_of_its_get(stack: Stack) -> None:
    """``DELETE /jobs/{id}`` answers the job as ``GET /jobs/{id}`` shows it after the cancel, whatever the
    kind: to its owner whole, to an operator who cancels another's job as the operator sees it."""
    for kind, make in CANCELS.items():
        for who in ("alice", "olga"):
            status, created = await make(stack, 0)
            assert status == 201, (kind, created)
            _, cancelled, _ = await stack.call("DELETE", f"/jobs/{created['id']}", who, status=200)
            _, shown, _ = await stack.call("GET", f"/jobs/{created['id']}", who, status=200)
            assert cancelled["state"] == "cancelled" and cancelled == shown, (kind, who, cancelled, shown)
            assert (cancelled["payload"] is None) is (who == "olga"), (kind, cancelled)  # an operator's: redacted


def _items(page: dict[str, Any], grouped: bool) -> list[Any]:
    if grouped:
        assert set(page) == {"pending", "processing", "finished", "failed", "cancelled", "next_cursor"}
        return [item for state, items in page.items() if state != "next_cursor" for item in items]
    assert set(page) == {"items", "next_cursor"}, page
    return list(page["items"])


async def _list_path(stack: Stack, route: tuple[str, str]) -> str:
    path = route[1]
    if "{job_id}" in path:
        path = path.replace("{job_id}", await _a_job(stack, "task"))
    return path


@pytest.mark.parametrize("route", _of(Lists), ids=lambda route: route[1])
async def test_every_list_pages_alike(stack: Stack, route: tuple[str, str]) -> None:
    case = ROUTES[route]
    assert isinstance(case, Lists)
    await case.seed(stack)
    path = await _list_path(stack, route)
    _, whole, headers = await stack.call("GET", path, case.who, status=200, params={**case.params, "limit": "1000"})
    everything = [case.key(item) for item in _items(whole, case.grouped)]
    assert len(everything) >= SEEDED and whole["next_cursor"] is None and "Link" not in headers

    status, page, headers = await stack.call("GET", path, case.who, params={**case.params, "limit": "2"})
    assert status == 200, page
    seen = [case.key(item) for item in _items(page, case.grouped)]
    assert len(seen) == 2 and page["next_cursor"]
    pages = 1
    while page["next_cursor"]:
        link = re.fullmatch(r'<([^>]+)>; rel="next"', headers.get("Link", ""))
        assert link, f"{path}: a page with a next_cursor has a Link header, not {headers.get('Link')!r}"
        url = URL(link.group(1))
        assert url.path == path and url.query["cursor"] == page["next_cursor"] and url.query["limit"] == "2"
        assert all(url.query[name] == value for name, value in case.params.items()), "the filters stay in the Link"
        _, page, headers = await stack.call("GET", str(url), case.who, status=200)
        keys = [case.key(item) for item in _items(page, case.grouped)]
        assert not set(keys) & set(seen), f"{path}: the second page repeats items of the first"
        seen += keys
        pages += 1
    assert "Link" not in headers
    assert pages >= 2 and sorted(map(str, seen)) == sorted(map(str, everything))


def _bad_parameters(case: Lists) -> dict[str, str]:
    return {"limit": "0", "cursor": "not-a-cursor", **case.bad}


async def _refused(stack: Stack, method: str, path: str, who: str, params: dict[str, str], name: str) -> None:
    status, body, _ = await stack.call(method.upper(), path, who, params=params)
    assert status == 400, (method, path, params, status, body)
    assert name in {detail["field"] for detail in body["details"]}, (path, params, body)


@pytest.mark.parametrize("route", _of(Lists), ids=lambda route: route[1])
async def test_a_bad_filter_of_a_list_is_a_400_naming_it(stack: Stack, route: tuple[str, str]) -> None:
    case = ROUTES[route]
    assert isinstance(case, Lists)
    path = await _list_path(stack, route)
    for name, value in _bad_parameters(case).items():
        await _refused(stack, "get", path, case.who, {name: value}, name)
    await _refused(stack, "get", path, case.who, {"colour": "red"}, "colour")  # unknown
    await _refused(stack, "get", path, case.who, {"limit": ""}, "limit")  # blank
    status, body, _ = await stack.call("GET", path + "?limit=1&limit=2", case.who)
    assert status == 400 and body["details"][0]["field"] == "limit"  # twice


@pytest.mark.parametrize("route", [route for route in ROUTES if getattr(ROUTES[route], "strict", True)],
                         ids=lambda route: f"{route[0].upper()} {route[1]}")
async def test_an_unknown_parameter_is_a_400_naming_it_on_every_route(stack: Stack, route: tuple[str, str]) -> None:
    method, path = route
    case = ROUTES[route]
    who = getattr(case, "who", "alice")
    if isinstance(case, Other) and case.path is not None:
        path = await case.path(stack)
    elif isinstance(case, Lists):
        path = await _list_path(stack, route)
    if route == ("get", "/v1/exports"):  # every parameter but the export's own is a filter of its resource
        await _refused(stack, method, path, who, {"resource": "users", "colour": "red"}, "colour")
    else:
        await _refused(stack, method, path, who, {"colour": "red"}, "colour")


async def test_event_ids_are_unique_in_every_stream(stack: Stack) -> None:
    ids = []
    for n in range(SEEDED):
        status, task = await TASK(stack, n)
        assert status == 201
        ids.append(task["id"])
    await stack.call("DELETE", f"/jobs/{ids[0]}", status=200)
    # One job's stream, from its first change to its last: created (a task's and a job's event), cancelled.
    resp = await stack.client.get(f"/jobs/{ids[0]}/events", headers=stack.as_["alice"])
    events = await SseReader(resp).rest()
    assert len(events) >= 4
    assert len({event.id for event in events}) == len(events), [event.id for event in events]
    # Everyone's, from the start: every change of every task shows as two events, and no id comes twice.
    for who in ("alice", "olga"):
        resp = await stack.client.get("/events", params={"after": "0"}, headers=stack.as_[who])
        reader = SseReader(resp)
        events = await reader.until(lambda event: event.json().get("state") == "cancelled")
        resp.close()
        assert len(events) >= 2 * (SEEDED + 1)
        assert len({event.id for event in events}) == len(events), [event.id for event in events]
        assert {event.event for event in events} == {"task.created", "task.updated", "job.updated"}


async def test_log_stream_ids_are_unique_and_resuming_gives_each_line_once(stack: Stack) -> None:
    now = datetime.now(timezone.utc)

    async def ship(*messages_at: tuple[str, datetime]) -> None:
        await stack.internal("POST", stack.logs + "/logs", json=[
            {"timestamp": at.isoformat(), "service": "contract", "level": "info", "message": message, "meta": {}}
            for message, at in messages_at])

    def messages(events: list[Any]) -> list[str]:
        return [event.json()["message"] for event in events if event.event == "log"]

    def saying(message: str) -> Callable[[Any], bool]:
        return lambda event: event.event == "log" and event.json()["message"] == message

    params, ops = {"service": "contract"}, stack.as_["olga"]
    async with stack.client.get("/logs/stream", params=params, headers=ops) as resp:
        reader = SseReader(resp)
        # Two lines of the very same time, then one older than both that arrives after them.
        await ship(("same time 1", now), ("same time 2", now))
        await ship(("late", now - timedelta(seconds=1)))
        events = [e for e in await reader.until(saying("late")) if e.event == "log"]
    assert messages(events) == ["same time 1", "same time 2", "late"]
    assert len({event.id for event in events}) == 3, [event.id for event in events]
    # Resuming after each one: every line that arrived later, once (the mark shipped once the stream is open
    # shows that the lines it read itself do not come again from the logging service).
    for n, event in enumerate(events):
        await ship((f"next {n}", now - timedelta(seconds=5)))
        async with stack.client.get("/logs/stream", params=params,
                                    headers={**ops, "Last-Event-ID": event.id}) as resp:
            reader = SseReader(resp)
            got = await reader.until(saying(f"next {n}"))
            await ship((f"mark {n}", now - timedelta(seconds=5)))
            got += await reader.until(saying(f"mark {n}"))
        earlier = [message for m in range(n) for message in (f"next {m}", f"mark {m}")]
        assert messages(got) == [*messages(events[n + 1:]), *earlier, f"next {n}", f"mark {n}"]
        assert len({e.id for e in got}) == len(got)
