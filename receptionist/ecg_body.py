"""An ECG's JSON body read as it arrives, its samples written to the signals artifact as they are parsed,
so that memory per request stays small and fixed however large the ECG.

The body's structure is followed token by token, but only outside the leads' signals. The rest of the body
(the id, the date, the leads' names and numbers of samples) is kept as it is, with each streamed signal left
as ``[]``; it stays small, at most ``max_head_bytes``. At the end orjson parses it and :class:`EcgPayload`
validates it as usual, each signal standing there as a :class:`StoredSignal` that only has a length.

A signal (``leads.<i>.signal``, an array) is not kept. It is cut at commas into runs of about one chunk
(128 KiB), and orjson parses each run as a JSON array. The JSON rules and the sample rules (integers,
within int32, at most a million) are checked a run at a time. Each run is written to the artifact as
int32 and hashed. A bad sample stops reading at once, with a 400 naming it (``leads.3.signal.17``).

So the largest things held at once are one chunk, one run (a chunk and at most 64 KiB left from the one
before) parsed as a list (at most ~64K distinct Python ints, about 3 MB), and the rest of the body. That
makes a few megabytes per request, whatever the ECG's size. Parsing the whole body took ~80 bytes per
sample, nearly 1 GB for 12 leads of a million samples.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson
from aiohttp import web

from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from shared.kinds.ecg import INT32_MAX, INT32_MIN, MAX_SAMPLES, SAMPLE_DTYPE, EcgPayload, StoredSignal
from shared.web import parse_json, parse_model

#: How much of the body is read at a time (and so about the size of a run of samples parsed at once).
CHUNK_BYTES = 128 * 1024
#: The most text one sample may take (whitespace around it included): more is not a 32-bit integer.
MAX_SAMPLE_TEXT = 64 * 1024

_STRUCTURE = re.compile(rb'["{}\[\],:]')
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_NUMBER = re.compile(rb'["\[{]')


@dataclass(slots=True)
class _Frame:
    """An object or array the reader is inside of."""

    is_object: bool
    key: str | None = None  # the key whose value comes (objects)
    expect_key: bool = True  # (objects)
    index: int = 0  # the element being read (arrays)
    keys: set[str] = field(default_factory=set)  # the keys seen (objects)


class EcgBodyReader:
    """Feed it an ECG body chunk by chunk (:meth:`feed`), then :meth:`finish`: the validated ECG, whose
    samples are in ``out`` (every lead's, in order, as int32). Every error is a 400 (or 413) as
    :func:`shared.web.parse_json` and :func:`shared.web.parse_model` give them."""

    def __init__(self, out: BinaryIO, max_head_bytes: int, model: type[EcgPayload] = EcgPayload) -> None:
        self.out = out
        self.max_head_bytes = max_head_bytes
        self.model = model  # what validates the body: EcgPayload, or one with more fields beside it
        self.digest = hashlib.sha256()
        self.size = 0  # bytes written to ``out``
        self._head = bytearray()  # the body less the signals' samples
        self._pending = b""  # what is not read yet: the start of a string cut by the end of a chunk
        self._stack: list[_Frame] = []
        self._signals: dict[int, int] = {}  # lead index: samples
        self._lead: int | None = None  # the lead whose signal is being read
        self._samples = 0  # of that lead
        self._cut = False  # whether its signal was cut at a comma already
        self._rest = b""  # its text after the last cut
        self._fed = False

    def feed(self, chunk: bytes) -> None:
        self._fed = self._fed or bool(chunk)
        data = self._pending + chunk if self._pending else chunk
        pos, whole = 0, True
        while whole and pos < len(data):
            if self._lead is not None:
                pos = self._read_signal(data, pos)
            else:
                pos, whole = self._read_head(data, pos)
        self._pending = data[pos:]
        if len(self._head) + len(self._pending) > self.max_head_bytes:
            raise PayloadTooLarge("request body too large", [{"field": "body", "message": (
                f"at most {self.max_head_bytes} bytes besides the leads' signals")}])

    def finish(self) -> EcgPayload:
        """The ECG, validated; the signals of its leads are in ``out`` by then."""
        if not self._fed:
            raise BadRequest("empty body", [{"field": "body", "message": "a JSON body is required"}])
        if self._lead is not None:
            raise BadRequest("malformed JSON", [{"field": "body", "message": "the body ends inside a signal"}])
        data = parse_json(bytes(self._head + self._pending))
        try:
            for index, samples in self._signals.items():
                data["leads"][index]["signal"] = StoredSignal(samples)  # the reader saw that structure
        except (TypeError, KeyError, IndexError) as exc:  # pragma: no cover - orjson and the reader agree
            raise BadRequest("malformed JSON", [{"field": "body", "message": "not an ECG"}]) from exc
        return parse_model(self.model, data)

    # The body outside the signals.

    def _read_head(self, data: bytes, pos: int) -> tuple[int, bool]:
        """Read structure from ``pos`` to where a signal's samples start or to the end of ``data``: that
        position, and False when ``data`` ends inside a string (which starts there, for the next chunk)."""
        head, stack = self._head, self._stack
        while True:
            match = _STRUCTURE.search(data, pos)
            if match is None:
                head += data[pos:]  # numbers, literals, whitespace (or garbage, which orjson finds later)
                return len(data), True
            start = match.start()
            head += data[pos:start]
            char = data[start]
            pos = start + 1
            top = stack[-1] if stack else None
            if char == 0x22:  # "
                string = _STRING.match(data, start)
                if string is None:
                    return start, False
                head += string.group()
                pos = string.end()
                if top is not None and top.is_object and top.expect_key:
                    top.key, top.expect_key = self._key(string.group()), False
                    if top.key is not None:
                        self._note_key(top, top.key)
                continue
            if char == 0x5B and self._at_signal():  # [
                self._start_signal(stack[1].index)
                return pos, True
            head.append(char)
            if char in (0x7B, 0x5B):  # { [
                stack.append(_Frame(is_object=char == 0x7B))
            elif char in (0x7D, 0x5D):  # } ]
                if stack:
                    stack.pop()
            elif char == 0x2C and top is not None:  # ,
                if top.is_object:
                    top.key, top.expect_key = None, True
                else:
                    top.index += 1

    @staticmethod
    def _key(token: bytes) -> str | None:
        try:
            key = orjson.loads(token)
        except orjson.JSONDecodeError:
            return None  # orjson refuses the whole body at the end
        return key if isinstance(key, str) else None

    def _note_key(self, frame: _Frame, key: str) -> None:
        """Refuse a second ``leads`` in the body, or a second ``signal`` in a lead: both would be read."""
        depth = len(self._stack)
        if (depth == 1 and key == "leads") or (depth == 3 and key == "signal" and self._in_leads()):
            if key in frame.keys:
                where = "leads" if depth == 1 else f"leads.{self._stack[1].index}.signal"
                raise ValidationFailed("invalid request", [{"field": where, "message": "appears twice"}])
            frame.keys.add(key)

    def _in_leads(self) -> bool:
        stack = self._stack
        return (stack[0].is_object and stack[0].key == "leads" and not stack[1].is_object
                and stack[2].is_object)

    def _at_signal(self) -> bool:
        """Whether an array starting here is a lead's signal: the body's ``leads``, an element, ``signal``."""
        stack = self._stack
        return len(stack) == 3 and self._in_leads() and stack[2].key == "signal" and not stack[2].expect_key

    # The signals.

    def _start_signal(self, lead: int) -> None:
        self._lead, self._samples, self._cut, self._rest = lead, 0, False, b""

    def _read_signal(self, data: bytes, pos: int) -> int:
        """Read samples from ``pos`` to the signal's end (then back to the head) or to the end of ``data``."""
        end = data.find(b"]", pos)
        text = self._rest + data[pos:end if end >= 0 else len(data)]
        if end < 0:
            cut = text.rfind(b",")
            if cut < 0:
                if len(text) > MAX_SAMPLE_TEXT:
                    self._not_a_number(text)
                    self._bad_sample(self._samples, "is not a 32-bit integer")
                self._rest = text
            else:
                self._write(text[:cut], last=False)
                self._cut, self._rest = True, text[cut + 1:]
            return len(data)
        self._write(text, last=True)
        assert self._lead is not None
        self._signals[self._lead] = self._samples
        self._head += b"[]"
        self._lead, self._rest = None, b""
        return end + 1

    def _write(self, run: bytes, *, last: bool) -> None:
        """Parse ``run`` (samples between commas), check them, and write them to the artifact."""
        try:
            values: list[Any] = orjson.loads(b"[" + run + b"]")
        except orjson.JSONDecodeError as exc:
            self._not_a_number(run)
            raise BadRequest("malformed JSON", [{"field": "body", "message": f"in {self._field()}: {exc}"}]) from exc
        if not values:
            if last and not self._cut:
                return  # [] : an empty signal, which the ECG's validation refuses
            raise BadRequest("malformed JSON", [{"field": "body", "message": f"in {self._field()}: a comma "
                                                 "with no sample beside it"}])
        if set(map(type, values)) != {int}:  # bool is not int here, and neither is a float like 1.0
            index = next(i for i, value in enumerate(values) if type(value) is not int)
            self._bad_sample(self._samples + index, f"is not an integer: {values[index]!r}")
        try:
            wide = np.array(values, dtype=np.int64)
        except OverflowError:  # orjson reads up to 2**64 - 1
            wide = None
        if wide is None or wide.min() < INT32_MIN or wide.max() > INT32_MAX:
            index = next(i for i, value in enumerate(values) if not INT32_MIN <= value <= INT32_MAX)
            self._bad_sample(self._samples + index, f"is outside the 32-bit range: {values[index]}")
        if self._samples + len(values) > MAX_SAMPLES:
            raise ValidationFailed("invalid request", [{"field": self._field(),
                                                        "message": f"at most {MAX_SAMPLES:,} samples"}])
        assert wide is not None
        samples = wide.astype(SAMPLE_DTYPE).tobytes()
        self.out.write(samples)
        self.digest.update(samples)
        self.size += len(samples)
        self._samples += len(values)

    def _not_a_number(self, run: bytes) -> None:
        """A run that orjson refused, or too long, because it holds a string, an array or an object (whose
        commas and brackets are not the signal's own): a 400 naming that sample."""
        if match := _NOT_A_NUMBER.search(run):
            self._bad_sample(self._samples + run.count(b",", 0, match.start()), "is not an integer")

    def _field(self) -> str:
        return f"leads.{self._lead}.signal"

    def _bad_sample(self, index: int, message: str) -> None:
        raise ValidationFailed("invalid request", [{"field": f"{self._field()}.{index}",
                                                    "message": f"sample {index} {message}"}])


async def read_ecg(request: web.Request, reader: EcgBodyReader, max_bytes: int,
                   drain: Callable[[], Awaitable[None]] | None = None) -> EcgPayload:
    """Feed ``request``'s body to ``reader`` as it arrives: 415 for another content type, 413 beyond
    ``max_bytes``; then the validated ECG. ``drain`` is awaited after each chunk and at the end, to move on
    what the reader wrote (to an artifact writer) before the next chunk comes."""
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType("expected a JSON body", [
            {"field": "Content-Type", "message": f"must be application/json, not {request.content_type or 'empty'}"}])
    too_large = PayloadTooLarge("request body too large", [{"field": "body", "message": f"at most {max_bytes} bytes"}])
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    read = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        read += len(chunk)
        if read > max_bytes:
            raise too_large
        reader.feed(chunk)
        if drain is not None:
            await drain()
    ecg = reader.finish()
    if drain is not None:
        await drain()
    return ecg
