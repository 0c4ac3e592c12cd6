from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.job_settings import JobSettings
from shared.settings import split_list


class Settings(JobSettings):
    model_config = SettingsConfigDict(env_prefix="HANDLER_", extra="ignore")

    port: int = 8100
    #: The scheduler's base URL, or its instances' as a comma-separated list (failover: :mod:`shared.http`).
    scheduler_url: str = "http://127.0.0.1:8090"
    #: The registry's base URL, or its instances' as a comma-separated list. When none answers, the handler
    #: stops taking jobs and asks again after a backoff (``backoff_base_s`` doubling up to ``backoff_cap_s``).
    registry_url: str = "http://127.0.0.1:8091"
    #: The bulk data store the data import kind writes and the data export kind reads
    #: (``sqlite:///path``); opened only when this handler takes the queue of a kind that uses it.
    data_store_url: str = "sqlite:///var/data.db"
    #: Queues this handler takes jobs from, comma-separated in the environment; empty (the default): the
    #: queue of every kind it has (built-in, ``CONVEYOR_KINDS``, entry points).
    queues: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Jobs run at once (those of a kind with a concurrency limit run in a lane of their own, beside these).
    concurrency: int = Field(default=16, ge=1, le=1000)
    lease_s: float = Field(default=30.0, gt=0)
    #: How often a running job's lease is extended; keep it well under ``lease_s``.
    heartbeat_s: float = Field(default=10.0, gt=0)
    #: How long one dequeue call waits for work before asking again.
    poll_wait_s: float = Field(default=5.0, ge=0, le=30)
    #: Simulated work lasts its nominal seconds times this (0: no waiting at all).
    time_scale: float = Field(default=1.0, ge=0)
    #: A kind's timeout is scaled too, but never below this.
    min_timeout_s: float = Field(default=5.0, gt=0)
    #: On stop, running jobs get this long to finish before they are handed back.
    grace_s: float = Field(default=10.0, ge=0)
    #: Reports made within this long of each other go out as one request (at once when none is out).
    batch_window_s: float = Field(default=0.002, ge=0, le=1)
    #: Acks (the scheduler forgets a finished job's lease) wait this long for company even when the stack
    #: is quiet: nobody waits on them, and one request a window costs less than one an ack.
    ack_window_s: float = Field(default=0.02, ge=0, le=1)
    #: Progress reports reach the registry at most this often per job.
    progress_interval_s: float = Field(default=1.0, ge=0)
    #: After a failed dequeue, or while no registry answers, the handler waits this long, doubled at each
    #: failure up to ``backoff_cap_s`` (jittered), before it asks again.
    backoff_base_s: float = Field(default=0.2, gt=0)
    backoff_cap_s: float = Field(default=5.0, gt=0)

    _split_queues = field_validator("queues", mode="before")(split_list)
