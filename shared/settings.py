"""The settings every service shares. Each service subclasses :class:`ServiceSettings` with its own
env prefix (``SCHEDULER_PORT``, ``REGISTRY_STORE_URL`` ...)."""

from __future__ import annotations

import socket

import orjson
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.instances import check_base_url
from shared.logs import LogLevel

_LEVELS = [level.value for level in LogLevel]


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_prefix="CONVEYOR_")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    #: Where logs are shipped (the logging service's base URL); empty ships nothing.
    log_url: str = ""
    log_level: str = "INFO"
    #: Log lines kept waiting for the logging service at most; past that they are dropped and counted.
    log_buffer: int = Field(default=10_000, ge=100)
    #: The name this instance reports in logs and /status (``receptionist-2``); defaults to the service.
    instance: str = ""
    #: The internal service token: sent on every call to another service and, when set, required on
    #: every request to an internal service.
    service_token: SecretStr | None = None
    #: Seconds a call to another service may take before it counts as failed.
    http_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds a client has to send a request's head whole, from its first byte (or from the connection,
    #: for its first request); then a 408, and the connection closes (:mod:`shared.server`).
    request_head_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    #: Seconds a request's body may stop coming before it is given up (408; the connection closes).
    request_body_idle_s: float = Field(default=60.0, gt=0, le=3600)
    #: Seconds a connection may idle between two requests before it is closed: aiohttp's default, an
    #: hour, which outlasts the idle timeouts of the load balancers in front and keeps the services'
    #: connections to each other open. The gateway, which clients reach, closes sooner (75 s).
    keepalive_timeout_s: float = Field(default=3630.0, gt=0, le=86400)
    #: The registry this instance registers with and heartbeats to (:mod:`shared.heartbeat`); empty: none.
    #: Receptionists, handlers and the gateway also keep jobs and users there, and default to :8091.
    registry_url: str = ""
    #: Where the other services reach this instance, as it registers: ``http(s)://host:port``. Empty:
    #: ``http://<host>:<port>`` of the address it listens on, unless that is every address (``0.0.0.0``),
    #: which names no one address: then it does not register.
    advertise_url: str = ""
    #: Seconds between two heartbeats to the registry; 0: this instance does not register.
    instance_heartbeat_s: float = Field(default=2.0, ge=0, le=3600)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, level: str) -> str:
        if level.strip().lower() not in _LEVELS:
            raise ValueError(f"not a log level: one of {', '.join(_LEVELS)}")
        return level.strip()

    @field_validator("advertise_url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        return check_base_url(url) if url else url

    def instance_name(self, service: str) -> str:
        return self.instance or service


def hostname() -> str:
    return socket.gethostname()


def split_list(value: object) -> object:
    """A list setting from the environment: a JSON list (``["a", "b"]``) or comma-separated (``a,b``).

    Use as a ``mode="before"`` validator on a field annotated ``Annotated[list[str], NoDecode]``.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return orjson.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value
