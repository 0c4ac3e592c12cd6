"""The gateway's rate limits: token buckets per client, in process (the default) or on Redis, shared by
every gateway of a deployment (``GATEWAY_RATE_LIMIT_URL=redis://…``). One module a backend:
:mod:`gateway.ratelimit.memory`, :mod:`gateway.ratelimit.redis`; both answer the same async
:class:`RateLimiter` interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.ratelimit.base import Decision, RateLimiter, client_key
from gateway.ratelimit.memory import MemoryRateLimiter
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.ratelimit.redis import RedisBuckets

__all__ = ["Decision", "MemoryRateLimiter", "RateLimiter", "RateLimits", "client_key"]


class RateLimits:
    """The default limiter and one per role (the most privileged role a caller has picks its rate), all on
    one backend. Open it before use and close it after; in process, both do nothing."""

    def __init__(self, default: RateLimiter | None, by_role: dict[str, RateLimiter] | None = None,
                 buckets: RedisBuckets | None = None) -> None:
        self.default = default
        self.by_role = by_role or {}
        #: The connection to Redis the limiters share, when on Redis.
        self.buckets = buckets

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        """The limits ``settings`` describe; the Redis module (and its driver) is imported only when named.
        Each role's burst is twice its rate, at least ``rate_limit_burst``."""
        rates = {role: (rate, max(settings.rate_limit_burst, int(rate * 2)))
                 for role, rate in settings.role_rate_limits.items() if rate > 0}
        default = (settings.rate_limit_per_s, settings.rate_limit_burst) if settings.rate_limit_per_s > 0 else None
        max_clients = settings.rate_limit_max_clients
        if settings.rate_limit_url is None:
            return cls(MemoryRateLimiter(*default, max_clients=max_clients) if default else None,
                       {role: MemoryRateLimiter(*limit, max_clients=max_clients) for role, limit in rates.items()})
        from gateway.ratelimit.redis import RedisBuckets, RedisRateLimiter

        buckets = RedisBuckets.from_url(settings.rate_limit_url, timeout_s=settings.rate_limit_timeout_s)
        return cls(RedisRateLimiter(buckets, "default", *default, max_clients=max_clients) if default else None,
                   {role: RedisRateLimiter(buckets, "role:" + role, *limit, max_clients=max_clients)
                    for role, limit in rates.items()}, buckets)

    def for_role(self, role: str) -> RateLimiter | None:
        """The limiter of a caller whose most privileged role is ``role``; None when that caller is not limited."""
        return self.by_role.get(role, self.default)

    async def open(self) -> None:
        if self.buckets is not None:
            await self.buckets.open()

    async def close(self) -> None:
        if self.buckets is not None:
            await self.buckets.close()

    def stats(self) -> dict[str, Any] | None:
        """For ``/status``: the default limiter's numbers and the backend's; None when nothing is limited."""
        if self.default is None and not self.by_role:
            return None
        report: dict[str, Any] = self.default.stats() if self.default is not None else {}
        report.update(self.buckets.stats() if self.buckets is not None else {"backend": "memory"})
        return report
