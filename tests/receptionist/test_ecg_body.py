"""The ECG body read as it arrives (:mod:`receptionist.ecg_body`): whatever the chunks, the same ECG and the
same signals artifact as parsing the whole body; every JSON and sample rule kept, a bad sample named by its
index; and what it holds at once is bounded."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from receptionist.ecg_body import EcgBodyReader
from shared.errors import BadRequest, PayloadTooLarge, ValidationFailed
from shared.kinds.ecg import INT32_MAX, INT32_MIN, LEAD_NAMES, EcgPayload, encode_signals
from shared.web import parse_model


def read(body: bytes, chunk: int = 7, max_head_bytes: int = 4096) -> tuple[EcgPayload, bytes, str]:
    out = io.BytesIO()
    reader = EcgBodyReader(out, max_head_bytes)
    for start in range(0, len(body), chunk):
        reader.feed(body[start:start + chunk])
    ecg = reader.finish()
    assert reader.size == len(out.getvalue())
    return ecg, out.getvalue(), reader.digest.hexdigest()


def refused(body: bytes, chunk: int = 5) -> dict[str, str]:
    with pytest.raises(BadRequest) as info:
        read(body, chunk)
    return {detail["field"]: detail["message"] for detail in info.value.details}


ECG = {"id": 'the "signal": [1 2] of {a} [x]', "date": "2023-07-30T10:15:00Z", "leads": [
    {"signal": [INT32_MIN, 0, INT32_MAX], "name": "I", "number_of_samples": 3},
    {"name": "aVF", "signal": [-5]},
    {"name": "V2", "signal": list(range(-1000, 1000)), "number_of_samples": 2000},
]}


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 1 << 20])
def test_any_chunks_give_the_ecg_and_signals_of_the_whole_body(chunk: int) -> None:
    expected = parse_model(EcgPayload, ECG)
    for body in (orjson.dumps(ECG), orjson.dumps(ECG, option=orjson.OPT_INDENT_2),
                 orjson.dumps(ECG).replace(b'"signal"', b'"sign\\u0061l"').replace(b",", b" ,\n\t ")):
        ecg, signals, digest = read(body, chunk)
        assert signals == encode_signals(expected)
        assert [(lead.name, len(lead.signal)) for lead in ecg.leads] == [("I", 3), ("aVF", 1), ("V2", 2000)]
        assert ecg.id == ECG["id"] and ecg.date == expected.date
        assert len(digest) == 64


def test_twelve_leads_over_many_chunks() -> None:
    rng = np.random.default_rng(5)
    signals = [rng.integers(INT32_MIN, INT32_MAX, size=50_000, endpoint=True, dtype=np.int64).astype(np.int32)
               for _ in LEAD_NAMES]
    body = orjson.dumps({"date": "2024-01-01T00:00:00Z", "leads": [
        {"name": name, "number_of_samples": 50_000, "signal": signal} for name, signal in zip(LEAD_NAMES, signals, strict=True)]},
        option=orjson.OPT_SERIALIZE_NUMPY)
    ecg, stored, _ = read(body, chunk=65_536)
    assert stored == b"".join(signal.astype("<i4").tobytes() for signal in signals)
    assert [len(lead.signal) for lead in ecg.leads] == [50_000] * 12


def body_with(signal: bytes, before: bytes = b"") -> bytes:
    return (b'{"date": "2023-07-30T10:15:00Z", "leads": [' + before +
            b'{"name": "II", "signal": ' + signal + b"}]}")


@pytest.mark.parametrize(("signal", "field", "message"), [
    (b"[1, 2.5]", "leads.0.signal.1", "sample 1 is not an integer: 2.5"),
    (b"[1, 1e3]", "leads.0.signal.1", "sample 1 is not an integer: 1000.0"),
    (b"[1, true]", "leads.0.signal.1", "sample 1 is not an integer: True"),
    (b"[1, null]", "leads.0.signal.1", "sample 1 is not an integer: None"),
    (b'[1, 2, "3]"]', "leads.0.signal.2", "sample 2 is not an integer"),
    (b"[1, [2, 3]]", "leads.0.signal.1", "sample 1 is not an integer"),
    (b'[{"a": 1}]', "leads.0.signal.0", "sample 0 is not an integer: {'a': 1}"),
    (b"[2147483648]", "leads.0.signal.0", "sample 0 is outside the 32-bit range: 2147483648"),
    (b"[-2147483649]", "leads.0.signal.0", "sample 0 is outside the 32-bit range: -2147483649"),
    (b"[" + b"1, " * 30_000 + b"-3000000000]", "leads.0.signal.30000",
     "sample 30000 is outside the 32-bit range: -3000000000"),
    (b"[" + b"0," * 1_000_000 + b"0]", "leads.0.signal", "at most 1,000,000 samples"),
    (b"[]", "leads.0.signal", "must have at least one sample"),
    (b'"1,2"', "leads.0.signal", "Input should be a valid list"),
])
def test_a_bad_signal_is_named_to_its_sample(signal: bytes, field: str, message: str) -> None:
    details = refused(body_with(signal), chunk=4096)
    assert field in details and details[field].startswith(message), details
    details = refused(body_with(signal, before=b'{"name": "I", "signal": [1]}, '), chunk=4096)
    assert field.replace("leads.0", "leads.1") in details, details


@pytest.mark.parametrize("signal", [b"[1, 2,]", b"[, 1]", b"[1,, 2]", b"[1 2]", b"[1, -]", b"[01]", b"[1, NaN]",
                                    b"[1, 2"])
def test_broken_json_in_a_signal_is_malformed(signal: bytes) -> None:
    for chunk in (1, 3, 4096):
        with pytest.raises(BadRequest) as info:
            read(body_with(signal), chunk)
        assert info.value.message == "malformed JSON", (signal, chunk, info.value.details)


def test_what_would_be_read_twice_is_refused() -> None:
    assert refused(body_with(b'[1], "signal": [2]')) == {"leads.0.signal": "appears twice"}
    body = b'{"leads": [{"name": "I", "signal": [1]}], "date": "2023-07-30T10:15:00Z", "leads": []}'
    assert refused(body) == {"leads": "appears twice"}


def test_the_rest_of_the_body_is_held_to_its_own_limit() -> None:
    body = orjson.dumps({**ECG, "note": "x" * 5000})
    with pytest.raises(PayloadTooLarge) as info:
        read(body, chunk=1000, max_head_bytes=4096)
    assert info.value.details == [{"field": "body", "message": "at most 4096 bytes besides the leads' signals"}]
    # Samples do not count against it, however many.
    ecg, _, _ = read(body_with(b"[" + b"123456, " * 100_000 + b"1]"), chunk=65_536, max_head_bytes=1024)
    assert len(ecg.leads[0].signal) == 100_001


def test_other_ecg_rules_still_hold() -> None:
    # Validation proper is EcgPayload's: unknown fields, lead names, counts, the date.
    assert "leads.0.number_of_samples" in refused(body_with(b"[1, 2]").replace(b'"name"', b'"number_of_samples": 3, "name"'))
    assert "leads.0.gain" in refused(body_with(b"[1]").replace(b'"name"', b'"gain": 2, "name"'))
    assert "leads.0.name" in refused(body_with(b"[1]").replace(b'"II"', b'"V7"'))
    assert "date" in refused(body_with(b"[1]").replace(b"2023-07-30T10:15:00Z", b"yesterday"))
    assert "leads.1.name" in refused(body_with(b"[1]", before=b'{"name": "II", "signal": [1]}, '))
    assert refused(b"[1, 2]") and refused(b'{"leads": 5}')
    with pytest.raises(ValidationFailed):
        read(orjson.dumps({"date": "2023-07-30T10:15:00Z", "leads": [
            {"name": name, "signal": [1]} for name in (*LEAD_NAMES, "I")]}))
    with pytest.raises(BadRequest, match="empty body"):
        read(b"")


def test_a_signal_cut_anywhere_across_chunks() -> None:
    body = body_with(b"[ -12345 , 67890,\n-1,0 ]")
    for split in range(1, len(body)):
        out = io.BytesIO()
        reader = EcgBodyReader(out, 4096)
        reader.feed(body[:split])
        reader.feed(body[split:])
        assert len(reader.finish().leads[0].signal) == 4
        assert np.frombuffer(out.getvalue(), dtype="<i4").tolist() == [-12345, 67890, -1, 0], split
