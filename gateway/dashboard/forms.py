"""The dashboard's forms (log in, log out) read from a request body, every fault a :class:`BadRequest`
naming its field.

aiohttp's ``request.post()`` raises on a body that is not the form it says it is (``LookupError`` for an
unknown charset, ``UnicodeDecodeError`` for bytes that are not its text, ``ValueError`` for a multipart
body without its boundary), which would answer 500; and it reads a percent-escape that is not text
(``%FF``) as U+FFFD, which changes what was sent. Here each is a 400 that says which field and why.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from shared.errors import BadRequest

URLENCODED = frozenset({"", "application/x-www-form-urlencoded"})
MULTIPART = "multipart/form-data"


def _malformed(field: str, message: str) -> BadRequest:
    return BadRequest("malformed form", [{"field": field, "message": message}])


async def read_form(request: web.Request) -> dict[str, str]:
    """The form's fields, the first value of each, as ``request.post()`` has them; a body of another
    type has none (as there)."""
    if request.content_type == MULTIPART:
        return await _multipart(request)
    if request.content_type not in URLENCODED:
        return {}
    return urlencoded(await request.read(), request.charset or "utf-8")


def urlencoded(raw: bytes, charset: str) -> dict[str, str]:
    """``name=value&…`` in ``charset``, each name and value unescaped strictly."""
    try:
        text = raw.decode(charset).rstrip()  # trailing blanks are no part of the form, as aiohttp reads it
    except LookupError:  # no such codec, or one that is no text encoding (rot13)
        raise _malformed("Content-Type", f"unknown charset {charset}") from None
    except UnicodeDecodeError as exc:
        raise _malformed(_field_at(raw, exc.start, charset),
                         f"not {charset} text: byte {raw[exc.start]:#04x} at {exc.start}") from None
    fields: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        escaped, _, value = pair.partition("=")
        name = _unescape(escaped, charset, escaped)
        fields.setdefault(name, _unescape(value, charset, name))
    return fields


def _unescape(text: str, charset: str, field: str) -> str:
    try:
        return unquote_plus(text, encoding=charset, errors="strict")
    except UnicodeDecodeError:
        raise _malformed(field, f"a percent-escape that is not {charset} text") from None


def _field_at(raw: bytes, index: int, charset: str) -> str:
    """The name of the field whose value holds byte ``index`` of ``raw``; ``body`` when a name holds it."""
    before = raw[:index].decode(charset, "replace").rpartition("&")[2]
    name, equals, _ = before.partition("=")
    return unquote_plus(name, encoding=charset, errors="replace") if equals else "body"


async def _multipart(request: web.Request) -> dict[str, str]:
    if "boundary" not in parse_mimetype(request.headers.get("Content-Type", "")).parameters:
        raise _malformed("Content-Type", "multipart/form-data needs a boundary")
    try:
        form = await request.post()
    except (LookupError, ValueError) as exc:  # a part's unknown charset, text that is not, a wrong boundary
        raise _malformed("body", str(exc)) from None
    fields: dict[str, str] = {}
    for name, value in form.items():
        if not isinstance(value, str):
            raise _malformed(name, "a text field, not a file")
        fields.setdefault(name, value)
    return fields
