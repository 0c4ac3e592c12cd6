"""Query strings, read strictly: every value is text, and a typed parameter takes only its type's
canonical text.

pydantic reads ``"1.0"``, ``"+1"`` and ``"1_000"`` as integers, ``"yes"`` as true, ``"nan"`` as a number
and ``"0.5"`` as a time (half a second after 1970). So before a query model is validated, each value is
checked against the text of its field's type: an integer is decimal digits, a number a decimal (with an
optional exponent), a boolean ``true`` or ``false``, a time an RFC 3339 date-time. Strings, enums and
UUIDs are left to the model.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from shared.contract import DATE_TIME_MESSAGE, DATE_TIME_TEXT
from shared.errors import ValidationFailed

#: (type, its text, what a client is told otherwise); bool before int, which it subclasses.
_TEXTS: tuple[tuple[type, re.Pattern[str], str], ...] = (
    (bool, re.compile(r"true|false"), "must be true or false"),
    (datetime, DATE_TIME_TEXT, DATE_TIME_MESSAGE + " (encode + as %2B)"),
    (int, re.compile(r"-?[0-9]{1,19}"), "must be an integer written in decimal digits"),
    (float, re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?"), "must be a decimal number"),
)


def _scalar(annotation: Any) -> Any:
    """The type a field's values have: ``int`` for ``int | None``, ``Annotated[int, ...]`` or ``list[int]``;
    None when it is a union of several."""
    origin = get_origin(annotation)
    if origin is Annotated or origin is list:
        return _scalar(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _scalar(members[0]) if len(members) == 1 else None
    return annotation


def _text_rule(annotation: Any) -> tuple[re.Pattern[str], str] | None:
    kind = _scalar(annotation)
    if not isinstance(kind, type):
        return None
    for base, pattern, message in _TEXTS:
        if issubclass(kind, base) and not issubclass(kind, str):
            return pattern, message
    return None


@functools.cache
def _rules(model: type[BaseModel]) -> tuple[tuple[str, re.Pattern[str], str], ...]:
    """(parameter, its text, the message otherwise) of each typed field of ``model``, worked out once."""
    rules = []
    for name, field in model.model_fields.items():
        rule = _text_rule(field.annotation)
        if rule is not None:
            rules.append((field.alias or name, *rule))
    return tuple(rules)


def check_texts(model: type[BaseModel], data: Mapping[str, Any]) -> None:
    """Refuse (:class:`ValidationFailed`, naming each parameter at fault) a value of ``data`` (parameter
    name to its text, or to a list of texts) that is not the canonical text of its field's type in
    ``model``. :func:`shared.web.parse_query` validates the model after."""
    details = []
    for key, pattern, message in _rules(model):
        if key not in data:
            continue
        values = data[key] if isinstance(data[key], list) else [data[key]]
        # A blank value is the model's to judge: some read it as absent (``?kind=&state=pending``).
        if any(not isinstance(value, str) or (value and not pattern.fullmatch(value)) for value in values):
            details.append({"field": key, "message": message})
    if details:
        raise ValidationFailed("invalid request", details)
