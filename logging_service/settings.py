"""Settings of the logging service (env prefix ``LOGGING_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LOGGING_", extra="ignore")

    port: int = Field(default=8092, ge=0, le=65535)
    #: Where the lines are kept: ``sqlite:///var/logs.db`` (relative; ``sqlite:////abs/logs.db``) or ``memory://``.
    store_url: str = "sqlite:///var/logs.db"
    #: Records one POST /logs may carry at most; a larger batch is refused whole (413).
    max_batch: int = Field(default=5000, ge=1)
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = Field(default=32 * 1024**2, ge=1024)
    #: Records older than this are deleted by the retention sweep.
    retention_days: float = Field(default=7, gt=0)
    #: Seconds between two retention sweeps (the first runs at start).
    retention_check_s: float = Field(default=3600, gt=0)
