"""ECG analysis, the ECG service's kind: ``POST /ecgs {id?, date, leads: [{name, number_of_samples?, signal}]}``.

The insight is the number of zero crossings of each lead's signal: the sign changes between consecutive
non-zero samples, zeros skipped (``[1, 0, -1]`` crosses once, ``[1, 0, 1]`` never, an all-zero or
one-sample lead never).

An ECG may hold twelve leads of a million samples, far too much for a job's payload in the registry. The
receptionist stores the signals as one artifact (every lead's samples in order, as little-endian int32) and
the payload keeps what to find and check them by: ``{id, date, leads: [{name, number_of_samples}], signals:
<artifact key>, signals_sha256}``. The receptionist writes the artifact as it parses the body
(:mod:`receptionist.ecg_body`), so a lead it validates holds a :class:`StoredSignal`, its length only, where a
list of samples would be. The counting is numpy's, in a worker thread, a lead at a time, so the handler's
event loop (its other jobs, its lease heartbeats) never waits for it. The handler maps the signals file (the
local store's own, or a copy streamed down from an object store): never read whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.contract import STRICT, JobKind, NoNul, RetryPolicy, Timestamp
from shared.kinds.base import InvalidInput, JobContext
from shared.kinds.registry import kind

if TYPE_CHECKING:  # numpy is imported where samples are counted: the services that never do skip its 0.15 s
    import numpy as np

LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
MAX_LEADS = len(LEAD_NAMES)
MAX_SAMPLES = 1_000_000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: How the signals artifact stores a sample.
SAMPLE_DTYPE = "<i4"
SIGNALS_NAME = "signals.i32"

LeadName = Literal["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
Sample = Annotated[StrictInt, Field(ge=INT32_MIN, le=INT32_MAX)]


def _error(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> ValidationError:
    """A validation error located at ``loc`` under the model being validated (so a check that needs two
    fields can still name the one at fault: ``leads.2.name``, not ``leads``)."""
    return ValidationError.from_exception_data("ECG", [
        {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}])


class StoredSignal:
    """A lead's signal whose samples were checked and written to the signals artifact as the body was
    read: all that validating the ECG still needs of it is its length."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"StoredSignal({self.length})"


def _bad_sample(index: int, message: str, value: Any) -> ValidationError:
    """A bad sample, located at its index under the signal (``leads.3.signal.17``)."""
    return _error((index,), "bad_sample", f"sample {index} {message}", value)


class Lead(BaseModel):
    model_config = STRICT

    name: LeadName = Field(description="The lead, unique within an ECG")
    number_of_samples: StrictInt | None = Field(default=None, ge=1, le=MAX_SAMPLES,
                                                description="When given, it must equal the length of `signal`")
    signal: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES,
                                 description="The samples, each a 32-bit signed integer")

    @field_validator("signal", mode="wrap")
    @classmethod
    def _samples(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> list[int] | StoredSignal:
        """The same rules as the annotation, checked a whole list at a time: a million samples are checked
        in milliseconds, and a bad signal is one error naming its first bad sample (``signal.17``), not one
        per sample. A :class:`StoredSignal` had its samples checked as they were read."""
        if isinstance(value, StoredSignal):
            if not value.length:
                raise ValueError("must have at least one sample")
            return value
        if not isinstance(value, list):
            return handler(value)
        if not value:
            raise ValueError("must have at least one sample")
        if len(value) > MAX_SAMPLES:
            raise ValueError(f"at most {MAX_SAMPLES:,} samples")
        if set(map(type, value)) != {int}:  # bool is not int here, and neither is a float like 1.0
            index = next(i for i, sample in enumerate(value) if type(sample) is not int)
            raise _bad_sample(index, f"is not an integer: {value[index]!r}", value[index])
        if min(value) < INT32_MIN or max(value) > INT32_MAX:
            index = next(i for i, sample in enumerate(value) if not INT32_MIN <= sample <= INT32_MAX)
            raise _bad_sample(index, f"is outside the 32-bit range: {value[index]}", value[index])
        return value

    @model_validator(mode="after")
    def _count_matches(self) -> Lead:
        if self.number_of_samples is not None and self.number_of_samples != len(self.signal):
            raise _error(("number_of_samples",), "samples_mismatch",
                         f"is {self.number_of_samples} but the signal has {len(self.signal)} samples",
                         self.number_of_samples)
        return self


class EcgPayload(BaseModel):
    """``POST /ecgs``"""

    model_config = STRICT

    id: Annotated[StrictStr, NoNul] | None = Field(default=None, min_length=1, max_length=100,
                                 description="The client's own label for the ECG (the job has its own id)")
    #: An RFC 3339 string: never a number of seconds since 1970, nor its text (``"1690000000"``).
    date: Timestamp = Field(description="When the ECG was taken: an RFC 3339 date-time")
    leads: list[Lead] = Field(min_length=1, max_length=MAX_LEADS)

    @model_validator(mode="after")
    def _unique_names(self) -> EcgPayload:
        seen: set[str] = set()
        for index, lead in enumerate(self.leads):
            if lead.name in seen:
                raise _error(("leads", index, "name"), "duplicate_lead", f"lead {lead.name} appears twice",
                             lead.name)
            seen.add(lead.name)
        return self


def encode_lead(signal: list[int]) -> bytes:
    """One lead's samples as little-endian int32: its part of the signals artifact."""
    import numpy as np

    return np.asarray(signal, dtype=SAMPLE_DTYPE).tobytes()


def encode_signals(ecg: EcgPayload) -> bytes:
    """Every lead's samples in order, as little-endian int32: the signals artifact."""
    return b"".join(encode_lead(lead.signal) for lead in ecg.leads)


def signals_digest(data: bytes) -> str:
    """The SHA-256 of a signals artifact: the payload names it, so a job never analyses other samples."""
    return hashlib.sha256(data).hexdigest()


def decode_signals(data: bytes | np.ndarray, lengths: list[int], digest: str | None = None) -> list[np.ndarray]:
    """The leads' signals back from the artifact, given their lengths (views, no copies); an
    :class:`InvalidInput` (a ValueError: no retry) when the artifact is not what the ECG describes."""
    import numpy as np

    if digest is not None and signals_digest(bytes(data)) != digest:
        raise InvalidInput("the signals artifact does not match the ECG (its SHA-256 differs)")
    samples = np.frombuffer(data, dtype=SAMPLE_DTYPE)
    if samples.size != sum(lengths):
        raise InvalidInput(f"the signals artifact holds {samples.size} samples, the ECG {sum(lengths)}")
    bounds = np.cumsum([0, *lengths])
    return [samples[start:end] for start, end in itertools.pairwise(bounds)]


def zero_crossings(signal: np.ndarray) -> int:
    """Sign changes between consecutive non-zero samples; zeros are skipped, not a sign of their own."""
    import numpy as np

    positive = signal[signal != 0] > 0
    return int(np.count_nonzero(positive[1:] != positive[:-1]))


def _mapped(path: Path, digest: str) -> np.ndarray:
    """The signals file's samples, mapped (not read into memory), once its SHA-256 is found right."""
    import numpy as np

    check = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            check.update(chunk)
    if check.hexdigest() != digest:
        raise ValueError("the signals artifact does not match the ECG (its SHA-256 differs)")
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=SAMPLE_DTYPE)
    return np.memmap(path, dtype=SAMPLE_DTYPE, mode="r")


# Real work: it takes as long at any time scale.
@kind(JobKind.ECG, payload=EcgPayload, own_route="/ecgs", own_route_only=True, timeout_s=300.0,
      retries=RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=30.0))
async def run_ecg(ctx: JobContext) -> dict[str, Any]:
    payload = ctx.job.payload
    leads = payload["leads"]
    ctx.log("ecg analysis started", leads=len(leads), samples=sum(lead["number_of_samples"] for lead in leads))
    lengths = [lead["number_of_samples"] for lead in leads]
    # numpy maps the file: the local store's own, or a copy streamed down from an object store.
    async with ctx.artifact_file(payload["signals"]) as path:
        samples = await asyncio.to_thread(_mapped, path, payload["signals_sha256"])
        signals = decode_signals(samples, lengths)
        results = []
        for step, (lead, signal) in enumerate(zip(leads, signals, strict=True), start=1):
            ctx.check_cancelled()
            # numpy releases the GIL over large arrays: the event loop keeps running meanwhile.
            results.append({"name": lead["name"], "zero_crossings": await asyncio.to_thread(zero_crossings, signal)})
            await ctx.progress(step / len(leads))
        del signals, samples
    ctx.log("ecg analysis done", leads=len(leads))
    return {"leads": results}

