"""The gateway's token checks on their own: a verified token is kept, and what keeping it must not change.
The revocation of a kept token through the real registry is test_identity's."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from gateway import auth as auth_module
from gateway.auth import Authenticator
from gateway.epochs import EpochCache
from shared.errors import Unauthorized

SECRET = "s" * 40


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def token(user_id: str, *, ttl_s: int = 60, epoch: int = 1, roles: list[str] | None = None,
          secret: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "name": "alice", "ep": epoch, "roles": roles or ["user"], "perms": [],
                       "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")


async def refusal(auth: Authenticator, value: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        await auth.identify("Bearer " + value)
    return caught.value.details[0]["message"]


async def test_a_kept_token_still_expires() -> None:
    clock = Clock()
    auth = Authenticator(SECRET, ttl_s=60, required=True, clock=clock)
    user = str(uuid.uuid4())
    kept = token(user, ttl_s=30)
    assert (await auth.identify("Bearer " + kept)).user_id == user
    clock.now += 29
    assert (await auth.identify("Bearer " + kept)).user_id == user  # from what was kept
    clock.now += 2
    assert await refusal(auth, kept) == "expired"
    assert kept not in auth._verified


async def test_only_the_same_text_is_taken_from_what_was_kept() -> None:
    auth = Authenticator(SECRET, ttl_s=60, required=True)
    user = str(uuid.uuid4())
    good = token(user, roles=["user"])
    assert (await auth.identify("Bearer " + good)).roles == ("user",)
    # The same claims (an operator's role aside) signed with another secret, and the good header and
    # payload with a signature that is not theirs: both are checked, and both fail.
    forged = token(user, roles=["operator"], secret="x" * 40)
    assert await refusal(auth, forged) == "invalid"
    head, payload, _ = good.split(".")
    assert await refusal(auth, f"{head}.{payload}.{forged.split('.')[2]}") == "invalid"
    assert (await auth.identify("Bearer " + good)).roles == ("user",)


async def test_a_kept_tokens_epoch_is_still_asked() -> None:
    epochs: dict[str, int | None] = {}

    async def fetch(user_id: str) -> int | None:
        return epochs.get(user_id)

    auth = Authenticator(SECRET, ttl_s=60, required=True, epochs=EpochCache(ttl_s=0, max_users=10, fetch=fetch))
    user = str(uuid.uuid4())
    epochs[user] = 1
    kept = token(user, epoch=1)
    assert (await auth.identify("Bearer " + kept)).user_id == user
    epochs[user] = 2  # the password changed
    assert await refusal(auth, kept) == "revoked"
    epochs[user] = None  # the user was removed
    assert await refusal(auth, kept) == "revoked"


async def test_what_is_kept_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_module, "VERIFIED_TOKENS", 3)
    auth = Authenticator(SECRET, ttl_s=60, required=True)
    users = [str(uuid.uuid4()) for _ in range(5)]
    tokens = [token(user) for user in users]
    for user, value in zip(users, tokens, strict=True):
        assert (await auth.identify("Bearer " + value)).user_id == user
    assert list(auth._verified) == tokens[2:]  # the oldest went first
    assert (await auth.identify("Bearer " + tokens[0])).user_id == users[0]  # checked again, kept again
    assert list(auth._verified) == [*tokens[3:], tokens[0]]


async def test_nothing_that_failed_is_kept() -> None:
    auth = Authenticator(SECRET, ttl_s=60, required=True)
    bad_claims = jwt.encode({"sub": "not a uuid", "name": "alice", "ep": 1, "roles": ["user"],
                             "iat": int(time.time()), "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    expired = token(str(uuid.uuid4()), ttl_s=-10)
    for value, message in ((bad_claims, "invalid claims"), (expired, "expired"), ("not.a.jwt", "invalid")):
        assert await refusal(auth, value) == message
    assert auth._verified == {}
