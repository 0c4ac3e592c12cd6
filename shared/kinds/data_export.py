"""Bulk data exports: ``POST /v1/exports {resource, format, filters, fields}`` writes the users, articles or
comments of the handler's data store (:mod:`shared.datastore`) that match the filters to a file, an
artifact of the job (``GET /jobs/{id}/result`` downloads it).

The store is read a page of :data:`PAGE_ROWS` rows at a time, by id (keyset pages on SQLite, a server-side
cursor on PostgreSQL; the event loop keeps the handler's heartbeats); each page is encoded and appended to the file at once, so an
export of millions of rows holds one page in memory. Between pages the job may be cancelled: the attempt's
file is then removed by the handler like any artifact of an attempt that did not finish.

A CSV cell a spreadsheet would run as a formula (one that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return) gets a leading single quote and is quoted, as OWASP advises against CSV injection, in the
job's file and in the streamed ``GET /v1/exports`` alike; ``RECEPTIONIST_CSV_ESCAPE_FORMULAS=false`` turns
that off (the receptionist records its choice in the job's payload, so the handler writes what was asked).

Filters: users by ``role``, ``active`` and ``created_from``/``created_to``; articles by ``status``,
``author_id`` and ``published_from``/``published_to``; comments by ``article_id`` and ``user_id``. Time
bounds are inclusive and compared in UTC with the stored ISO 8601 text: so a bound must be a moment in UTC
(year 1 at +01:00 is none), and a ``_from`` after its ``_to`` is refused at submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import IO, Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.contract import STRICT, FromText, JobKind, NoNul, NotBlank, RetryPolicy, Timestamp, as_utc
from shared.datastore import COLUMNS, Condition, DataStore
from shared.kinds.base import InvalidInput, JobContext
from shared.kinds.data_import import Resource
from shared.kinds.registry import kind

#: Rows read, encoded and written at a time.
PAGE_ROWS = 5000
#: What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The payload key in which the receptionist records whether CSV formulas are neutralised.
ESCAPE_FORMULAS = "csv_escape_formulas"


class ExportFormat(StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"
    JSON = "json"


CONTENT_TYPES = {ExportFormat.NDJSON: "application/x-ndjson", ExportFormat.CSV: "text/csv",
                 ExportFormat.JSON: "application/json"}


def _has_utc(value: datetime) -> datetime:
    """The bound as sent, once it is known to have a moment in UTC, where it is compared: year 1 at
    +01:00 has none (a ValueError, not the OverflowError that would fail every attempt of the job)."""
    as_utc(value)
    return value


#: A time bound of a filter (``created_from``): an RFC 3339 date-time that is a moment in UTC.
Bound = Annotated[Timestamp, AfterValidator(_has_utc)]


class _Filters(BaseModel):
    model_config = STRICT

    @model_validator(mode="after")
    def _bounds_in_order(self) -> _Filters:
        """A ``_from`` after its ``_to`` matches nothing: a mistake, refused naming the ``_from``."""
        for name in type(self).model_fields:
            if name.endswith("_from"):
                until = name.removesuffix("_from") + "_to"
                start, end = getattr(self, name), getattr(self, until)
                if start is not None and end is not None and as_utc(start) > as_utc(end):
                    raise ValidationError.from_exception_data(type(self).__name__, [{
                        "type": PydanticCustomError("bounds_order", f"must not be after {until}"),
                        "loc": (name,), "input": start}])
        return self


class UserFilters(_Filters):
    role: Literal["admin", "author", "reader"] | None = None
    active: StrictBool | None = None
    created_from: Bound | None = None
    created_to: Bound | None = None


class ArticleFilters(_Filters):
    status: Literal["draft", "published"] | None = None
    author_id: Annotated[StrictStr, NotBlank, NoNul] | None = Field(default=None, min_length=1, max_length=200)
    published_from: Bound | None = None
    published_to: Bound | None = None


class CommentFilters(_Filters):
    article_id: Annotated[StrictStr, NoNul] | None = Field(default=None, min_length=1, max_length=200)
    user_id: Annotated[StrictStr, NoNul] | None = Field(default=None, min_length=1, max_length=200)


FILTERS: dict[Resource, type[_Filters]] = {Resource.USERS: UserFilters, Resource.ARTICLES: ArticleFilters,
                                           Resource.COMMENTS: CommentFilters}


class DataExportRequest(BaseModel):
    """``POST /v1/exports``: what to export, how, and which of the resource's columns (all by default)."""

    model_config = STRICT

    resource: Annotated[Resource, FromText]
    format: Annotated[ExportFormat, FromText] = ExportFormat.NDJSON
    filters: dict[str, Any] = Field(default_factory=dict, description=(
        "users: role, active, created_from, created_to; articles: status, author_id, published_from, "
        "published_to; comments: article_id, user_id"))
    fields: list[StrictStr] | None = Field(default=None, min_length=1, max_length=20,
                                           description="A subset of the resource's columns, in the order wanted")

    @field_validator("filters")
    @classmethod
    def _filters_of_resource(cls, filters: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The resource's filters, checked. Raised here, the filters' errors are located under ``filters``
        (``filters.role``), so the answer names the filter at fault."""
        resource = info.data.get("resource")
        if resource is None:  # refused already
            return filters
        return FILTERS[resource].model_validate(filters).model_dump(mode="json", exclude_none=True)

    @field_validator("fields")
    @classmethod
    def _columns_of_resource(cls, fields: list[str] | None, info: ValidationInfo) -> list[str] | None:
        resource = info.data.get("resource")
        if fields is None or resource is None:
            return fields
        columns = COLUMNS[resource]
        unknown = [name for name in fields if name not in columns]
        if unknown:
            raise ValueError(f"{', '.join(unknown)[:200]} not among {resource}'s columns ({', '.join(columns)})")
        twice = sorted({name for name in fields if fields.count(name) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return fields


#: (filter, column, SQL operator) of each resource; a ``_from``/``_to`` bound is a time.
_CONDITIONS: dict[Resource, tuple[tuple[str, str, str], ...]] = {
    Resource.USERS: (("role", "role", "="), ("active", "active", "="), ("created_from", "created_at", ">="),
                     ("created_to", "created_at", "<=")),
    Resource.ARTICLES: (("status", "status", "="), ("author_id", "author_id", "="),
                        ("published_from", "published_at", ">="), ("published_to", "published_at", "<=")),
    Resource.COMMENTS: (("article_id", "article_id", "="), ("user_id", "user_id", "=")),
}


def conditions_of(resource: Resource, filters: dict[str, Any]) -> list[Condition]:
    """The store conditions of validated ``filters``."""
    conditions: list[Condition] = []
    for name, column, operator in _CONDITIONS[resource]:
        value = filters.get(name)
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        elif name.endswith(("_from", "_to")):
            value = as_utc(datetime.fromisoformat(value)).isoformat()
        conditions.append(Condition(column, operator, value))
    return conditions


def _decode(fields: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """A stored row as the exported record: ``active`` a boolean, ``tags`` a list."""
    record = dict(zip(fields, row, strict=True))
    if "active" in record:
        record["active"] = bool(record["active"])
    if "tags" in record:
        record["tags"] = orjson.loads(record["tags"])
    return record


@dataclass
class Writer:
    """Encodes pages of records to an open binary file in one format."""

    fmt: ExportFormat
    fields: tuple[str, ...]
    out: IO[bytes]
    rows: int = 0
    #: Whether a CSV cell that starts like a formula gets a leading single quote (and is quoted).
    escape_formulas: bool = True

    def start(self) -> None:
        if self.fmt is ExportFormat.CSV:
            self._csv_rows([list(self.fields)])
        elif self.fmt is ExportFormat.JSON:
            self.out.write(b"[")

    def _csv_rows(self, rows: list[list[Any]]) -> None:
        text = io.StringIO()
        plain = csv.writer(text, lineterminator="\n")
        # A row with a formula, or a carriage return (which the csv module quotes only when it ends lines),
        # has every cell quoted.
        quoted = csv.writer(text, lineterminator="\n", quoting=csv.QUOTE_ALL)
        starts = FORMULA_STARTS if self.escape_formulas else ()
        for row in rows:
            if any(type(cell) is str and (cell.startswith(starts) or "\r" in cell) for cell in row):
                quoted.writerow(["'" + cell if type(cell) is str and cell.startswith(starts) else cell
                                 for cell in row])
            else:
                plain.writerow(row)
        self.out.write(text.getvalue().encode())

    def page(self, rows: list[tuple[Any, ...]]) -> None:
        """Append stored rows (the exported fields first, in order; any further column is left out)."""
        width = len(self.fields)
        records = [_decode(self.fields, row[:width]) for row in rows]
        if self.fmt is ExportFormat.CSV:
            self._csv_rows([[_cell(record[name]) for name in self.fields] for record in records])
        elif self.fmt is ExportFormat.NDJSON:
            self.out.write(b"".join(orjson.dumps(record) + b"\n" for record in records))
        else:
            lead = b"," if self.rows else b""
            self.out.write(lead + b",".join(orjson.dumps(record) for record in records))
        self.rows += len(records)
        self.out.flush()  # a page at a time reaches the file: the download of a finished export is whole

    def end(self) -> None:
        if self.fmt is ExportFormat.JSON:
            self.out.write(b"]\n")


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return orjson.dumps(value).decode()
    return "" if value is None else value


@dataclass(frozen=True)
class Query:
    """What an export reads: the exported ``fields`` of the rows of ``resource`` matching ``conditions``."""

    resource: Resource
    fields: tuple[str, ...]
    conditions: list[Condition]

    @classmethod
    def of(cls, request: DataExportRequest) -> Query:
        return cls(request.resource, tuple(request.fields or COLUMNS[request.resource]),
                   conditions_of(request.resource, request.filters))

    async def count(self, store: DataStore) -> int:
        return await store.count(self.resource, self.conditions)

    def pages(self, store: DataStore) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The matching rows by id, :data:`PAGE_ROWS` at a time, read as they are consumed."""
        return store.scan(self.resource, self.fields, self.conditions, page_rows=PAGE_ROWS)


def _drain(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


@kind(JobKind.DATA_EXPORT, payload=DataExportRequest, own_route="/v1/exports", timeout_s=3600.0,
      uses_datastore=True, retries=RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=30.0))
async def run_data_export(ctx: JobContext) -> dict[str, Any]:
    payload = dict(ctx.job.payload)
    escape_formulas = bool(payload.pop(ESCAPE_FORMULAS, True))
    try:
        request = DataExportRequest.model_validate(payload)
    except ValidationError as exc:  # the receptionist checked it; a payload that fails now always will
        raise InvalidInput(f"the payload is not a valid export request: {exc}") from None
    resource, fmt = request.resource, request.format
    store = ctx.datastore
    if store is None:
        raise RuntimeError("this handler has no data store")
    query = Query.of(request)
    total = await query.count(store)
    ctx.log("data export started", resource=str(resource), format=str(fmt), total=total)
    # Each page is encoded into a buffer in a worker thread, then handed to the store's streamed write
    # (on S3, parts go out as they fill): one page in memory, never the file.
    buffer = io.BytesIO()
    writer = Writer(fmt, query.fields, buffer, escape_formulas=escape_formulas)
    async with ctx.new_artifact(f"{resource}.{fmt}") as out:
        writer.start()
        async with contextlib.aclosing(query.pages(store)) as pages:
            async for rows in pages:
                ctx.check_cancelled()
                await asyncio.to_thread(writer.page, rows)
                await out.write(_drain(buffer))
                await ctx.progress(writer.rows / max(total, 1))
        writer.end()
        await out.write(_drain(buffer))
    key, size = out.key, out.size
    ctx.log("data export done", resource=str(resource), rows=writer.rows, bytes=size)
    return {"artifact": key, "filename": f"{resource}-export.{fmt}", "content_type": CONTENT_TYPES[fmt],
            "size": size, "rows": writer.rows, "format": str(fmt), "resource": str(resource)}

