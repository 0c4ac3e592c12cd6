"""Who is calling: signed, expiring tokens (JWT, HS256) issued at ``POST /auth/token`` and checked on
every request, and the identity the gateway passes on to the receptionists.

A token's subject is the user's stable id (``sub``); it also carries the username for display (``name``),
the roles, the permissions and the user's token epoch (``ep``). A token counts while its epoch is the
user's current one (:mod:`gateway.epochs`): removing a user or changing their password or roles revokes
their older tokens.

A client names itself only through its token: whatever identity headers it sends are dropped (see
:mod:`gateway.proxy`). With ``auth = optional`` a request without a token comes in as the shared
anonymous user; with ``required`` it is a 401. A bad, expired or revoked token is a 401 in both modes.

Checking a token's signature and reading its claims costs about 40 µs on its own and added 110 to 280 µs
to a relayed request in the running gateway (the bench's gateway phase, ``signed_in``), more than the
rest of the relaying; and a client sends the same token with every request. So a token that passed is kept
(by its whole text, signature included: another text is checked afresh) with the identity it names and
its expiry, at most ``VERIFIED_TOKENS`` of them, the oldest dropped first. A kept token is still refused
once it expires, and its epoch is still asked of :mod:`gateway.epochs` on every request, so revoking it
works as before. Nothing that failed is kept.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt

from gateway.epochs import EpochCache
from shared.api import Role
from shared.errors import Unauthorized

ANONYMOUS = "anonymous"
_ALGORITHM = "HS256"
#: The most privileged role names the rate a caller gets.
_ROLE_RANK = {Role.ADMIN.value: 3, Role.OPERATOR.value: 2, Role.USER.value: 1}
_CLAIMS = ["sub", "name", "ep", "exp", "iat"]
#: Tokens kept once verified: a few hundred bytes each, so about a megabyte at most.
VERIFIED_TOKENS = 4096


@dataclass(frozen=True)
class Identity:
    """The caller: ``user_id`` is what their jobs belong to (the user's stable id, or ``anonymous``),
    ``username`` the name to show."""

    user_id: str
    username: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...] = field(default_factory=tuple)
    anonymous: bool = False

    @property
    def top_role(self) -> str:
        known = [role for role in self.roles if role in _ROLE_RANK]
        return max(known, key=_ROLE_RANK.__getitem__, default=Role.USER.value)


ANONYMOUS_IDENTITY = Identity(ANONYMOUS, ANONYMOUS, (Role.USER.value,), anonymous=True)


def _invalid(message: str) -> Unauthorized:
    return Unauthorized("invalid token", [{"field": "Authorization", "message": message}])


def _expired() -> Unauthorized:
    return Unauthorized("the token has expired: get a new one at POST /auth/token",
                        [{"field": "Authorization", "message": "expired"}])


class Authenticator:
    """Issues tokens and checks them; ``epochs`` tells which are revoked (None: none ever is)."""

    def __init__(self, secret: str, *, ttl_s: float, required: bool, epochs: EpochCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 characters")
        self._secret = secret
        self.ttl_s = ttl_s
        self.required = required
        self.epochs = epochs
        self._clock = clock
        #: Verified tokens: their identity, epoch and expiry (seconds since 1970).
        self._verified: dict[str, tuple[Identity, int, float]] = {}

    def issue(self, user_id: str, username: str, roles: list[str], permissions: list[str], epoch: int) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "name": username, "ep": epoch, "roles": roles, "perms": permissions,
                  "iat": now, "exp": now + int(self.ttl_s)}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    async def identify(self, authorization: str | None) -> Identity:
        """The caller of a request with this ``Authorization`` header; raises :class:`Unauthorized`."""
        if not authorization:
            if self.required:
                raise Unauthorized("a bearer token is required: get one at POST /auth/token",
                                   [{"field": "Authorization", "message": "missing"}])
            return ANONYMOUS_IDENTITY
        # aiohttp hands bytes that are not UTF-8 over as lone surrogates, which no encoder takes: refuse
        # anything but ASCII here, before the token library tries to encode it.
        if not authorization.isascii():
            raise Unauthorized("the Authorization header must be ASCII",
                               [{"field": "Authorization", "message": "not ASCII"}])
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected 'Authorization: Bearer <token>'",
                               [{"field": "Authorization", "message": "not a bearer token"}])
        identity, epoch = self._verify(token.strip())
        if self.epochs is not None and await self.epochs.current(identity.user_id) != epoch:
            raise Unauthorized("the token was revoked (the user was removed, or their password or roles "
                               "changed): get a new one at POST /auth/token",
                               [{"field": "Authorization", "message": "revoked"}])
        return identity

    def _verify(self, token: str) -> tuple[Identity, int]:
        """The identity and epoch ``token`` names, once its signature and claims pass and while it has not
        expired; raises :class:`Unauthorized` otherwise."""
        kept = self._verified.get(token)
        if kept is not None:
            identity, epoch, expires = kept
            if self._clock() < expires:  # as the token library judges ``exp``
                return identity, epoch
            del self._verified[token]
            raise _expired()
        try:
            claims = jwt.decode(token, self._secret, algorithms=[_ALGORITHM], options={"require": _CLAIMS})
        except jwt.ExpiredSignatureError:
            raise _expired() from None
        except jwt.InvalidTokenError:
            raise _invalid("invalid") from None
        identity, epoch = self._identity(claims)
        expires = claims["exp"]
        if isinstance(expires, int | float):
            if len(self._verified) >= VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (identity, epoch, float(expires))
        return identity, epoch

    @staticmethod
    def _identity(claims: dict[str, object]) -> tuple[Identity, int]:
        roles, permissions = claims.get("roles"), claims.get("perms", [])
        subject, name, epoch = claims["sub"], claims["name"], claims["ep"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or not isinstance(
                permissions, list) or not isinstance(name, str) or type(epoch) is not int:
            raise _invalid("invalid claims")
        try:
            user_id = str(uuid.UUID(str(subject)))
        except ValueError:
            raise _invalid("invalid claims") from None
        return Identity(user_id, name, tuple(roles), tuple(str(p) for p in permissions)), epoch
