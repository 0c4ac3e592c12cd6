"""The scheduler's settings, read from ``SCHEDULER_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SCHEDULER_", extra="ignore")

    port: int = Field(default=8090, ge=0, le=65535)
    #: Where the queues live: ``memory://``, ``sqlite:///path/scheduler.db`` or
    #: ``redis://host:port/db?prefix=NAME`` (several schedulers may share one Redis).
    store_url: str = "sqlite:///var/scheduler.db"
    #: Lease of a delivery when the consumer does not ask for one; a handler extends it while it works.
    lease_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    #: How often expired leases are looked for (a dead handler's jobs come back within lease + this).
    reap_interval_s: float = Field(default=0.5, gt=0.0)
    #: The longest a dequeue long poll may wait, whatever it asks for.
    max_wait_s: float = Field(default=30.0, ge=0.0, le=30.0)
    #: The most entries that are not dead (ready, delayed, leased) a queue may hold; an enqueue that would
    #: go past it is refused whole with a 503 and Retry-After. 0: no limit.
    max_queue_length: int = Field(default=0, ge=0)
