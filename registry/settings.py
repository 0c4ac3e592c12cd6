"""The registry's settings (env prefix ``REGISTRY_``: ``REGISTRY_PORT``, ``REGISTRY_STORE_URL`` ...)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
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
    #: An instance silent for longer than this (or than three of its own heartbeat intervals, when longer)
    #: is listed as gone: dead, hung or cut off (see :mod:`registry.instances`).
    instance_gone_s: float = Field(default=10.0, gt=0)
    #: A gone instance is dropped from the list once silent for this long.
    instance_drop_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _drop_after_gone(self) -> Self:
        if self.instance_drop_s <= self.instance_gone_s:
            raise ValueError("instance_drop_s must be longer than instance_gone_s: an instance is gone before it "
                             "is dropped")
        return self
