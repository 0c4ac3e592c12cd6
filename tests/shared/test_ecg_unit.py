"""The ECG kind on its own: zero crossings, the payload's rules, and the signals artifact's round trip."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from shared.contract import JobKind
from shared.errors import ValidationFailed
from shared.kinds import KINDS
from shared.kinds.ecg import (
    INT32_MAX,
    INT32_MIN,
    LEAD_NAMES,
    EcgPayload,
    decode_signals,
    encode_signals,
    zero_crossings,
)
from shared.web import parse_model


def reference(signal: list[int]) -> int:
    """Zero crossings the slow, obvious way."""
    crossings, previous = 0, 0
    for sample in signal:
        if sample == 0:
            continue
        if previous and (sample > 0) != (previous > 0):
            crossings += 1
        previous = sample
    return crossings


def count(signal: list[int]) -> int:
    return zero_crossings(np.asarray(signal, dtype=np.int32))


@pytest.mark.parametrize(("signal", "expected"), [
    ([1, -1, 1], 2),  # the seed's example
    ([1, 0, -1], 1),
    ([1, 0, 1], 0),
    ([-1, 0, 0, 0, -5], 0),
    ([3, 0, 0, -2, 0, 4], 2),
    ([0, 0], 0),
    ([0], 0),
    ([-1], 0),
    ([7], 0),
    ([0, 0, 0, 5, 0, 0], 0),
    ([1, -1] * 50, 99),
    ([-1, 1] * 50, 99),
    ([5, 6, 7, 8], 0),
    ([INT32_MIN, INT32_MAX, INT32_MIN], 2),
    ([INT32_MAX, 0, INT32_MAX], 0),
    ([INT32_MIN, 0, 0, 1], 1),
])
def test_zero_crossings(signal: list[int], expected: int) -> None:
    assert count(signal) == expected
    assert reference(signal) == expected


def test_an_all_zero_lead_never_crosses() -> None:
    assert zero_crossings(np.zeros(1000, dtype=np.int32)) == 0


def test_a_million_samples_agree_with_the_reference() -> None:
    rng = np.random.default_rng(7)
    # Runs of one sign with zeros among them, so skipping zeros matters.
    signal = (rng.integers(-3, 4, size=1_000_000) * rng.integers(0, 2, size=1_000_000)).astype(np.int32)
    total = zero_crossings(signal)
    assert total > 100_000
    head = signal[:50_000]
    assert zero_crossings(head) == reference(head.tolist())
    # The whole is the sum of two halves, plus one when the last non-zero of the first and the first
    # non-zero of the second differ in sign.
    first, second = signal[:500_000], signal[500_000:]
    last = first[first != 0][-1]
    next_ = second[second != 0][0]
    assert total == zero_crossings(first) + zero_crossings(second) + int((last > 0) != (next_ > 0))


def test_random_signals_agree_with_the_reference() -> None:
    rng = random.Random(3)
    for _ in range(200):
        signal = [rng.choice([INT32_MIN, -2, -1, 0, 0, 0, 1, 2, INT32_MAX]) for _ in range(rng.randint(1, 40))]
        assert count(signal) == reference(signal), signal


def ecg(**changes: Any) -> dict[str, Any]:
    return {"id": "10", "date": "2023-07-30T10:15:00Z", "leads": [{"name": "I", "signal": [1, -1, 1]}]} | changes


def fields(body: Any) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        parse_model(EcgPayload, body)
    return {detail["field"]: detail["message"] for detail in info.value.details}


def test_a_valid_ecg() -> None:
    leads = [{"name": name, "number_of_samples": 2, "signal": [0, 1]} for name in LEAD_NAMES]
    payload = parse_model(EcgPayload, ecg(leads=leads))
    assert [lead.name for lead in payload.leads] == list(LEAD_NAMES)
    assert payload.date.isoformat() == "2023-07-30T10:15:00+00:00"
    assert parse_model(EcgPayload, {"date": "2023-07-30T10:15:00", "leads": [{"name": "V6", "signal": [0]}]}).id is None


@pytest.mark.parametrize(("changes", "field"), [
    ({"leads": [{"name": "V7", "signal": [1]}]}, "leads.0.name"),
    ({"leads": [{"name": "avr", "signal": [1]}]}, "leads.0.name"),
    ({"leads": [{"name": "I", "signal": [1]}, {"name": "II", "signal": [1]}, {"name": "I", "signal": [2]}]},
     "leads.2.name"),
    ({"leads": [{"name": "I", "number_of_samples": 4, "signal": [1, 2, 3]}]}, "leads.0.number_of_samples"),
    ({"leads": [{"name": "I", "number_of_samples": 0, "signal": [1]}]}, "leads.0.number_of_samples"),
    ({"leads": [{"name": "I", "number_of_samples": True, "signal": [1]}]}, "leads.0.number_of_samples"),
    ({"leads": [{"name": "I", "signal": []}]}, "leads.0.signal"),
    ({"leads": [{"name": "I", "signal": [1, 2.0]}]}, "leads.0.signal.1"),
    ({"leads": [{"name": "I", "signal": [1, 2.5]}]}, "leads.0.signal.1"),
    ({"leads": [{"name": "I", "signal": [1, True]}]}, "leads.0.signal.1"),
    ({"leads": [{"name": "I", "signal": [1, "2"]}]}, "leads.0.signal.1"),
    ({"leads": [{"name": "I", "signal": [1, None]}]}, "leads.0.signal.1"),
    ({"leads": [{"name": "I", "signal": [INT32_MAX + 1]}]}, "leads.0.signal.0"),
    ({"leads": [{"name": "I", "signal": [INT32_MIN - 1]}]}, "leads.0.signal.0"),
    ({"leads": [{"name": "I", "signal": "1,2,3"}]}, "leads.0.signal"),
    ({"leads": [{"name": "I", "signal": [0] * 1_000_001}]}, "leads.0.signal"),
    ({"leads": [{"name": "I", "signal": [1], "gain": 2}]}, "leads.0.gain"),
    ({"leads": []}, "leads"),
    ({"leads": [{"name": name, "signal": [1]} for name in (*LEAD_NAMES, "I")]}, "leads"),
    ({"date": "yesterday"}, "date"),
    ({"date": 1690000000}, "date"),
    ({"id": ""}, "id"),
    ({"id": "x" * 101}, "id"),
    ({"id": 10}, "id"),
    ({"patient": "x"}, "patient"),
])
def test_bad_ecgs_name_the_field(changes: dict[str, Any], field: str) -> None:
    details = fields(ecg(**changes))
    assert field in details, details
    assert details[field]


def test_a_bad_signal_is_one_error_naming_its_first_bad_sample() -> None:
    details = fields(ecg(leads=[{"name": "I", "signal": [1, 2, 3.5] + [0.5] * 100_000}]))
    assert details == {"leads.0.signal.2": "sample 2 is not an integer: 3.5"}
    details = fields(ecg(leads=[{"name": "I", "signal": [0, INT32_MAX, INT32_MAX + 1]}]))
    assert details == {"leads.0.signal.2": f"sample 2 is outside the 32-bit range: {INT32_MAX + 1}"}


def test_the_signals_artifact_round_trips() -> None:
    payload = parse_model(EcgPayload, ecg(leads=[{"name": "I", "signal": [INT32_MIN, 0, INT32_MAX]},
                                                {"name": "aVF", "signal": [-5]},
                                                {"name": "V2", "signal": list(range(-1000, 1000))}]))
    data = encode_signals(payload)
    assert len(data) == 4 * (3 + 1 + 2000)
    assert data[:4] == (INT32_MIN).to_bytes(4, "little", signed=True)
    signals = decode_signals(data, [3, 1, 2000])
    assert [s.tolist() for s in signals] == [lead.signal for lead in payload.leads]
    with pytest.raises(ValueError, match="holds 2004 samples"):
        decode_signals(data, [3, 1, 1999])


def test_the_kind_is_registered() -> None:
    spec = KINDS[JobKind.ECG]
    assert spec.payload is EcgPayload and spec.own_route == "/ecgs" and not spec.timeout_scaled
    assert spec.retry.max_attempts == 3 and spec.timeout_s == 300.0
