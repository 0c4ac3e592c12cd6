"""The logging service's HTTP API: ingest, query with each filter, errors, health, status, retention; the
API tests run on every store backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from loguru import logger
from pydantic import ValidationError

from logging_service.app import STORE, create_app
from logging_service.settings import Settings

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

Client = Callable[..., Awaitable[TestClient]]


def rec(offset_s: float, message: str, *, service: str = "worker", level: str = "info",
        at: datetime = T0, **meta: Any) -> dict[str, Any]:
    return {"timestamp": (at + timedelta(seconds=offset_s)).isoformat(), "service": service, "level": level,
            "message": message, "meta": meta}


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


BACKENDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of each backend; a test takes it before ``aiohttp_client``, so that its PostgreSQL schema
    outlives the app (whose last flush of its own lines writes there)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/logs.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def client(store_url: str, aiohttp_client: Client) -> TestClient:
    return await aiohttp_client(create_app(Settings(store_url=store_url)))


async def get_messages(client: TestClient, **params: Any) -> list[str]:
    resp = await client.get("/logs", params=params)
    assert resp.status == 200, await resp.text()
    return [item["message"] for item in (await resp.json())["items"]]


async def post(client: TestClient, body: Any) -> tuple[int, Any]:
    resp = await client.post("/logs", json=body)
    return resp.status, await resp.json()


SAMPLE = [
    rec(0, "a", service="api", level="info", job_id="j1", request_id="r1"),
    rec(1, "b", service="worker", level="ERROR", job_id="j1"),
    rec(2, "c", service="worker", level="debug", job_id="j2", request_id="r1"),
    rec(3, "d", service="api", level="warning", request_id="r2"),
    rec(4, "e", service="worker", level="success"),
]


async def test_post_then_get_newest_first(client: TestClient) -> None:
    assert await post(client, SAMPLE[:3]) == (202, {"accepted": 3})
    assert await post(client, {"records": SAMPLE[3:]}) == (202, {"accepted": 2})
    resp = await client.get("/logs")
    items = (await resp.json())["items"]
    assert [i["message"] for i in items] == ["e", "d", "c", "b", "a"]
    assert items[2] == {"timestamp": "2030-01-01T12:00:02Z", "service": "worker", "level": "debug",
                        "message": "c", "meta": {"job_id": "j2", "request_id": "r1"}}
    assert items[3]["level"] == "error"  # levels are stored lower case


async def test_each_filter(client: TestClient) -> None:
    await post(client, SAMPLE)
    assert await get_messages(client, service="api") == ["d", "a"]
    assert await get_messages(client, level="error") == ["b"]
    assert await get_messages(client, level="ERROR") == ["b"]
    assert await get_messages(client, min_level="success") == ["e", "d", "b"]
    assert await get_messages(client, min_level="warning", service="api") == ["d"]
    assert await get_messages(client, min_level="warning", level="info") == []
    assert await get_messages(client, job_id="j1") == ["b", "a"]
    assert await get_messages(client, request_id="r1") == ["c", "a"]
    assert await get_messages(client, since=(T0 + timedelta(seconds=1)).isoformat(),
                              until=(T0 + timedelta(seconds=3)).isoformat()) == ["c", "b"]
    assert await get_messages(client, since="2030-01-01T12:00:03") == ["e", "d"]  # naive: UTC
    assert await get_messages(client, limit=2) == ["e", "d"]
    assert await get_messages(client, q="A") == ["a"]  # the message, in any case
    assert await get_messages(client, q="b", job_id="j1") == ["b"]


async def test_after_seq_answers_in_arrival_order_with_sequence_numbers(client: TestClient) -> None:
    await post(client, [rec(5, "same time: first"), rec(5, "same time: second")])
    await post(client, [rec(1, "late, older")])
    resp = await client.get("/logs", params={"service": "worker", "after_seq": "0"})
    page = await resp.json()
    assert [i["message"] for i in page["items"]] == ["late, older", "same time: second", "same time: first"]
    seqs = [i["seq"] for i in page["items"]]
    assert seqs == sorted(set(seqs), reverse=True) and page["last_seq"] >= seqs[0]
    resp = await client.get("/logs", params={"service": "worker", "after_seq": str(seqs[-1]), "limit": "1"})
    assert [i["message"] for i in (await resp.json())["items"]] == ["late, older"]
    assert "seq" not in (await (await client.get("/logs")).json())["items"][0]  # only when asked for


@pytest.mark.parametrize("value", ["-1", "x", str(2**63)])
async def test_a_bad_after_seq_is_400(client: TestClient, value: str) -> None:
    resp = await client.get("/logs", params={"after_seq": value})
    assert resp.status == 400
    assert [d["field"] for d in (await resp.json())["details"]] == ["after_seq"]


async def test_limit_defaults_to_100(client: TestClient) -> None:
    await post(client, [rec(i, str(i)) for i in range(150)])
    got = await get_messages(client)
    assert len(got) == 100 and got[0] == "149"
    assert len(await get_messages(client, limit=5000)) == 150


async def test_invalid_records_refuse_the_whole_batch_with_details(client: TestClient) -> None:
    bad = [rec(0, "ok"), {"service": "api", "level": "info", "message": "no time"}, {**rec(0, "x"), "level": ""}]
    status, body = await post(client, bad)
    assert status == 400
    fields = {d["field"] for d in body["details"]}
    assert fields == {"1.timestamp", "2.level"}
    status, body = await post(client, {"records": [{**rec(0, "x"), "service": 5}]})
    assert status == 400 and body["details"][0]["field"] == "0.service"
    assert await get_messages(client) == []
    resp = await client.get("/status")
    stats = await resp.json()
    assert (stats["records_stored"], stats["batches_received"], stats["records_rejected"]) == (0, 0, 4)


@pytest.mark.parametrize("body", [{"items": []}, 42, "text", {"records": {"a": 1}}])
async def test_a_body_that_is_not_a_batch_is_400(client: TestClient, body: Any) -> None:
    status, answer = await post(client, body)
    assert status == 400
    assert answer["details"][0]["field"] == "body"


async def test_malformed_json_is_400(client: TestClient) -> None:
    resp = await client.post("/logs", data=b"[{", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "malformed JSON"


async def test_a_batch_over_max_batch_is_refused(aiohttp_client: Client) -> None:
    client = await aiohttp_client(create_app(Settings(store_url="memory://", max_batch=3)))
    status, body = await post(client, [rec(i, str(i)) for i in range(4)])
    assert status == 413 and "at most 3" in body["details"][0]["message"]
    assert await post(client, [rec(i, str(i)) for i in range(3)]) == (202, {"accepted": 3})


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": "0"}, "limit"),
    ({"limit": "5001"}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"min_level": "loud"}, "min_level"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2030-13-01"}, "until"),
    ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "since"),
    ({"service": ""}, "service"),
    ({"servce": "api"}, "servce"),
    ({"q": ""}, "q"),
    ({"q": "x" * 201}, "q"),
    ({"q": "a\x00b"}, "q"),
])
async def test_bad_query_values_are_400_with_details(client: TestClient, params: dict[str, str],
                                                     field: str) -> None:
    resp = await client.get("/logs", params=params)
    assert resp.status == 400
    body = await resp.json()
    assert [d["field"] for d in body["details"]] == [field]


async def test_unknown_route_and_method_answer_json(client: TestClient) -> None:
    resp = await client.delete("/logs")
    assert resp.status == 405
    assert resp.headers["Allow"]
    assert (await resp.json())["error"] == "method not allowed"
    resp = await client.get("/nowhere")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not found"


async def test_health_makes_a_round_trip_to_the_store(client: TestClient) -> None:
    resp = await client.get("/health")
    assert resp.status == 200 and (await resp.json())["checks"] == {"store": "ok"}
    await client.app[STORE].close()  # type: ignore[union-attr]  # the store is gone: health says so
    resp = await client.get("/health")
    assert resp.status == 503, await resp.text()


async def test_health_and_status_over_sqlite(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(Settings(store_url=f"sqlite:///{tmp_path}/logs.db")))
    resp = await client.get("/health")
    assert resp.status == 200 and (await resp.json())["checks"] == {"store": "ok"}
    await post(client, SAMPLE)
    await post(client, [rec(9, "z")])
    assert await get_messages(client, job_id="j1", min_level="info") == ["b", "a"]
    stats = await (await client.get("/status")).json()
    assert stats["records_stored"] >= 6  # and the service's own lines, if it logged any
    assert (stats["batches_received"], stats["records_accepted"], stats["records_rejected"]) == (2, 6, 0)


async def test_own_logs_go_to_the_store_not_over_http(aiohttp_client: Client) -> None:
    # A log_url pointing anywhere must not make the service ship to it: no shipper runs.
    settings = Settings(store_url="memory://", log_url="http://127.0.0.1:9")
    client = await aiohttp_client(create_app(settings))
    logger.bind(job_id="own-1").warning("said by the logging service")

    async def stored() -> bool:
        return await get_messages(client, service="logging_service", job_id="own-1") == [
            "said by the logging service"]

    await eventually(stored)
    status = await (await client.get("/status")).json()
    assert "log_shipping" not in status
    assert status["own_logs"]["stored"] >= 1


async def test_a_time_outside_the_calendar_in_utc_is_refused(client: TestClient) -> None:
    # Both are valid RFC 3339, but in UTC they fall in year 10000 and year 0, which no store can keep.
    late, early = "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"
    status, body = await post(client, [rec(0, "ok"), {**rec(0, "late"), "timestamp": late},
                                       {**rec(0, "early"), "timestamp": early}])
    assert status == 400
    assert [d["field"] for d in body["details"]] == ["1.timestamp", "2.timestamp"]
    for field, value in (("since", late), ("until", early)):
        resp = await client.get("/logs", params={field: value})
        assert resp.status == 400
        assert [d["field"] for d in (await resp.json())["details"]] == [field]
    assert await post(client, [{**rec(0, "edge"), "timestamp": "9999-12-31T23:59:59Z"}]) == (202, {"accepted": 1})
    assert await get_messages(client, since="9999-12-31T00:00:00Z") == ["edge"]


async def test_an_own_line_with_nul_is_dropped_alone(client: TestClient) -> None:
    # A database store would refuse the whole batch for it; the sink drops that line only, and counts it.
    logger.bind(job_id="own-nul").warning("bad\x00line")
    logger.bind(job_id="own-nul").warning("good line")

    async def stored() -> bool:
        return await get_messages(client, job_id="own-nul") == ["good line"]

    await eventually(stored)
    assert (await (await client.get("/status")).json())["own_logs"]["dropped"] >= 1


async def test_retention_deletes_old_records(store_url: str, aiohttp_client: Client) -> None:
    settings = Settings(store_url=store_url, retention_days=1, retention_check_s=0.05)
    client = await aiohttp_client(create_app(settings))
    now = datetime.now(timezone.utc)
    await post(client, [rec(0, "old", at=now - timedelta(days=2)), rec(0, "fresh", at=now)])

    async def swept() -> bool:
        return await get_messages(client, service="worker") == ["fresh"]

    await eventually(swept)


async def test_retention_keeps_the_newest_rows(store_url: str, aiohttp_client: Client) -> None:
    # The service's own lines (stamped now) are older than these (2030), so the sweep takes them first.
    settings = Settings(store_url=store_url, retention_rows=3, retention_check_s=0.05)
    client = await aiohttp_client(create_app(settings))
    await post(client, [rec(i, str(i)) for i in range(6)])

    async def swept() -> bool:
        stats = await (await client.get("/status")).json()
        return stats["records_stored"] <= 3

    await eventually(swept)
    assert await get_messages(client, service="worker") == ["5", "4", "3"]


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGGING_RETENTION_DAYS", "0")
    monkeypatch.setenv("LOGGING_RETENTION_ROWS", "1000000")
    settings = Settings()
    assert (settings.retention_days, settings.retention_rows) == (0, 1_000_000)
    assert (Settings().retention_days, Settings(retention_days=7).retention_rows) == (0, 1_000_000)
    monkeypatch.delenv("LOGGING_RETENTION_DAYS")
    monkeypatch.delenv("LOGGING_RETENTION_ROWS")
    assert (Settings().retention_days, Settings().retention_rows) == (7, 0)  # a week by default, no row cap


@pytest.mark.parametrize("limits", [{"retention_days": 0, "retention_rows": 0}, {"retention_rows": -1},
                                    {"retention_days": -1}])
def test_retention_that_keeps_everything_forever_is_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="retention"):
        Settings(**limits)


async def test_nul_characters_are_refused_with_their_field(client: TestClient) -> None:
    # PostgreSQL text cannot hold NUL: every backend refuses it, by name, rather than store it on some only.
    status, body = await post(client, [rec(0, "ok"), rec(1, "bad\u0000"), rec(2, "ok", job_id="j\u0000")])
    assert status == 400
    assert [d["field"] for d in body["details"]] == ["1.message", "2.meta.job_id"]
    status, _ = await post(client, [rec(0, "kept", note="a\u0000b")])  # other meta is JSON text: kept whole
    assert status == 202
    resp = await client.get("/logs")
    assert [(i["message"], i["meta"]) for i in (await resp.json())["items"]] == [("kept", {"note": "a\u0000b"})]
    for field in ("service", "job_id", "request_id", "level"):
        resp = await client.get("/logs", params={field: "x\u0000"})
        assert resp.status == 400
        assert [d["field"] for d in (await resp.json())["details"]] == [field]
