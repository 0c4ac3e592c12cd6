"""The registry store contract for service instances: one suite, run against every backend (memory, SQLite
file, PostgreSQL) through the ``store`` fixture of ``conftest.py``."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from registry.store import JobStore, store_from_url
from shared.instances import Instance, InstanceKind

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def instance(name: str = "receptionist-1", kind: InstanceKind = InstanceKind.RECEPTIONIST, **overrides: Any
             ) -> Instance:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(), "name": name, "kind": kind, "url": "http://192.0.2.1:8081", "version": "0.1.0",
        "started_at": at(0), "heartbeat_s": 2.0, "status": {"in_flight": 3}, "last_seen": at(1)}
    fields.update(overrides)
    return Instance(**fields)


async def test_an_instance_is_kept_as_it_was_put(store: JobStore) -> None:
    handler = instance("handler-1", InstanceKind.HANDLER, url="https://[2001:db8::1]:8100", heartbeat_s=0.25,
                       status={"running": 2, "slots": 16, "queues": ["export", "task"], "nested": {"a": [1, None]},
                               "ratio": 0.5, "idle": False, "note": "ünïcode ✓"},
                       started_at=datetime(2030, 1, 1, 3, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))))
    await store.put_instance(handler)
    (got,) = await store.list_instances()
    assert got.model_dump() == handler.model_dump()
    assert got.kind is InstanceKind.HANDLER
    assert got.started_at == handler.started_at and got.started_at.utcoffset() is not None


async def test_a_heartbeat_replaces_every_field_of_its_instance(store: JobStore) -> None:
    first = instance(status={"in_flight": 1, "gone_key": True})
    await store.put_instance(first)
    later = first.model_copy(update={"name": "receptionist-9", "url": "http://192.0.2.2:9000", "version": "0.2.0",
                                     "heartbeat_s": 5.0, "status": {"in_flight": 7}, "last_seen": at(30)})
    await store.put_instance(later)
    assert [i.model_dump() for i in await store.list_instances()] == [later.model_dump()]


async def test_the_list_is_by_kind_then_name_then_id_in_code_point_order(store: JobStore) -> None:
    made = [instance("receptionist-2"), instance("Receptionist-3"), instance("receptionist-1"),
            instance("handler-1", InstanceKind.HANDLER), instance("registry", InstanceKind.REGISTRY),
            instance("gateway", InstanceKind.GATEWAY), instance("receptionist-1")]
    for one in made:
        await store.put_instance(one)
    listed = await store.list_instances()
    expected = sorted(made, key=lambda i: (i.kind.value, i.name, str(i.id)))
    assert [i.id for i in listed] == [i.id for i in expected]
    assert [i.name for i in listed][:3] == ["gateway", "handler-1", "Receptionist-3"]  # "R" before "r"
    receptionists = await store.list_instances(kind=InstanceKind.RECEPTIONIST)
    assert [i.id for i in receptionists] == [i.id for i in expected if i.kind == InstanceKind.RECEPTIONIST]
    assert await store.list_instances(kind=InstanceKind.SCHEDULER) == []


async def test_delete_removes_one_instance(store: JobStore) -> None:
    one, two = instance(), instance("receptionist-2")
    await store.put_instance(one)
    await store.put_instance(two)
    assert await store.delete_instance(one.id)
    assert not await store.delete_instance(one.id)
    assert not await store.delete_instance(uuid.uuid4())
    assert [i.id for i in await store.list_instances()] == [two.id]


async def test_drop_removes_the_instances_last_seen_before_a_moment(store: JobStore) -> None:
    old, edge, fresh = instance(last_seen=at(10)), instance(last_seen=at(20)), instance(last_seen=at(30))
    for one in (old, edge, fresh):
        await store.put_instance(one)
    assert await store.drop_instances(at(20)) == 1  # strictly before: the one seen at 20 stays
    assert {i.id for i in await store.list_instances()} == {edge.id, fresh.id}
    assert await store.drop_instances(at(20)) == 0
    assert await store.drop_instances(at(31)) == 2
    assert await store.list_instances() == []


async def test_instances_survive_a_reopen(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    for url in (f"sqlite:///{tmp_path}/registry.db", request.getfixturevalue("postgres_url")):
        kept = instance()
        first = store_from_url(url)
        await first.open()
        try:
            await first.put_instance(kept)
        finally:
            await first.close()
        again = store_from_url(url)
        await again.open()
        try:
            assert [i.model_dump() for i in await again.list_instances()] == [kept.model_dump()]
        finally:
            await again.close()


@pytest.mark.parametrize(("field", "value"), [
    ("url", "ftp://192.0.2.1"), ("url", "http://"), ("url", "http://h:99999"), ("url", "http://h?x=1"),
    ("name", ""), ("name", "a\x00b"), ("name", "line\nbreak"), ("version", ""), ("heartbeat_s", 0),
    ("started_at", datetime(2030, 1, 1)), ("status", {"note": "a\x00b"}), ("status", {"a\x00": 1}),
    ("status", {"big": "x" * 5000}), ("kind", "worker"),
])
def test_what_no_backend_could_keep_alike_is_refused_before_any_store(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        instance(**{field: value})
