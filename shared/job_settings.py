"""Settings that receptionists and handlers share because they share the job's things: the artifact store
and the fetch policy of import URLs. Each service's ``Settings`` extends :class:`JobSettings` with its own
prefix (``RECEPTIONIST_``, ``HANDLER_``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.artifacts import check_url
from shared.fetching import FetchPolicy
from shared.settings import ServiceSettings, split_list


class JobSettings(ServiceSettings):
    #: Seconds between two questions to the registry for the scheduler instances it knows are alive, which
    #: join the configured ones (:mod:`shared.discovery`); 0: the configured schedulers only.
    discovery_interval_s: float = Field(default=5.0, ge=0)
    #: The artifact directory of the embedded default (used when ``artifacts_url`` is empty).
    artifacts_dir: str = "var/artifacts"
    #: Where artifacts live: ``s3://bucket/prefix?endpoint=…&region=…`` (credentials from
    #: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), ``file:///path`` or a directory; empty:
    #: ``artifacts_dir``. Every receptionist and handler of a deployment names the same store.
    artifacts_url: str = ""
    #: Host names and networks (CIDR) an import's URL may reach although they are not public (loopback,
    #: private ...): none by default. Comma-separated in the environment: ``files.corp,10.2.0.0/16``. The
    #: receptionist checks the literal host at submission; the handler checks again after DNS and on every
    #: redirect, so give both the same list.
    fetch_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)

    _split_fetch_allow = field_validator("fetch_allow", mode="before")(split_list)

    @field_validator("artifacts_url")
    @classmethod
    def _artifacts_url(cls, value: str) -> str:
        return check_url(value) if value else value  # a bad URL stops the service at start

    @field_validator("fetch_allow")
    @classmethod
    def _fetch_policy(cls, value: list[str]) -> list[str]:
        FetchPolicy.of(value)  # a malformed entry is refused at startup
        return value

    @property
    def artifacts(self) -> str:
        """The artifact store's URL: ``artifacts_url``, or else ``artifacts_dir``."""
        return self.artifacts_url or self.artifacts_dir
