"""The registry's settings (env prefix ``REGISTRY_``: ``REGISTRY_PORT``, ``REGISTRY_STORE_URL`` ...)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    port: int = Field(default=8091, ge=0, le=65535)
    #: Where jobs live: ``sqlite:///path.db`` (default, embedded), ``postgresql://...?schema=NAME``, ``memory://``.
    store_url: str = "sqlite:///var/registry.db"
    #: A long poll of the event routes looks for new events this often, besides at once when this process
    #: changes a job (events written by another registry process are found by this re-check alone).
    event_recheck_s: float = Field(default=0.5, gt=0, le=10)
