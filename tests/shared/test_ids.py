"""UUID version 7 ids: valid RFC 9562 UUIDs, ordered by the millisecond they were made in, and unique."""

from __future__ import annotations

import copy
import itertools
import pickle
import time
import uuid

import pytest

from shared.ids import uuid7, uuid7_hex


def test_an_id_is_a_version_7_rfc_uuid_that_starts_with_its_time() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after
    assert uuid.UUID(str(made)) == made


def test_ids_of_later_milliseconds_sort_after_earlier_ones_and_none_repeats() -> None:
    ids = []
    for _ in range(3):
        ids.extend(uuid7() for _ in range(2000))
        end = time.time_ns() // 1_000_000
        while time.time_ns() // 1_000_000 == end:  # the next batch is in a later millisecond
            pass
    assert len(set(ids)) == len(ids)
    batches = [ids[i:i + 2000] for i in range(0, len(ids), 2000)]
    for earlier, later in itertools.pairwise(batches):
        assert max(str(i) for i in earlier) < min(str(i) for i in later)


def test_the_random_bits_vary() -> None:
    low_bits = {uuid7().int & (2**62 - 1) for _ in range(100)}
    assert len(low_bits) == 100


def test_an_id_behaves_as_any_uuid_of_the_same_value() -> None:
    """uuid7 builds the object without ``UUID(int=...)``'s checks: it must be indistinguishable from one made
    with them (equality, hash, order, text forms, copies, pickling, immutability)."""
    made = uuid7()
    same = uuid.UUID(int=made.int)
    assert made == same and hash(made) == hash(same) and not made < same
    assert (str(made), made.hex, made.bytes, made.urn, repr(made)) == (str(same), same.hex, same.bytes, same.urn,
                                                                        repr(same))
    assert made.is_safe == uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(made)) == made
    assert copy.deepcopy(made) == made
    with pytest.raises(TypeError):
        made.int = 0  # type: ignore[misc]


def test_the_hex_form_is_a_version_7_uuid_of_its_time() -> None:
    before = time.time_ns() // 1_000_000
    text = uuid7_hex()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(hex=text)
    assert len(text) == 32 and text == parsed.hex
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after
    assert len({uuid7_hex() for _ in range(1000)}) == 1000
