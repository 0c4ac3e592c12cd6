"""Service instances: what each one tells the registry about itself, what the registry answers about them,
and how a service finds the live instances of another (discovery).

Every process of every service registers with the registry when it starts and heartbeats every
``<P>_INSTANCE_HEARTBEAT_S`` (:mod:`shared.heartbeat`) with a small snapshot of its status. The registry
keeps one :class:`Instance` per process (by its ``id``, made at start) and answers :class:`InstanceView`:
the instance with how long it has been silent and whether it is ``gone`` (it missed its heartbeats). An
instance that stops cleanly deregisters; a gone one is dropped after a while.

The wire:

    PUT    /instances/{id}      InstanceBeat -> 200 InstanceView   (register, and every heartbeat)
    DELETE /instances/{id}      -> 204; 404 when unknown            (a clean stop)
    GET    /instances?kind=&gone=  -> InstanceList                  (by kind, then name)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # shared.http imports shared.web, which starts the heartbeat of this module's models
    from shared.http import ServiceClient

#: The largest status snapshot an instance may send (its JSON), and the largest heartbeat body.
MAX_STATUS_BYTES = 4096
MAX_BEAT_BYTES = 16 * 1024


class InstanceKind(StrEnum):
    """The services, as instances name their kind."""

    GATEWAY = "gateway"
    RECEPTIONIST = "receptionist"
    HANDLER = "handler"
    REGISTRY = "registry"
    SCHEDULER = "scheduler"
    LOGGING_SERVICE = "logging_service"


def _no_nul(value: Any, where: str = "status") -> None:
    """PostgreSQL keeps no NUL character in text or JSON: refused on every backend alike."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where} holds a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, where)
            _no_nul(item, where)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item, where)


def check_base_url(url: str) -> str:
    """``url`` without its trailing ``/`` when it is an ``http(s)://host[:port]`` base URL; ValueError otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"not an http(s)://host:port base URL: {url!r}")
    try:
        parts.port  # noqa: B018 - raises for a port that is no number or out of range
    except ValueError as exc:
        raise ValueError(f"not an http(s)://host:port base URL: {url!r}") from exc
    return url.strip().rstrip("/")


class InstanceBeat(BaseModel):
    """What an instance tells the registry, when it registers and at every heartbeat."""

    model_config = ConfigDict(extra="forbid")

    #: Its name in logs and ``/status`` (``receptionist-2``, ``handler-1@worker-2``).
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    kind: InstanceKind
    #: Where the other services reach it.
    url: str = Field(max_length=2000)
    #: The version of Conveyor it runs.
    version: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    started_at: datetime
    #: How often it heartbeats: the registry counts it gone after a few of these missed.
    heartbeat_s: float = Field(gt=0, le=3600)
    #: A small snapshot of its own state (handlers: running jobs, slots, queues; receptionists: requests
    #: in flight), at most ``MAX_STATUS_BYTES`` of JSON.
    status: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        _no_nul(url, "url")
        return check_base_url(url)

    @field_validator("started_at")
    @classmethod
    def _aware(cls, moment: datetime) -> datetime:
        if moment.utcoffset() is None:
            raise ValueError("needs a UTC offset, like 2030-01-01T12:00:00Z")
        return moment

    @field_validator("status")
    @classmethod
    def _small(cls, status: dict[str, Any]) -> dict[str, Any]:
        if len(orjson.dumps(status)) > MAX_STATUS_BYTES:
            raise ValueError(f"at most {MAX_STATUS_BYTES} bytes of JSON")
        _no_nul(status)
        return status


class Instance(InstanceBeat):
    """An instance as the registry keeps it: what it last said, and when."""

    id: uuid.UUID
    last_seen: datetime


class InstanceView(Instance):
    """An instance as the registry shows it."""

    #: Seconds since its last heartbeat, by the registry's clock.
    silent_s: float
    #: It missed its heartbeats: dead, hung or cut off. Dropped from the list after a while.
    gone: bool


class InstanceList(BaseModel):
    """``GET /instances``: by kind, then name."""

    items: list[InstanceView]


async def alive_urls(registry: ServiceClient, kind: InstanceKind | str) -> list[str]:
    """The base URLs of the instances of ``kind`` that the registry knows are alive (not gone), in the
    registry's order, once each. Raises :class:`shared.errors.UpstreamError` when the registry cannot
    answer: the caller keeps what it knew."""
    _, answer = await registry.get("/instances", params={"kind": str(InstanceKind(kind)), "gone": "false"})
    return list(dict.fromkeys(item["url"] for item in answer["items"]))
