"""What the registry's query-string models share: no unknown parameter, and a blank value is an absent one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class RegistryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        # ``?kind=&state=processing`` means "any kind": a client building the query from optional filters
        # should not have to drop the empty ones.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value != ""}
        return data
