"""The registry store contract for users: one suite, run against every backend (memory, SQLite file,
PostgreSQL) through the ``store`` fixture of ``conftest.py``."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from registry.store import JobStore, StoredUser, store_from_url
from shared.api import Role

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def user(username: str = "alice", **overrides: Any) -> StoredUser:
    # The store keeps whatever hash it is given; a real scrypt hash would only slow the suite down.
    fields: dict[str, Any] = {"id": uuid.uuid4(), "username": username, "password_hash": f"hash-of-{username}",
                              "roles": [Role.USER], "permissions": [], "created_at": T0, "updated_at": T0}
    fields.update(overrides)
    return StoredUser(**fields)


async def test_create_then_get(store: JobStore) -> None:
    alice = user(roles=[Role.OPERATOR, Role.ADMIN], permissions=["export", "redrive"], created_at=at(1),
                 updated_at=at(2))
    assert await store.create_user(alice)
    got = await store.get_user("alice")
    assert got is not None and got.model_dump() == alice.model_dump()
    assert got.roles == [Role.OPERATOR, Role.ADMIN]  # order kept, values are Roles again
    assert isinstance(got.roles[0], Role)
    assert await store.get_user("bob") is None


async def test_duplicate_username_is_refused_and_changes_nothing(store: JobStore) -> None:
    first = user(password_hash="first")
    assert await store.create_user(first)
    assert not await store.create_user(user(password_hash="second", roles=[Role.ADMIN], created_at=at(5)))
    assert (await store.get_user("alice")).model_dump() == first.model_dump()
    assert await store.count_users() == 1


async def test_usernames_are_case_sensitive(store: JobStore) -> None:
    assert await store.create_user(user("alice", password_hash="lower"))
    assert await store.create_user(user("Alice", password_hash="upper"))
    assert (await store.get_user("alice")).password_hash == "lower"
    assert (await store.get_user("Alice")).password_hash == "upper"
    assert await store.get_user("ALICE") is None
    assert await store.delete_user("Alice")
    assert (await store.get_user("alice")).password_hash == "lower"


async def test_list_is_in_code_point_order(store: JobStore) -> None:
    assert await store.list_users() == []
    names = ["bob", "Zed", "alice", "a.b", "Bob", "alice2", "a-b", "0day", "a_b", "a@b"]
    made = {name: user(name, created_at=at(i), updated_at=at(i)) for i, name in enumerate(names)}
    for made_user in made.values():
        assert await store.create_user(made_user)
    listed = await store.list_users()
    assert [u.username for u in listed] == sorted(names)
    assert [u.username for u in listed][:5] == ["0day", "Bob", "Zed", "a-b", "a.b"]
    assert {u.username: u.model_dump() for u in listed} == {name: u.model_dump() for name, u in made.items()}
    assert await store.count_users() == len(names)


async def test_delete(store: JobStore) -> None:
    assert await store.create_user(user("alice"))
    assert await store.create_user(user("bob"))
    assert await store.delete_user("alice")
    assert await store.get_user("alice") is None
    assert not await store.delete_user("alice")
    assert not await store.delete_user("nobody")
    assert [u.username for u in await store.list_users()] == ["bob"]
    assert await store.count_users() == 1
    # The name is free again.
    assert await store.create_user(user("alice", password_hash="new"))
    assert (await store.get_user("alice")).password_hash == "new"


async def test_set_password(store: JobStore) -> None:
    alice = user(roles=[Role.OPERATOR], permissions=["export"])
    assert await store.create_user(alice)
    assert await store.create_user(user("bob"))
    assert await store.set_password("alice", "changed", at(30))
    got = await store.get_user("alice")
    assert (got.password_hash, got.updated_at, got.epoch) == ("changed", at(30), 2)
    assert got.model_dump(exclude={"password_hash", "updated_at", "epoch"}) == alice.model_dump(
        exclude={"password_hash", "updated_at", "epoch"})
    assert (await store.get_user("bob")).epoch == 1
    assert (await store.get_user("bob")).password_hash == "hash-of-bob"
    assert not await store.set_password("nobody", "x", at(31))
    assert await store.get_user("nobody") is None


async def test_a_returned_user_is_a_copy(store: JobStore) -> None:
    assert await store.create_user(user(permissions=["export"]))
    got = await store.get_user("alice")
    got.permissions.append("everything")
    got.roles.append(Role.ADMIN)
    [listed] = await store.list_users()
    listed.roles.clear()
    again = await store.get_user("alice")
    assert (again.roles, again.permissions) == ([Role.USER], ["export"])


async def test_concurrent_creates_of_one_username_register_once(store: JobStore) -> None:
    outcomes = await asyncio.gather(*(store.create_user(user(password_hash=f"h{i}")) for i in range(20)))
    assert sum(outcomes) == 1
    winner = outcomes.index(True)
    assert (await store.get_user("alice")).password_hash == f"h{winner}"


async def test_users_and_jobs_do_not_mix(store: JobStore) -> None:
    assert await store.create_user(user())
    assert (await store.list()).items == []
    assert sum((await store.count_by_state()).values()) == 0
    assert await store.events() == []


async def test_sqlite_users_survive_a_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/registry.db"
    first = store_from_url(url)
    await first.open()
    alice = user(roles=[Role.ADMIN], permissions=["export"], created_at=at(1), updated_at=at(1))
    assert await first.create_user(alice)
    assert await first.set_password("alice", "changed", at(2))
    assert await first.set_roles("alice", [Role.USER, Role.ADMIN], at(3))
    await first.close()

    second = store_from_url(url)
    await second.open()
    try:
        kept = await second.get_user("alice")
        assert kept is not None
        assert kept.model_dump() == alice.model_copy(update={
            "password_hash": "changed", "updated_at": at(3), "epoch": 3, "roles": [Role.USER, Role.ADMIN]}).model_dump()
        assert (await second.get_user_by_id(alice.id)).model_dump() == kept.model_dump()
        assert not await second.create_user(user())
    finally:
        await second.close()


def test_stored_user_never_shows_its_hash() -> None:
    alice = user(password_hash="scrypt$16384$8$1$c2FsdA==$a2V5")
    assert "scrypt" not in repr(alice) and "scrypt" not in str(alice)
    public = alice.public().model_dump()
    assert public == {"id": alice.id, "username": "alice", "roles": [Role.USER], "permissions": [],
                      "created_at": T0}


async def test_users_are_found_by_their_stable_id(store: JobStore) -> None:
    alice = user("alice")
    assert await store.create_user(alice)
    assert (await store.get_user_by_id(alice.id)).model_dump() == alice.model_dump()
    assert await store.get_user_by_id(uuid.uuid4()) is None
    # An id is one user's: another name with the same id is refused, and nothing is written.
    assert not await store.create_user(user("bob", id=alice.id))
    assert await store.get_user("bob") is None and await store.count_users() == 1
    # A removed user's id is gone for good; a new user of the same name is someone else.
    assert await store.delete_user("alice")
    assert await store.get_user_by_id(alice.id) is None
    again = user("alice")
    assert await store.create_user(again)
    assert await store.get_user_by_id(alice.id) is None
    assert (await store.get_user_by_id(again.id)).username == "alice"


async def test_password_and_roles_changes_move_the_epoch_on(store: JobStore) -> None:
    alice = user("alice", roles=[Role.USER], permissions=["export"])
    assert await store.create_user(alice)
    assert await store.create_user(user("bob"))
    assert (await store.get_user("alice")).epoch == 1
    changed = await store.set_roles("alice", [Role.OPERATOR, Role.USER], at(10))
    assert changed is not None
    assert (changed.roles, changed.epoch, changed.updated_at) == ([Role.OPERATOR, Role.USER], 2, at(10))
    assert isinstance(changed.roles[0], Role)
    assert (await store.get_user("alice")).model_dump() == changed.model_dump()
    assert changed.model_dump(include={"id", "username", "permissions", "created_at", "password_hash"}) == \
        alice.model_dump(include={"id", "username", "permissions", "created_at", "password_hash"})
    assert await store.set_password("alice", "changed", at(11))
    assert (await store.get_user_by_id(alice.id)).epoch == 3
    assert (await store.get_user("bob")).epoch == 1  # nobody else's
    assert await store.set_roles("nobody", [Role.ADMIN], at(12)) is None
    assert await store.get_user("nobody") is None


async def test_concurrent_changes_each_move_the_epoch(store: JobStore) -> None:
    assert await store.create_user(user("alice"))
    await asyncio.gather(*(store.set_password("alice", f"h{i}", at(i)) for i in range(5)),
                         *(store.set_roles("alice", [Role.USER], at(i)) for i in range(5)))
    assert (await store.get_user("alice")).epoch == 11


async def test_a_name_no_user_can_have_is_nobody(store: JobStore) -> None:
    """A username with a NUL, which the API refuses to make, is asked for all the same by a login or in a
    route's path: every backend finds nobody, as for any unknown name (PostgreSQL's text cannot hold a
    NUL; asking it for one was a 500)."""
    assert await store.create_user(user("alice"))
    for name in ("alice\x00", "\x00", "a\x00lice"):
        assert await store.get_user(name) is None, repr(name)
        assert not await store.delete_user(name)
        assert not await store.set_password(name, "changed", at(1))
        assert await store.set_roles(name, [Role.ADMIN], at(1)) is None
    kept = await store.get_user("alice")
    assert kept is not None and (kept.password_hash, kept.roles, kept.epoch) == ("hash-of-alice", [Role.USER], 1)
