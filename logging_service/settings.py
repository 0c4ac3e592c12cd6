"""Settings of the logging service (env prefix ``LOGGING_``)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LOGGING_", extra="ignore")

    port: int = Field(default=8092, ge=0, le=65535)
    #: Where the lines are kept: ``sqlite:///var/logs.db`` (relative; ``sqlite:////abs/logs.db``),
    #: ``postgresql://user@host/db[?schema=NAME]`` (shared by several hosts) or ``memory://``.
    store_url: str = "sqlite:///var/logs.db"
    #: Records one POST /logs may carry at most; a larger batch is refused whole (413).
    max_batch: int = Field(default=5000, ge=1)
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = Field(default=32 * 1024**2, ge=1024)
    #: Records older than this many days are deleted by the retention sweep; 0: no age limit.
    retention_days: float = Field(default=7, ge=0)
    #: The retention sweep keeps at most this many records, the newest; 0: no row limit.
    retention_rows: int = Field(default=0, ge=0)
    #: Seconds between two retention sweeps (the first runs at start).
    retention_check_s: float = Field(default=3600, gt=0)

    @model_validator(mode="after")
    def _some_retention(self) -> Self:
        if not self.retention_days and not self.retention_rows:
            raise ValueError("retention_days and retention_rows are both 0: set one, or logs grow forever")
        return self
