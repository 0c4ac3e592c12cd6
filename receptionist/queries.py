"""Query strings at the public edge, and how every list pages.

Every query model of a public route derives from :class:`PublicQuery`, read with :func:`read_query`: a
parameter the route does not know, a blank value (``?q=``) and a single-valued parameter given twice are
each a 400 naming the parameter, never silently ignored; typed values take only their canonical text
(:mod:`shared.query`). Every list takes :class:`ListQuery`'s ``limit`` and ``cursor`` and answers
``{"items": [...], "next_cursor": ...}`` with a ``Link: <...>; rel="next"`` header while there is more
(:func:`page_answer`). A list the upstream service cannot page itself is paged here over its sorted
items with an opaque keyset cursor (:func:`page_of`)."""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, get_origin

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ValidationFailed
from shared.web import json_response, parse_query

Q = TypeVar("Q", bound=BaseModel)
T = TypeVar("T")

#: Items a page holds at most, and by default.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class PublicQuery(BaseModel):
    """A public route's query string: only these parameters (an unknown one is a 400 naming it)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ListQuery(PublicQuery):
    """Paging, the same on every list."""

    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Items per page")
    cursor: str | None = Field(default=None, max_length=500,
                               description="The `next_cursor` of the page before (opaque)")


def _bad(name: str, message: str) -> ValidationFailed:
    return ValidationFailed("invalid request", [{"field": name, "message": message}])


@functools.cache
def _parameters(model: type[BaseModel]) -> dict[str, bool]:
    """Each query parameter ``model`` takes (its alias, else its name), and whether it may repeat."""
    return {(field.alias or name): get_origin(field.annotation) is list or field.annotation is list
            for name, field in model.model_fields.items()}


def query_texts(request: web.Request, known: Mapping[str, bool]) -> dict[str, Any]:
    """The request's query parameters, each known (``known``: a name to whether it may repeat) and not
    blank: a name to its text, or to its texts when it may repeat. Anything else is a 400 naming it."""
    data: dict[str, Any] = {}
    for name in request.query:
        if name in data:
            continue
        values = request.query.getall(name)
        if name not in known:
            raise _bad(name, f"unknown parameter; this route takes {', '.join(sorted(known)) or 'none'}")
        if any(value == "" for value in values):
            raise _bad(name, "must not be empty (leave the parameter out instead)")
        if len(values) > 1 and not known[name]:
            raise _bad(name, "given more than once")
        data[name] = values if known[name] else values[0]
    return data


def read_query(request: web.Request, model: type[Q], *, extra: Mapping[str, Any] | None = None) -> Q:
    """The request's query string as ``model``; ``extra`` adds values that come from elsewhere (a header).
    Refused with a 400 naming the parameter: an unknown one, a blank value, a single value given twice
    (:func:`query_texts`), then anything the model refuses."""
    data = query_texts(request, _parameters(model))
    data.update(extra or {})
    return parse_query(model, data)


def link_header(request: web.Request, next_cursor: str | None) -> dict[str, str]:
    """``Link: <this list's URL, every parameter kept, at next_cursor>; rel="next"``, when there is more."""
    if not next_cursor:
        return {}
    return {"Link": f'<{request.rel_url.update_query(cursor=next_cursor)}>; rel="next"'}


def page_answer(request: web.Request, items: Sequence[Any], next_cursor: str | None, *,
                body: Mapping[str, Any] | None = None, status: int = 200) -> web.Response:
    """A page of a list: ``{"items", "next_cursor"}`` (or ``body`` in its place, with ``next_cursor``
    added) and its ``Link`` header."""
    answer = {**body, "next_cursor": next_cursor} if body is not None else {"items": items, "next_cursor": next_cursor}
    return json_response(answer, status=status, headers=link_header(request, next_cursor))


def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[Any]:
    """The key a cursor of :func:`encode_cursor` names: a 400 naming ``cursor`` for any other string."""
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise _bad("cursor", "not a cursor this list handed out") from exc
    if not isinstance(key, list) or len(key) != width:
        raise _bad("cursor", "not a cursor this list handed out")
    return key


def page_of(items: Sequence[T], key: Callable[[T], tuple[Any, ...]], query: ListQuery, *,
            width: int) -> tuple[list[T], str | None]:
    """One page of ``items`` sorted by ``key`` (a tuple of ``width`` JSON values), ascending, from just after
    ``query.cursor``'s key: a keyset, so items added or removed between two pages cause neither repeats nor
    gaps among the rest."""
    ordered = sorted(items, key=key)
    if query.cursor:
        after = tuple(decode_cursor(query.cursor, width))
        try:
            ordered = [item for item in ordered if key(item) > after]
        except TypeError as exc:  # a cursor of another list: its key compares with nothing here
            raise _bad("cursor", "not a cursor this list handed out") from exc
    page = ordered[:query.limit]
    more = len(ordered) > query.limit
    return page, encode_cursor(key(page[-1])) if more and page else None
