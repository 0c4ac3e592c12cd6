"""The opaque cursor of :meth:`registry.store.base.JobStore.list`: where a newest-first page stopped.

A cursor is the urlsafe base64 of ``[created_at ISO, id]`` of the last job handed out; the next page holds
the jobs strictly after it in ``(created_at, id)`` descending order, so jobs created meanwhile cause
neither duplicates nor gaps.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime, timezone

import orjson

from shared.contract import as_utc


def utc_iso(moment: datetime) -> str:
    """A fixed-width ISO form (microseconds, ``+00:00``) whose text order is time order."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = orjson.dumps([utc_iso(created_at), str(job_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The ``(created_at, id)`` a cursor names; :class:`ValueError` for anything we did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_iso, job_id = orjson.loads(raw)
        created_at = datetime.fromisoformat(created_iso)
        parsed_id = uuid.UUID(job_id)
        if created_at.tzinfo is None:
            raise ValueError("naive")
        return as_utc(created_at), parsed_id  # a ValueError too outside the calendar once in UTC
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError("not a cursor this registry handed out") from exc
