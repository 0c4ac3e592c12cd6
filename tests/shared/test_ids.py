"""UUID version 7 ids: valid RFC 9562 UUIDs, ordered by the millisecond they were made in, and unique."""

from __future__ import annotations

import itertools
import time
import uuid

from shared.ids import uuid7


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
