"""The gateway's settings (env prefix ``GATEWAY_``)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.settings import ServiceSettings, split_list


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    port: int = Field(default=8080, ge=0, le=65535)
    #: A client's connection idle this long between two requests is closed (nginx's default): clients are
    #: many and outside, and an hour's idle connection each is a file descriptor each.
    keepalive_timeout_s: float = Field(default=75.0, gt=0, le=86400)
    #: Base URLs of the receptionists; ``GATEWAY_RECEPTIONISTS`` is a JSON list or comma-separated.
    receptionists: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["http://127.0.0.1:8081"])
    #: Seconds a receptionist that refused a connection is skipped (unless a health probe says it is back).
    cooloff_s: float = Field(default=5.0, gt=0)
    #: Seconds between two health probes of every receptionist.
    health_interval_s: float = Field(default=2.0, gt=0)
    #: Seconds one health probe may take before the receptionist counts as down.
    health_timeout_s: float = Field(default=2.0, gt=0)
    #: Seconds between two questions to the registry for the receptionists it knows are alive, which join
    #: the configured ones (:mod:`gateway.discovery`); 0: the configured receptionists only.
    discovery_interval_s: float = Field(default=2.0, ge=0)
    #: Seconds to connect to a receptionist, and the longest silence while reading its answer; a
    #: whole exchange has no limit, so long streams are fine.
    upstream_timeout_s: float = Field(default=60.0, gt=0)
    #: Connections kept open to all receptionists together.
    upstream_connections: int = Field(default=1000, ge=1)
    #: Largest request body the gateway accepts (it streams it, never holds it whole).
    client_max_size: int = Field(default=1024**3, ge=1024)
    #: Requests a client may make per second on average; 0 turns rate limiting off.
    rate_limit_per_s: float = Field(default=100.0, ge=0)
    #: Requests a client may make at once after being idle.
    rate_limit_burst: int = Field(default=200, ge=1)
    #: Clients whose buckets are kept at most; past that the least recently seen is forgotten.
    rate_limit_max_clients: int = Field(default=100_000, ge=1)
    #: Per-role rates that replace ``rate_limit_per_s`` for callers of that role (the most privileged
    #: role a caller has counts), as JSON: ``{"operator": 500}``. Their burst is twice the rate, at least
    #: ``rate_limit_burst``.
    role_rate_limits: dict[str, float] = Field(default_factory=dict)
    #: Where the buckets live: unset, in this process; ``redis://host:port/db?prefix=NAME`` (or
    #: ``rediss://``), on Redis, shared by every gateway that names the same Redis and prefix, so that a
    #: client has one budget across them all.
    rate_limit_url: str | None = None
    #: Longest a request waits on the Redis of ``rate_limit_url`` (connecting included) before it is
    #: decided by this gateway's own buckets instead (as it is while Redis is unreachable).
    rate_limit_timeout_s: float = Field(default=0.25, gt=0)
    #: ``optional``: a request without a token comes in as the shared anonymous user (the seed's curl
    #: examples work on a fresh ``make run``); ``required``: it is refused with 401.
    auth: Literal["optional", "required"] = "optional"
    #: The secret tokens are signed with (HS256; at least 32 characters). ``conveyor up`` makes one in
    #: the data dir; without one, the gateway makes its own at start and its tokens die with it.
    jwt_secret: SecretStr | None = None
    #: How long a token is valid.
    token_ttl_s: float = Field(default=3600.0, gt=0)
    #: Seconds the gateway keeps a user's token epoch (asked of the registry): a removed user's tokens,
    #: and those issued before a password or roles change, are refused at most this long after the
    #: change. 0 asks the registry on every request that carries a token.
    revocation_s: float = Field(default=5.0, ge=0)
    #: Users whose epochs are kept at most; past that the least recently seen is forgotten (and asked
    #: for again on its next request).
    revocation_cache_users: int = Field(default=100_000, ge=1)
    #: The registry, which checks passwords for ``POST /auth/token``, tells users' token epochs and the
    #: receptionists that are alive.
    registry_url: str = "http://127.0.0.1:8091"
    #: A token that lets a scraper read ``/status`` and ``/metrics`` (sent as ``Authorization: Bearer <token>``;
    #: at least 32 characters); without one, only operators' tokens do.
    metrics_token: SecretStr | None = Field(default=None, min_length=32)
    #: Believe ``X-Forwarded-For``/``X-Forwarded-Proto``: only behind a proxy that sets them.
    trust_forwarded: bool = False
    #: Whether the dashboard's cookies are ``Secure`` (sent over https only); unset: when the request came
    #: over https (as ``X-Forwarded-Proto`` says, with ``trust_forwarded``).
    dashboard_secure_cookie: bool | None = None
    #: Seconds between two snapshots of the queues and instances that ``/dashboard/live`` pushes.
    dashboard_tick_s: float = Field(default=1.0, gt=0, le=60)
    #: Seconds between two reads of the queues' totals while nobody watches the dashboard, so that its
    #: hour of enqueued and finished jobs per second is whole whenever a page opens.
    dashboard_sample_s: float = Field(default=10.0, gt=0, le=300)

    _split_receptionists = field_validator("receptionists", mode="before")(split_list)

    @field_validator("rate_limit_url", mode="before")
    @classmethod
    def _check_rate_limit_url(cls, url: object) -> object:
        if url == "":
            return None  # an empty variable means unset: buckets in process
        if isinstance(url, str) and urlsplit(url).scheme not in ("redis", "rediss"):
            # The scheme only: a URL may carry a password.
            raise ValueError(f"a redis:// or rediss:// URL is required, not {urlsplit(url).scheme or 'no'} scheme")
        return url

    @field_validator("receptionists")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("at least one receptionist URL is required")
        checked = []
        for url in urls:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"not an http(s) base URL: {url!r}")
            checked.append(url.strip().rstrip("/"))
        return checked
