"""The dashboard's session, CSRF checks and live feed, through the real gateway, receptionist, registry and
scheduler on loopback (the browser tests are in ``tests/e2e/test_dashboard_e2e.py``)."""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from gateway.app import DASHBOARD_LIVE
from tests.gateway.test_admission import PASSWORD, RATE_HEADERS, TOKEN, StartStack, start_stack  # noqa: F401 - a fixture
from tests.support import wait_until

LOGIN_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
PAGE_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


async def log_in(client: TestClient, username: str, *, forwarded_proto: str | None = None) -> Any:
    form = await client.get("/dashboard/login")
    assert form.status == 200
    csrf = LOGIN_CSRF.search(await form.text())
    assert csrf is not None
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    return await client.post("/dashboard/login", data={"username": username, "password": PASSWORD,
                                                       "csrf": csrf.group(1)}, allow_redirects=False, headers=headers)


async def page_csrf(client: TestClient) -> str:
    page = await client.get("/dashboard", allow_redirects=False)
    assert page.status == 200, await page.text()
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    match = PAGE_CSRF.search(await page.text())
    assert match is not None
    return match.group(1)


async def test_an_operator_gets_a_strict_http_only_session_and_acts_only_with_its_csrf_token(
        start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack()
    await stack.login("olga", ["operator"])
    client = stack.gateway
    assert (await client.get("/dashboard", allow_redirects=False)).headers["Location"] == "/dashboard/login"
    answer = await log_in(client, "olga")
    assert answer.status == 303 and answer.headers["Location"] == "/dashboard"
    cookie = answer.cookies["conveyor_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/dashboard"
    assert not cookie["secure"]  # plain http, no setting
    csrf = await page_csrf(client)

    resp = await client.get("/dashboard/api/queues")
    assert resp.status == 200 and "items" in await resp.json()
    for headers in ({}, {"X-CSRF-Token": "0" * len(csrf)}, {"X-CSRF-Token": "é"}):
        resp = await client.post("/dashboard/api/dead/requeue", json={"all": True}, headers=headers)
        assert resp.status == 403, headers
        assert (await resp.json())["details"] == [{"field": "X-CSRF-Token", "message": "missing or wrong"}]
    resp = await client.post("/dashboard/api/dead/requeue", json={"all": True}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200 and await resp.json() == {"requeued": [], "skipped": []}
    # The relayed answer is the receptionist's, with its errors: an unknown route is its 404.
    resp = await client.get("/dashboard/api/no-such-route")
    assert resp.status == 404
    # Logging out is an action too; with the token it ends the session.
    assert (await client.post("/dashboard/logout", allow_redirects=False)).status == 403
    resp = await client.post("/dashboard/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.cookies["conveyor_session"].value == ""
    assert (await client.get("/dashboard/api/queues")).status == 401


async def test_the_login_form_needs_its_own_csrf_cookie_and_refuses_non_operators(
        start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack()
    await stack.login("alice", ["user"])
    client = stack.gateway
    # A form posted from elsewhere has no matching cookie: 403, nothing checked.
    resp = await client.post("/dashboard/login", data={"username": "alice", "password": PASSWORD, "csrf": "x"})
    assert resp.status == 403
    resp = await log_in(client, "alice")
    assert resp.status == 403 and "The dashboard is for operators" in await resp.text()
    assert "conveyor_session" not in resp.cookies
    # A bearer token does not open the dashboard's API: only a session does.
    token = (await stack.login("olga", ["operator"]))
    assert (await client.get("/dashboard/api/queues", headers=token)).status == 401


async def test_the_cookie_is_secure_behind_https(start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack(trust_forwarded=True)
    await stack.login("olga", ["operator"])
    answer = await log_in(stack.gateway, "olga", forwarded_proto="https")
    assert answer.cookies["conveyor_session"]["secure"]


async def read_events(resp: Any, count: int) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name = None
    while len(events) < count:
        line = (await asyncio.wait_for(resp.content.readline(), timeout=20)).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name or "", orjson.loads(line[6:])))
    return events


async def test_the_live_feed_fetches_once_a_tick_for_every_viewer(start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack(dashboard_tick_s=0.2, dashboard_sample_s=0.1)
    ops = await stack.login("olga", ["operator"])
    client = stack.gateway
    await log_in(client, "olga")
    assert (await client.post("/tasks", json={"description": "x"}, headers=ops)).status == 403  # not a user
    assert (await client.post("/queues/task/pause", headers=ops)).status == 200
    live = client.app[DASHBOARD_LIVE]
    streams = [await client.get("/dashboard/live") for _ in range(3)]
    try:
        for resp in streams:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
        hellos = [await read_events(resp, 1) for resp in streams]
        assert all(events[0][0] == "hello" for events in hellos)
        fetches_before = live.fetches
        seen = [await read_events(resp, 3) for resp in streams]
        ticks = live.fetches - fetches_before
        for events in seen:
            assert [name for name, _ in events] == ["snapshot"] * 3
            assert {"queues", "instances", "rates", "t"} <= events[0][1].keys()
            assert events[0][1]["queues"]["task"]["paused"] is True  # GET /queues' items, by name
        # Three viewers, three snapshots each: about three fetches, not nine.
        assert ticks < 9, ticks
    finally:
        for resp in streams:
            resp.close()

    async def stopped() -> bool:
        return live.viewers == 0

    await wait_until(stopped, what="the streams to end")
    # Nobody watches: the loop goes on sampling the queues' totals, and sends no snapshot.
    fetches, samples = live.fetches, live.samples
    await wait_until(lambda: _true(live.samples > samples + 1), what="samples without a viewer")
    assert live.fetches <= fetches + 1 and live._task is not None and not live._task.done()


async def _true(value: bool) -> bool:
    return value


async def test_the_hour_of_rates_is_kept_while_nobody_watches(start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack(dashboard_tick_s=0.2, dashboard_sample_s=0.05)
    both = await stack.login("olga", ["user", "operator"])
    client = stack.gateway
    live = client.app[DASHBOARD_LIVE]

    async def submit(description: str) -> None:
        resp = await client.post("/tasks", json={"description": description}, headers=both)
        assert resp.status == 201, await resp.text()

    await submit("the queue's first job")  # the first look at a queue has its totals, no rate yet
    await wait_until(lambda: _true(bool(live._totals)), what="a first sample of the queue")
    for description in ("two", "three", "four"):
        await submit(description)

    async def sampled() -> dict[str, list[list[float]]]:
        return {name: points for name, points in live.history_view().items() if any(p[1] > 0 for p in points)}

    history = await wait_until(sampled, what="the enqueued jobs in the history")
    assert live.viewers == 0 and live.fetches == 0 and live.snapshot is None  # nobody watched: no snapshot
    [(queue, points)] = history.items()
    await log_in(client, "olga")
    resp = await client.get("/dashboard/live")
    try:
        [(name, hello)] = await read_events(resp, 1)
        assert name == "hello" and hello["gap_s"] == live.gap_s
        assert hello["history"][queue][:len(points)] == points  # a new viewer gets the hour sampled unwatched
        [(name, snapshot)] = await read_events(resp, 1)  # then the first tick, at once
        assert name == "snapshot" and queue in snapshot["queues"]
    finally:
        resp.close()


async def test_the_jobs_page_filters_by_owner_and_creation_time(start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack()
    both = await stack.login("olga", ["user", "operator"])
    alice = await stack.login("alice", ["user"])
    client = stack.gateway
    made = []
    for description in ("one", "two", "three"):
        resp = await client.post("/tasks", json={"description": description}, headers=both)
        assert resp.status == 201
        made.append(await (await client.get(f"/jobs/{(await resp.json())['id']}", headers=both)).json())
    resp = await client.post("/tasks", json={"description": "alice's"}, headers=alice)
    assert resp.status == 201
    alices = await (await client.get(f"/jobs/{(await resp.json())['id']}", headers=alice)).json()
    second = (await (await client.get(f"/jobs/{made[1]['id']}", headers=both)).json())["created_at"]
    resp = await client.get("/jobs", params={"created_before": second, "owner": made[0]["owner"]}, headers=both)
    assert resp.status == 200, await resp.text()
    assert [job["id"] for job in (await resp.json())["items"]] == [made[0]["id"]]
    resp = await client.get("/jobs", params={"owner": alices["owner"]}, headers=both)
    assert [job["id"] for job in (await resp.json())["items"]] == [alices["id"]]
    # From a moment on (that moment included), and a window with created_before.
    resp = await client.get("/jobs", params={"created_after": second, "owner": made[0]["owner"]}, headers=both)
    assert resp.status == 200, await resp.text()
    assert [job["id"] for job in (await resp.json())["items"]] == [made[2]["id"], made[1]["id"]]
    third = made[2]["created_at"]
    resp = await client.get("/jobs", params={"created_after": second, "created_before": third,
                                             "owner": made[0]["owner"]}, headers=both)
    assert [job["id"] for job in (await resp.json())["items"]] == [made[1]["id"]]
    for params in ({"created_after": "soon"}, {"created_after": "1700000000"},
                   {"created_after": third, "created_before": second}, {"created_after": second, "created_before": second}):
        resp = await client.get("/jobs", params=params, headers=both)
        assert resp.status == 400, (params, await resp.text())
        assert (await resp.json())["details"][0]["field"] == "created_after", params
    # A user lists only their own: the owner filter is an operator's, a 400 naming it for a user.
    resp = await client.get("/jobs", params={"owner": made[0]["owner"]}, headers=alice)
    assert resp.status == 400 and (await resp.json())["details"][0]["field"] == "owner"
    resp = await client.get("/jobs", params={"created_before": "2030-01-01T00:00:00"}, headers=alice)
    assert resp.status == 200 and len((await resp.json())["items"]) == 1  # no offset: UTC
    for number in ("0.5", "1700000000"):  # a number is not a time, even as text
        resp = await client.get("/jobs", params={"created_before": number}, headers=alice)
        assert resp.status == 400, number
    for edge in ("9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00Z"):
        resp = await client.get("/jobs", params={"created_before": edge}, headers=both)
        assert resp.status == 400, (edge, await resp.text())


async def test_the_relayed_calls_are_counted_by_the_route_they_relay_to(start_stack: StartStack) -> None:  # noqa: F811
    from prometheus_client.parser import text_string_to_metric_families

    from tests.gateway.test_admission import METRICS_TOKEN

    stack = await start_stack()
    both = await stack.login("olga", ["user", "operator"])
    client = stack.gateway
    resp = await client.post("/tasks", json={"description": "counted"}, headers=both)
    assert resp.status == 201
    job_id = (await resp.json())["id"]
    await log_in(client, "olga")
    for path in ("/queues", f"/jobs/{job_id}", "/jobs/not-a-job", "/no/such/route"):
        await (await client.get("/dashboard/api" + path)).read()
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    routes = {sample.labels["route"] for family in text_string_to_metric_families(await resp.text())
              if family.name == "conveyor_http_requests" for sample in family.samples}
    assert {"/dashboard/api/queues", "/dashboard/api/jobs/{job_id}", "unmatched"} <= routes, routes
    assert not [route for route in routes if job_id in route or "not-a-job" in route or "{tail}" in route], routes


async def test_the_dashboards_redirects_carry_the_request_id_and_the_ratelimit_headers(
        start_stack: StartStack) -> None:  # noqa: F811
    """Every answer carries them, redirects included (aiohttp's redirects are raised, not returned)."""
    stack = await start_stack(rate_limit_per_s=0.01, rate_limit_burst=100)
    await stack.login("olga", ["operator"])  # the address's first token
    client = stack.gateway

    def carried(resp: Any, request_id: str) -> dict[str, str]:
        assert resp.headers.get("X-Request-ID") == request_id, (resp.status, dict(resp.headers))
        return {name: resp.headers.get(name, "") for name in RATE_HEADERS}

    for path, status in (("/dashboard", 303), ("/dashboard/", 301)):
        resp = await client.get(path, allow_redirects=False, headers={"X-Request-ID": f"probe{path}"})
        assert resp.status == status
        assert carried(resp, f"probe{path}")["RateLimit-Remaining"] == "99"  # told, not taken
    form = await client.get("/dashboard/login")
    csrf = LOGIN_CSRF.search(await form.text())
    assert csrf is not None
    resp = await client.post("/dashboard/login", allow_redirects=False, headers={"X-Request-ID": "probe-login"},
                             data={"username": "olga", "password": PASSWORD, "csrf": csrf.group(1)})
    assert resp.status == 303
    assert carried(resp, "probe-login") == {"RateLimit-Limit": "100", "RateLimit-Remaining": "98",
                                            "RateLimit-Reset": resp.headers.get("RateLimit-Reset", "")}
    assert resp.headers["RateLimit-Reset"].isdigit()
    # The live feed is sent before the middleware sees it: it carries them all the same, a new id included.
    for sent in ({"X-Request-ID": "probe-live"}, {}):
        resp = await client.get("/dashboard/live", headers=sent)
        try:
            assert resp.status == 200
            rid = sent.get("X-Request-ID") or resp.headers.get("X-Request-ID", "")
            assert re.fullmatch(r"probe-live|[0-9a-f]{32}", rid) and carried(resp, rid)["RateLimit-Remaining"] == "98"
        finally:
            resp.close()
    resp = await client.post("/dashboard/logout", allow_redirects=False, headers={"X-Request-ID": "probe-logout"},
                             data={"csrf": await page_csrf(client)})
    assert resp.status == 303 and carried(resp, "probe-logout")["RateLimit-Remaining"] == "98"


def _multipart(boundary: str, *parts: tuple[str, str, str]) -> bytes:
    """A multipart body of ``(name, extra Content-Disposition, value)`` parts, its boundary ``boundary``."""
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n{value}\r\n'.encode()
                    for name, extra, value in parts)
    return body + f"--{boundary}--\r\n".encode()


async def test_a_login_form_that_cannot_be_read_is_a_400_naming_its_field(start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack()
    await stack.login("olga", ["operator"])
    client = stack.gateway
    form = await client.get("/dashboard/login")
    csrf = LOGIN_CSRF.search(await form.text())
    assert csrf is not None
    good = f"password={PASSWORD}&csrf={csrf.group(1)}".encode()
    urlencoded = "application/x-www-form-urlencoded"
    cases = [
        (urlencoded, b"username=\xff\xfe&" + good, "username: not utf-8 text: byte 0xff at 9"),
        (urlencoded, b"username=%FF&" + good, "username: a percent-escape that is not utf-8 text"),
        (urlencoded + "; charset=bogus", b"username=olga&" + good, "Content-Type: unknown charset bogus"),
        ("multipart/form-data", _multipart("b", ("username", "", "olga")), "Content-Type: multipart/form-data "
                                                                           "needs a boundary"),
        ("multipart/form-data; boundary=other", _multipart("b", ("username", "", "olga")),
         "body: Could not find starting boundary"),
        ("multipart/form-data; boundary=b", _multipart("b", ("username", "", "olga"), ("csrf", "", csrf.group(1)),
                                                       ("password", '; filename="p.txt"', PASSWORD)),
         "password: a text field, not a file"),
    ]
    for content_type, body, reason in cases:
        resp = await client.post("/dashboard/login", data=body, headers={"Content-Type": content_type},
                                 allow_redirects=False)
        text = await resp.text()
        assert resp.status == 400, (content_type, body, text)
        assert resp.content_type == "text/html" and "Conveyor dashboard" in text  # the form again
        assert "The form could not be read (" + html.escape(reason) in text, (reason, text)
        assert "conveyor_session" not in resp.cookies
    # The same form, readable, logs in: in either encoding.
    resp = await client.post("/dashboard/login", data=_multipart(
        "b", ("username", "", "olga"), ("csrf", "", csrf.group(1)), ("password", "", PASSWORD)),
        headers={"Content-Type": "multipart/form-data; boundary=b"}, allow_redirects=False)
    assert resp.status == 303, await resp.text()


async def test_a_logout_form_that_cannot_be_read_is_a_400_naming_its_field(start_stack: StartStack) -> None:  # noqa: F811
    stack = await start_stack()
    await stack.login("olga", ["operator"])
    client = stack.gateway
    assert (await log_in(client, "olga")).status == 303
    csrf = await page_csrf(client)
    urlencoded = "application/x-www-form-urlencoded"
    for content_type, body, detail in (
            (urlencoded, b"csrf=\xff", {"field": "csrf", "message": "not utf-8 text: byte 0xff at 5"}),
            (urlencoded + "; charset=bogus", f"csrf={csrf}".encode(),
             {"field": "Content-Type", "message": "unknown charset bogus"}),
            ("multipart/form-data", b"csrf=x", {"field": "Content-Type",
                                                "message": "multipart/form-data needs a boundary"})):
        resp = await client.post("/dashboard/logout", data=body, headers={"Content-Type": content_type},
                                 allow_redirects=False)
        assert resp.status == 400, (content_type, body, await resp.text())
        assert await resp.json() == {"error": "malformed form", "details": [detail]}
    assert (await client.get("/dashboard/api/queues")).status == 200  # still logged in
    resp = await client.post("/dashboard/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.cookies["conveyor_session"].value == ""


async def raw_exchange(client: TestClient, request: str) -> bytes:
    """Send ``request`` (one or more requests, the last with ``Connection: close``) on one connection, bytes
    as written, and read every answer to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(request.encode())
    try:
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


async def test_a_head_of_the_live_feed_ends_with_its_headers(start_stack: StartStack) -> None:  # noqa: F811
    """A HEAD of the live feed is its headers: it streamed a body that never ended, and the next request on
    the connection read snapshots instead of its answer."""
    stack = await start_stack()
    await stack.login("olga", ["operator"])
    client = stack.gateway
    session = (await log_in(client, "olga")).cookies["conveyor_session"].value
    answer = await raw_exchange(client, (
        f"HEAD /dashboard/live HTTP/1.1\r\nHost: t\r\nCookie: conveyor_session={session}\r\n\r\n"
        "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head, head
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:120]  # the health answer, right after the headers
    assert b"event:" not in answer and rest.rstrip().endswith(b"}")


async def test_a_percent_encoded_prefix_relays_where_the_plain_one_does(start_stack: StartStack) -> None:  # noqa: F811
    """``/dashboard/ap%69/queues`` is ``/dashboard/api/queues`` (RFC 3986: the same characters): it was
    relayed as ``/69/queues``, a 404. The rest of the path keeps its own encoding."""
    stack = await start_stack()
    await stack.login("olga", ["operator"])
    client = stack.gateway
    session = (await log_in(client, "olga")).cookies["conveyor_session"].value
    answers = []
    for path in ("/dashboard/api/queues", "/dashboard/ap%69/queues", "/%64ashboard/api/qu%65ues?limit=5"):
        answer = await raw_exchange(client, (
            f"GET {path} HTTP/1.1\r\nHost: t\r\nCookie: conveyor_session={session}\r\nConnection: close\r\n\r\n"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), (path, head[:80], body[:200])
        answers.append(set(orjson.loads(body)))
    assert answers[0] == answers[1] == answers[2] == {"items", "next_cursor"}


async def test_a_revoked_session_is_told_by_its_cookie(start_stack: StartStack) -> None:  # noqa: F811
    """A session whose token was revoked (the operator's password changed) is a 401 naming the session
    cookie, which is what the console sent: it named the ``Authorization`` header, which it never sent. The
    page itself sends the browser to the login form, and forgets the cookie."""
    stack = await start_stack(revocation_s=0)
    await stack.login("olga", ["operator"])
    client = stack.gateway
    await log_in(client, "olga")
    assert (await client.get("/dashboard/api/queues")).status == 200
    async with client.session.put(stack.registry_url + "/users/olga/password", headers={"X-Service-Token": TOKEN},
                                  json={"password": "another one!"}) as resp:
        assert resp.status == 204, await resp.text()
    resp = await client.get("/dashboard/api/queues")
    assert resp.status == 401
    body = await resp.json()
    assert body["details"] == [{"field": "conveyor_session", "message": "revoked"}], body
    assert "log in to the dashboard again" in body["error"]
    page = await client.get("/dashboard", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"] == "/dashboard/login"
    assert page.cookies["conveyor_session"].value == ""
