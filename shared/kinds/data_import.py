"""Bulk data imports: ``POST /v1/imports?resource=users|articles|comments`` with a CSV or NDJSON file (or a
URL to fetch one from), imported into the handler's data store (:mod:`shared.datastore`).

The file is read a line at a time, never whole: up to a million records a job in constant memory. Each
record is checked on its own; the good ones are upserted by id in batches of :data:`BATCH_SIZE` (one
transaction each), each bad one is written to the error report (NDJSON ``{line, reason}``, an artifact of
the job) with the line it starts on. A batch is read and checked in a worker thread, so the handler's event
loop (lease heartbeats, other jobs) keeps going, while the batch before it is written to the store; between
batches the job may be cancelled.

A record is upserted by its id; a user without an id by its email, an article without one by its slug
(their natural keys): the record with that key is updated, or one is created with a new id (a UUID). A
comment always needs its id.

Rules: users have a valid email, kept as sent and unique across users in any case (the same email on
another id, ``Ada@x.org`` for ``ada@x.org`` too, is a rejection), a role of admin, author or reader, and
a boolean ``active``; articles a kebab-case slug, unique likewise, a title, a status of draft or
published (a draft has no ``published_at``) and an author who exists;
comments a body of at most 500 words, and an article and a user that exist. No text holds a NUL character
(PostgreSQL text cannot, so neither backend takes one). Values are kept as sent, never stripped (a blank
one where a value is required is missing); times are stored in ISO 8601 with their offset, to the
microsecond (a finer fraction is a rejection, not cut off; an offset with seconds too).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel, Field, StrictStr, field_validator

from shared.contract import STRICT, JobKind, RetryPolicy, as_utc
from shared.datastore import ANY_CASE, COLUMNS, DataStore, fold
from shared.fetching import fetch_to_file
from shared.kinds.base import InvalidInput, JobContext
from shared.kinds.data_records import (  # noqa: F401 (the readers and formats are this kind's API too)
    CONTENT_TYPES,
    SUFFIXES,
    FileFormat,
    _Position,
    csv_records,
    format_of,
    ndjson_records,
)
from shared.kinds.registry import kind

#: Records a transaction. On PostgreSQL, 5,000 imported about 45% faster than 1,000 (fewer round trips a
#: record); memory stays a few MB a batch.
BATCH_SIZE = 5000
FIRST_ERRORS = 10
MAX_COMMENT_WORDS = 500
MAX_ID_CHARS = 200
REPORT_NAME = "errors.ndjson"

EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
ROLES = frozenset({"admin", "author", "reader"})
STATUSES = frozenset({"draft", "published"})
#: A fraction of a second of more than 6 digits (Python's fromisoformat reads it, cut to microseconds).
_FINER_THAN_MICROSECONDS = re.compile(r"[.,][0-9]{7}")
#: An offset from UTC with seconds (``+05:30:15``, ``-000000.5``), which Python's fromisoformat reads.
_OFFSET_WITH_SECONDS = re.compile(r"[+-][0-9]{2}:?[0-9]{2}:?[0-9]{2}([.,][0-9]+)?$")
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})


class Resource(StrEnum):
    USERS = "users"
    ARTICLES = "articles"
    COMMENTS = "comments"


class UrlImport(BaseModel):
    """``POST /v1/imports?resource=...`` with a JSON body: the file is fetched from ``url`` by the handler."""

    model_config = STRICT

    url: StrictStr = Field(min_length=1, max_length=2000,
                           description="An http or https URL of a CSV or NDJSON file (by its suffix or content type)")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        from yarl import URL

        try:
            parsed = URL(value)
        except ValueError as exc:
            raise ValueError("not a URL") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an http or https URL with a host")
        return value


class Rejected(Exception):
    """One record breaks a rule; its message is the reason in the error report."""


# -- one record ------------------------------------------------------------------------------------------

def _text(record: dict[str, Any], name: str, *, required: bool = True, limit: int = 100_000) -> str:
    """The text as sent, never stripped: white space around a value is the sender's. A required one that is
    blank (white space only) is missing."""
    value = record.get(name)
    if type(value) is not str:  # a CSV cell always is: the checks below are for NDJSON's other types
        if value is None:
            if required:
                raise Rejected(f"{name} is required")
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise Rejected(f"{name} must be a string")
        value = str(value)
    if required and not value.strip():
        raise Rejected(f"{name} is required")
    if len(value) > limit:
        raise Rejected(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise Rejected(f"{name} contains a NUL character")
    return value


def _id(record: dict[str, Any], name: str) -> str:
    return _text(record, name, limit=MAX_ID_CHARS)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _key_id(record: dict[str, Any], natural_key: str) -> str:
    """The record's id, or ``""`` when it has none but has its natural key (upserted by that key: see
    :meth:`Importer.write`)."""
    if _blank(record.get("id")) and not _blank(record.get(natural_key)):
        return ""
    try:
        return _id(record, "id")
    except Rejected as exc:
        if str(exc) == "id is required":
            raise Rejected(f"id or {natural_key} is required") from None
        raise


def _timestamp(record: dict[str, Any], name: str, default: str | None) -> str | None:
    """The time in ISO 8601 with its offset (``+00:00`` when it has none): the same moment, in the form
    the store compares as text. A fraction of a second finer than microseconds, which would be cut off, is
    a rejection."""
    value = record.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise Rejected(f"{name} must be an ISO 8601 date-time string")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Rejected(f"{name} is not an ISO 8601 date-time: {value[:50]!r}") from None
    if _FINER_THAN_MICROSECONDS.search(value):
        raise Rejected(f"{name} has more than 6 digits after the seconds (microseconds at most): {value[:50]!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if _OFFSET_WITH_SECONDS.search(value.strip()):
        # Python reads +05:30:15 (and reads -00:00:00.5 as +00:00); ISO 8601 and RFC 3339 offsets are hours
        # and minutes, so it would be exported as a time no RFC 3339 reader takes, the exports' filters
        # included.
        raise Rejected(f"{name} has an offset of seconds (hours and minutes at most): {value[:50]!r}")
    try:
        as_utc(moment)  # the exports' time filters compare in UTC: a moment with none could not be found
    except ValueError:
        raise Rejected(f"{name} is no moment once in UTC (out of the calendar's range): {value[:50]!r}") from None
    return moment.isoformat()


def _bool(record: dict[str, Any], name: str, default: bool) -> bool:
    value = record.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise Rejected(f"{name} must be a boolean (true or false), not {str(value)[:20]!r}")


def _tags(record: dict[str, Any]) -> list[str]:
    """The tags as sent: a list, a JSON array in a CSV cell, or a CSV cell of tags separated by commas,
    semicolons or bars. A tag is kept whole (never stripped); an empty or blank one is a rejection, not
    dropped."""
    value = record.get("tags")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise Rejected("tags is not a JSON array") from None
        else:
            value = re.split(r"[,;|]", value)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise Rejected("tags must be a list of strings")
    if any("\x00" in tag for tag in value):
        raise Rejected("tags contains a NUL character")
    if not all(tag.strip() for tag in value):
        raise Rejected("tags has an empty or blank tag")
    return value


def check_user(record: dict[str, Any], now: str) -> tuple[Any, ...]:
    """A users row (:data:`shared.datastore.COLUMNS` order), or :class:`Rejected`."""
    user_id = _key_id(record, "email")
    email = _text(record, "email", limit=254)  # as sent; unique in any case (see Importer.write)
    if not EMAIL.fullmatch(email):
        raise Rejected(f"email {email[:100]!r} is not a valid address")
    role = _text(record, "role").lower()
    if role not in ROLES:
        raise Rejected(f"role {role[:30]!r} is not one of admin, author, reader")
    active = _bool(record, "active", True)
    created = _timestamp(record, "created_at", now)
    return (user_id, email, _text(record, "name", required=False, limit=500), role, int(active), created,
            _timestamp(record, "updated_at", created))


def check_article(record: dict[str, Any], now: str) -> tuple[Any, ...]:
    article_id = _key_id(record, "slug")
    slug = _text(record, "slug", limit=200)
    if not SLUG.fullmatch(slug):
        raise Rejected(f"slug {slug[:100]!r} is not kebab-case (lower-case words and digits joined by hyphens)")
    title = _text(record, "title", limit=1000)
    status = _text(record, "status").lower()
    if status not in STATUSES:
        raise Rejected(f"status {status[:30]!r} is not one of draft, published")
    published_at = _timestamp(record, "published_at", None)
    if status == "draft" and published_at is not None:
        raise Rejected("a draft has no published_at")
    return (article_id, slug, title, _text(record, "body", required=False), _id(record, "author_id"),
            orjson.dumps(_tags(record)).decode(), published_at, status)


def check_comment(record: dict[str, Any], now: str) -> tuple[Any, ...]:
    comment_id = _id(record, "id")
    body = _text(record, "body")
    words = len(body.split())
    if words > MAX_COMMENT_WORDS:
        raise Rejected(f"body has {words} words, at most {MAX_COMMENT_WORDS}")
    return (comment_id, _id(record, "article_id"), _id(record, "user_id"), body,
            _timestamp(record, "created_at", now))


@dataclass(frozen=True)
class Rules:
    """What a resource's records are checked against, beyond each record alone."""

    check: Callable[[dict[str, Any], str], tuple[Any, ...]]
    #: What a record may name: a CSV column or an NDJSON key besides these would be dropped unread.
    columns: tuple[str, ...]
    unique: tuple[int, str] | None = None  # (row position, column) unique across the table
    references: tuple[tuple[int, str, str], ...] = ()  # (row position, table, what it is called)

    @property
    def keys(self) -> tuple[str, ...]:
        """The columns that can name a record: ``id``, and the unique column (its natural key)."""
        return ("id",) if self.unique is None else ("id", self.unique[1])


RULES = {
    Resource.USERS: Rules(check_user, COLUMNS["users"], unique=(1, "email")),
    Resource.ARTICLES: Rules(check_article, COLUMNS["articles"], unique=(1, "slug"),
                             references=((4, "users", "author"),)),
    Resource.COMMENTS: Rules(check_comment, COLUMNS["comments"],
                             references=((1, "articles", "article"), (2, "users", "user"))),
}


# -- the import ------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """Up to :data:`BATCH_SIZE` records read and checked each on its own: the good rows with their lines,
    and the rejections so far as ``(line, reason)``."""

    lines: list[int] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    read: int = 0


@dataclass
class Importer:
    """One import: reads records, checks them, upserts the good ones, reports the bad ones. :meth:`read`
    (the file and the checks of each record alone) is synchronous, for a worker thread; :meth:`write` (the
    checks against the store, and the upsert) awaits the store. :meth:`batch` does both for one batch;
    :meth:`run` reads the next batch while the store writes this one."""

    resource: Resource
    store: DataStore
    records: Iterator[tuple[int, dict[str, Any] | str]]
    report: IO[bytes]
    read_count: int = 0
    imported: int = 0
    rejected: int = 0
    first_errors: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def read(self) -> int:
        """Records read so far (written ones or not)."""
        return self.read_count

    def _flush_errors(self, errors: list[tuple[int, str]]) -> None:
        """A batch's rejections, in the order of their lines (the checks that need the store come after
        those of each record alone)."""
        errors.sort(key=lambda error: error[0])
        for line, reason in errors:
            error = {"line": line, "reason": reason}
            if len(self.first_errors) < FIRST_ERRORS:
                self.first_errors.append(error)
            self.report.write(orjson.dumps(error) + b"\n")
        self.rejected += len(errors)

    def read_batch(self) -> Batch:
        """Read and check up to :data:`BATCH_SIZE` records; ``done`` once the file is read."""
        check = RULES[self.resource].check
        now = datetime.now(UTC).isoformat()
        batch = Batch()
        for line, record in self.records:
            batch.read += 1
            if isinstance(record, str):
                batch.errors.append((line, record))
            else:
                try:
                    batch.rows.append(check(record, now))
                    batch.lines.append(line)
                except Rejected as exc:
                    batch.errors.append((line, str(exc)))
            if batch.read == BATCH_SIZE:
                break
        else:
            self.done = True
        return batch

    async def write(self, batch: Batch) -> None:
        """Check ``batch`` against the store (references, unique columns), upsert its good rows and report
        its bad ones."""
        rules = RULES[self.resource]
        rows, lines, errors = batch.rows, batch.lines, batch.errors
        keep = [True] * len(rows)
        for position, table, name in rules.references:
            known = await self.store.existing(table, (row[position] for row in rows))
            for i, row in enumerate(rows):
                if keep[i] and row[position] not in known:
                    keep[i] = False
                    errors.append((lines[i], f"{name} {row[position]!r} does not exist"))
        if rules.unique is not None:
            position, column = rules.unique
            # An email is one in any case (the store's lookup answers it folded): Ada@x is ada@x.
            key = fold if column in ANY_CASE.get(self.resource, ()) else str
            owners = await self.store.lookup(self.resource, column,
                                             (row[position] for i, row in enumerate(rows) if keep[i]))
            for i, row in enumerate(rows):
                if not keep[i]:
                    continue
                owner = owners.get(key(row[position]))
                if not row[0]:  # no id: upserted by its natural key, a new id when nobody has that key yet
                    row = rows[i] = (owner or str(uuid.uuid4()), *row[1:])
                    owners[key(row[position])] = row[0]
                elif owner is not None and owner != row[0]:
                    keep[i] = False
                    errors.append((lines[i], f"{column} {row[position]!r} is already used by id {owner!r}"))
                else:
                    owners[key(row[position])] = row[0]
        good = [i for i in range(len(rows)) if keep[i]]
        refused = await self.store.upsert(self.resource, [rows[i] for i in good])
        for index, reason in refused:
            errors.append((lines[good[index]], reason))
        self.read_count += batch.read
        self.imported += len(good) - len(refused)
        self._flush_errors(errors)

    async def batch(self) -> None:
        """Read, check and upsert one batch (the reading in a worker thread)."""
        await self.write(await asyncio.to_thread(self.read_batch))

    async def run(self, between: Callable[[], Awaitable[None]]) -> None:
        """Every batch, each read in a worker thread while the one before is written; ``between`` is
        awaited after each write (progress, cancellation)."""
        reading = asyncio.ensure_future(asyncio.to_thread(self.read_batch))
        try:
            while True:
                batch = await reading
                last = self.done
                if not last:
                    reading = asyncio.ensure_future(asyncio.to_thread(self.read_batch))
                await self.write(batch)
                await between()
                if last:
                    return
        finally:
            # A read under way finishes (it cannot be stopped midway) before the file it reads is closed.
            await asyncio.wait([reading])
            if not reading.cancelled():
                reading.exception()  # retrieved: a failed read ahead after a failed write is not news

    def counters(self) -> dict[str, Any]:
        return {"read": self.read, "imported": self.imported, "rejected": self.rejected,
                "first_errors": self.first_errors}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@kind(JobKind.DATA_IMPORT, payload=UrlImport, own_route="/v1/imports", own_route_only=True, timeout_s=3600.0,
      uses_datastore=True,
      retries=RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=30.0))
async def run_data_import(ctx: JobContext) -> dict[str, Any]:
    payload = ctx.job.payload
    resource = Resource(payload["resource"])
    if ctx.datastore is None:
        raise RuntimeError("this handler has no data store")
    async with contextlib.AsyncExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="data-import-"))
        if payload.get("url"):
            source = Path(scratch) / "download"
            fetched, content_type = await fetch_to_file(payload["url"], source, policy=ctx.fetch_policy,
                                                        max_bytes=int(payload["max_bytes"]))
            fmt = format_of(fetched.path, content_type)
            if fmt is None:  # the remote's content type is its words: not shown
                raise InvalidInput("the fetched file is neither CSV nor NDJSON (by the suffix of its URL's path, "
                                 "or its content type)")
        else:
            # The upload itself on a local store; on an object store a copy streamed to a temporary file.
            source = await stack.enter_async_context(ctx.artifact_file(payload["upload"]))
            fmt = FileFormat(payload["format"])
            if payload.get("upload_sha256") and await asyncio.to_thread(_sha256, source) != payload["upload_sha256"]:
                raise InvalidInput("the uploaded file does not match the submission (its SHA-256 differs)")
        size = max(os.path.getsize(source), 1)
        ctx.log("data import started", resource=str(resource), format=str(fmt), bytes=size)
        # The report of a batch goes to a buffer in the worker thread, then to the store's streamed write.
        report = io.BytesIO()
        out = await stack.enter_async_context(ctx.new_artifact(REPORT_NAME))
        position = _Position()
        with open(source, "rb") as fh:
            reader = csv_records if fmt is FileFormat.CSV else ndjson_records
            rules = RULES[resource]
            importer = Importer(resource, ctx.datastore, reader(fh, position, rules.keys, rules.columns), report)

            async def between() -> None:
                if report.tell():  # the batch's rejections (written on this loop by Importer.write)
                    await out.write(report.getvalue())
                    report.seek(0)
                    report.truncate()
                await ctx.progress(position.bytes / size)
                ctx.check_cancelled()

            ctx.check_cancelled()
            await importer.run(between)
        report_key = out.key
    ctx.log("data import done", resource=str(resource), read=importer.read, imported=importer.imported,
            rejected=importer.rejected)
    return {"resource": str(resource), **importer.counters(), "error_report": report_key}

