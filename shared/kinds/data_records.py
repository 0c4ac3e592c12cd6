"""The records of a bulk data file (:mod:`shared.kinds.data_import`): CSV with a header, or NDJSON.

A file is read a line at a time, never whole. Each record comes as ``(line, record)``, or as
``(line, reason)`` when it cannot be read, with the line it starts on; nothing is changed or dropped
silently:

- bytes that are not UTF-8 make their record an error (never U+FFFD in the store); a UTF-8 BOM is skipped;
- CSV is read strictly: a quote that does not close, or text after a closing quote, is an error for the
  record it starts, and reading resumes on the line after that record's first, so a stray quote costs one
  record, not the rest of the file (the field size limit bounds how far a quote can run before it is
  caught);
- a CSV header that names a column the resource does not have, or a column twice, or no column a record
  can be found by (``id``, or a natural key such as ``email``), or cannot be read, fails the import for
  good (an :class:`~shared.kinds.base.InvalidInput`: no retry); an NDJSON record with a key the resource
  does not have, or with a key given twice (the parser keeps one of the values), is an error for that
  record;
- each CSV line may end in LF, CRLF or CR alone, whatever the others end in; a line is counted at each
  end, so the lines an error names are the file's.

The readers need a seekable binary file (the handler's files are on disk).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson

from shared.kinds.base import InvalidInput

#: How much of a CSV is read at a time.
_CHUNK_BYTES = 1024 * 1024


class FileFormat(StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"


#: File name suffixes and content types that name a format.
SUFFIXES = {".csv": FileFormat.CSV, ".ndjson": FileFormat.NDJSON, ".jsonl": FileFormat.NDJSON}
CONTENT_TYPES = {"text/csv": FileFormat.CSV, "application/csv": FileFormat.CSV,
                 "application/x-ndjson": FileFormat.NDJSON, "application/ndjson": FileFormat.NDJSON,
                 "application/jsonl": FileFormat.NDJSON, "application/x-jsonlines": FileFormat.NDJSON}


def format_of(filename: str | None, content_type: str | None) -> FileFormat | None:
    """The format a file name (its suffix) or, failing that, a content type names; None for neither."""
    if filename:
        found = SUFFIXES.get(Path(filename.split("?", 1)[0].split("#", 1)[0]).suffix.lower())
        if found is not None:
            return found
    return CONTENT_TYPES.get((content_type or "").split(";", 1)[0].strip().lower())


Records = Iterator[tuple[int, dict[str, Any] | str]]


@dataclass(slots=True)
class _Position:
    """Where a reader is: the last line read (1-based), the bytes read, and the first line of the record
    being read that is not UTF-8 (None while every line is)."""

    line: int = 0
    bytes: int = 0
    undecodable: tuple[int, int] | None = None  # (line, byte offset in the line)


def _lines(fh: IO[bytes]) -> Iterator[bytes]:
    """Each line of the file with its end: LF, CRLF or CR alone, any of them in one file. Read a chunk at a
    time; a line the chunk does not end is kept as its parts until one does (joined once: a long line
    costs no more than its length), and a CR that ends a chunk ends its line only once the next chunk does
    not start with the LF of a CRLF."""
    parts: list[bytes] = []  # the line the chunks so far have not ended
    while chunk := fh.read(_CHUNK_BYTES):
        if parts and parts[-1].endswith(b"\r"):
            if chunk.startswith(b"\n"):
                parts.append(b"\n")
                chunk = chunk[1:]
            yield b"".join(parts)
            parts = []
        lines = chunk.splitlines(keepends=True)  # at LF, CRLF and CR only (bytes have no other line ends)
        if not lines:
            continue
        rest = None if lines[-1].endswith(b"\n") else lines.pop()  # not ended, or by a CR that may be a CRLF's
        if lines:
            if parts:
                lines[0] = b"".join((*parts, lines[0]))
                parts = []
            yield from lines
        if rest is not None:
            parts.append(rest)
    if parts:
        yield b"".join(parts)


def _decoded(lines: Iterator[bytes], position: _Position) -> Iterator[str]:
    for raw in lines:
        position.line += 1
        position.bytes += len(raw)
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Read on, so the record's extent is known, but never import it.
            if position.undecodable is None:
                position.undecodable = (position.line, exc.start)
            yield raw.decode("utf-8", errors="replace")


def _skip_bom(fh: IO[bytes], position: _Position) -> None:
    """Leave the file just past a UTF-8 BOM, if it has one."""
    start = len(codecs.BOM_UTF8) if fh.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
    fh.seek(start)
    position.bytes = start


def _not_utf8(where: tuple[int, int]) -> str:
    return f"line {where[0]} is not UTF-8 (an invalid byte at offset {where[1]} of the line)"


def _unknown(names: Iterable[str], columns: tuple[str, ...] | None) -> str | None:
    """The names (repr'd, so an invisible character shows) that are not among ``columns`` (None: any name is
    one), and what the columns are; None when every name is one."""
    if columns is None:
        return None
    unknown = [name for name in names if name not in columns]
    if not unknown:
        return None
    return f"the resource does not have: {', '.join(map(repr, unknown))[:200]} (its columns: {', '.join(columns)})"


def csv_records(fh: IO[bytes], position: _Position, keys: tuple[str, ...] = ("id",),
                columns: tuple[str, ...] | None = None) -> Records:
    """``(line, record)`` for each row after the header, or ``(line, reason)`` for one that cannot be read.
    An :class:`InvalidInput` (a ValueError) when the header cannot be used: it must name only ``columns``
    (another column's cells would be dropped unread) and one of ``keys`` (the columns a record can be
    found by: ``id``, and a natural key where the resource has one)."""
    _skip_bom(fh, position)

    def reader_at(offset: int, line: int, skip: bool) -> Iterator[list[str]]:
        """A reader from ``offset`` (the start of ``line``); with ``skip``, from the line after it."""
        fh.seek(offset)
        position.line, position.bytes = line - 1, offset
        lines = _decoded(_lines(fh), position)
        if skip:
            next(lines, None)
        position.undecodable = None
        return csv.reader(lines, strict=True)

    reader = reader_at(position.bytes, 1, skip=False)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InvalidInput(f"the CSV header cannot be read: {exc}") from None
    if header is None:
        return
    if position.undecodable is not None:
        raise InvalidInput(f"the CSV header cannot be read: {_not_utf8(position.undecodable)}")
    header = [name.strip() for name in header]
    if unknown := _unknown(header, columns):
        raise InvalidInput(f"the CSV header names columns {unknown}")
    if not set(keys) & set(header):
        raise InvalidInput(f"the CSV header must name {' or '.join(f'an {key}' if key[0] in 'aeiou' else f'a {key}' for key in keys)} column; "
                           f"it names {', '.join(header)[:200]}")
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise InvalidInput(f"the CSV header names {', '.join(twice)[:200]} more than once")
    width = len(header)
    while True:
        start, offset = position.line + 1, position.bytes
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            reason = str(exc)
            if position.line > start or reason == "unexpected end of data":
                yield start, (f"malformed CSV: {reason} (a quote opened on this line does not close where it "
                              "should; the lines after it are read on their own)")
                reader = reader_at(offset, start, skip=True)
            else:
                yield start, f"malformed CSV: {reason}"
                position.undecodable = None
            continue
        if position.undecodable is not None:
            yield start, _not_utf8(position.undecodable)
            position.undecodable = None
            continue
        if not row:  # a blank line
            continue
        if len(row) != width:
            yield start, f"has {len(row)} fields, the header {width}"
            if position.line > start:  # a quote ran on over lines: read them on their own
                reader = reader_at(offset, start, skip=True)
            continue
        yield start, dict(zip(header, row, strict=True))


def ndjson_records(fh: IO[bytes], position: _Position, keys: tuple[str, ...] = ("id",),
                   columns: tuple[str, ...] | None = None) -> Records:
    """``(line, record)`` for each JSON object line, or ``(line, reason)`` for a line that is not one, or
    whose object has a key not among ``columns`` (its value would be dropped unread)."""
    _skip_bom(fh, position)
    for raw in fh:
        position.line += 1
        position.bytes += len(raw)
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield position.line, f"malformed JSON: {exc}"
            continue
        if not isinstance(record, dict):
            yield position.line, "is not a JSON object"
            continue
        if unknown := _unknown(record, columns):
            yield position.line, f"has keys {unknown}"
            continue
        if twice := _given_twice(raw, record):
            yield position.line, f"has the key {twice!r} more than once"
            continue
        yield position.line, record


#: Each key's spelling in a JSON text without escapes (``"name"``), made once.
_QUOTED: dict[str, bytes] = {}


def _given_twice(raw: bytes, record: dict[str, Any]) -> str | None:
    """A key the JSON object ``raw`` gives more than once (the parser kept one value, the other would be
    dropped unread), or None. Cheap for the usual line: each key's quoted spelling is counted in the bytes,
    and only when one shows twice, or an escape (``\\u``) could spell a key another way, is the line parsed
    again, keeping every pair of the object."""
    if b"\\u" not in raw:
        count = raw.count
        for key in record:
            needle = _QUOTED.get(key)
            if needle is None:
                needle = b'"' + key.encode() + b'"'
                if len(_QUOTED) < 1000:  # a resource's columns: a few
                    _QUOTED[key] = needle
            if count(needle) > 1:
                break
        else:
            return None
    try:
        pairs = json.loads(raw, object_pairs_hook=lambda items: items)
    except ValueError:  # orjson read it; should the standard parser not, there is nothing more to tell
        return None
    seen: set[str] = set()
    for key, _ in pairs if isinstance(pairs, list) else ():
        if key in seen:
            return str(key)
        seen.add(key)
    return None
