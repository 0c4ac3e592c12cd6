"""Who is calling: signed, expiring tokens (JWT, HS256) issued at ``POST /auth/token`` and checked on
every request, and the identity the gateway passes on to the receptionists.

A client names itself only through its token: whatever identity headers it sends are dropped (see
:mod:`gateway.proxy`). With ``auth = optional`` a request without a token comes in as the shared
anonymous user; with ``required`` it is a 401. A bad or expired token is a 401 in both modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jwt

from shared.api import Role
from shared.errors import Unauthorized

ANONYMOUS = "anonymous"
_ALGORITHM = "HS256"
#: The most privileged role names the rate a caller gets.
_ROLE_RANK = {Role.ADMIN.value: 3, Role.OPERATOR.value: 2, Role.USER.value: 1}


@dataclass(frozen=True)
class Identity:
    username: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...] = field(default_factory=tuple)
    anonymous: bool = False

    @property
    def top_role(self) -> str:
        known = [role for role in self.roles if role in _ROLE_RANK]
        return max(known, key=_ROLE_RANK.__getitem__, default=Role.USER.value)


ANONYMOUS_IDENTITY = Identity(ANONYMOUS, (Role.USER.value,), anonymous=True)


class Authenticator:
    def __init__(self, secret: str, *, ttl_s: float, required: bool) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 characters")
        self._secret = secret
        self.ttl_s = ttl_s
        self.required = required

    def issue(self, username: str, roles: list[str], permissions: list[str]) -> str:
        now = int(time.time())
        claims = {"sub": username, "roles": roles, "perms": permissions, "iat": now, "exp": now + int(self.ttl_s)}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def identify(self, authorization: str | None) -> Identity:
        """The caller of a request with this ``Authorization`` header; raises :class:`Unauthorized`."""
        if not authorization:
            if self.required:
                raise Unauthorized("a bearer token is required: get one at POST /auth/token",
                                   [{"field": "Authorization", "message": "missing"}])
            return ANONYMOUS_IDENTITY
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected 'Authorization: Bearer <token>'",
                               [{"field": "Authorization", "message": "not a bearer token"}])
        try:
            claims = jwt.decode(token.strip(), self._secret, algorithms=[_ALGORITHM],
                                options={"require": ["sub", "exp", "iat"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired: get a new one at POST /auth/token",
                               [{"field": "Authorization", "message": "expired"}]) from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token", [{"field": "Authorization", "message": "invalid"}]) from None
        roles = claims.get("roles")
        permissions = claims.get("perms", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or not isinstance(
                permissions, list) or not isinstance(claims["sub"], str):
            raise Unauthorized("invalid token", [{"field": "Authorization", "message": "invalid claims"}])
        return Identity(claims["sub"], tuple(roles), tuple(str(p) for p in permissions))
