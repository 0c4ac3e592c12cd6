from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECEPTIONIST_", extra="ignore")

    port: int = 8081
    registry_url: str = "http://127.0.0.1:8091"
    scheduler_url: str = "http://127.0.0.1:8090"
    artifacts_dir: str = "var/artifacts"
    #: Largest JSON body accepted (413 beyond).
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
