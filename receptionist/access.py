"""Who is calling, and what they may do. The gateway names the caller in headers that only it can set
(receptionists refuse requests without the internal service token): ``X-Conveyor-User`` is the caller's
stable id, which their jobs belong to (``anonymous`` for a caller without a token), and
``X-Conveyor-Username`` their name, for display and logs.

- ``user`` submits jobs and reads and cancels their own; another user's job is a 404, as if it did not
  exist;
- ``operator`` sees the state of every job (without its contents: :mod:`receptionist.redaction`), the
  dead letters, and may redrive them;
- ``admin`` manages users only: no jobs, unless also given ``user``.

A kind may also need a permission to be submitted (``RECEPTIONIST_KIND_PERMISSIONS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shared.api import Role
from shared.errors import Forbidden, Unauthorized

#: The owner of the jobs of callers without a token (when the gateway lets them in).
ANONYMOUS = "anonymous"

USER_HEADER = "X-Conveyor-User"
USERNAME_HEADER = "X-Conveyor-Username"
ROLES_HEADER = "X-Conveyor-Roles"
PERMISSIONS_HEADER = "X-Conveyor-Permissions"


@dataclass(frozen=True)
class Caller:
    """``owner`` is what the caller's jobs belong to (the user's stable id); ``username`` is for display."""

    owner: str
    username: str
    roles: frozenset[str]
    permissions: frozenset[str]

    @classmethod
    def of(cls, request: web.Request) -> Caller:
        roles = request.headers.get(ROLES_HEADER)
        owner = request.headers.get(USER_HEADER) or ANONYMOUS
        return cls(
            owner=owner,
            username=request.headers.get(USERNAME_HEADER) or owner,
            roles=frozenset(r for r in (roles.split(",") if roles is not None else [Role.USER]) if r),
            permissions=frozenset(p for p in request.headers.get(PERMISSIONS_HEADER, "").split(",") if p),
        )

    @property
    def is_user(self) -> bool:
        return Role.USER in self.roles

    @property
    def is_operator(self) -> bool:
        return Role.OPERATOR in self.roles

    def require(self, role: Role) -> None:
        if role not in self.roles:
            self._log_in_first(f"this needs the {role} role")
            raise Forbidden(f"this needs the {role} role", [{"field": "role", "message": f"{role} required"}])

    def require_permission(self, permission: str, what: str) -> None:
        if permission not in self.permissions:
            self._log_in_first(f"{what} needs the {permission} permission")
            raise Forbidden(f"{what} needs the {permission} permission",
                            [{"field": "permission", "message": f"{permission} required"}])

    @property
    def is_anonymous(self) -> bool:
        return self.owner == ANONYMOUS

    def _log_in_first(self, what: str) -> None:
        """A caller who sent no credentials is told to log in (401, RFC 9110 15.5.2), not refused for good."""
        if self.is_anonymous:
            raise Unauthorized(f"{what}: log in first at POST /auth/token",
                               [{"field": "Authorization", "message": "missing"}])

    def owns(self, job: dict[str, Any]) -> bool:
        return self.is_user and job["owner"] == self.owner
