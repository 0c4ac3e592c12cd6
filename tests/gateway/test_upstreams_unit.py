"""The receptionist pool's bookkeeping on its own, with a clock the tests move by hand."""

from __future__ import annotations

import pytest

from gateway.upstreams import UpstreamPool


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def urls(pool: UpstreamPool, picks: int) -> list[str | None]:
    return [u.url if (u := pool.pick()) else None for _ in range(picks)]


def test_round_robin(clock: Clock) -> None:
    pool = UpstreamPool(["a", "b", "c"], clock=clock)
    assert urls(pool, 6) == ["a", "b", "c", "a", "b", "c"]


def test_refused_is_skipped_for_the_cooloff(clock: Clock) -> None:
    pool = UpstreamPool(["a", "b"], cooloff_s=5, clock=clock)
    a = pool.upstreams[0]
    pool.refused(a)
    assert a.failures == 1
    assert urls(pool, 3) == ["b", "b", "b"]
    assert pool.retry_after_s() == 2.0  # the next probe comes before the end of the cool-off
    clock.now += 5
    assert urls(pool, 2) == ["a", "b"]


def test_probes_decide_before_the_cooloff_ends(clock: Clock) -> None:
    pool = UpstreamPool(["a", "b"], cooloff_s=60, clock=clock)
    a, b = pool.upstreams
    pool.refused(a)
    pool.probed(a, True)
    assert urls(pool, 2) == ["a", "b"]
    pool.probed(b, False, "503")
    clock.now += 3600  # a failed probe holds until a probe succeeds
    assert urls(pool, 2) == ["a", "a"]
    pool.probed(b, True)
    assert {pool.pick().url, pool.pick().url} == {"a", "b"}  # type: ignore[union-attr]


def test_all_down(clock: Clock) -> None:
    pool = UpstreamPool(["a", "b"], cooloff_s=1, health_interval_s=2, clock=clock)
    for upstream in pool.upstreams:
        pool.refused(upstream)
    assert pool.pick() is None
    assert not pool.any_available()
    assert pool.retry_after_s() == 1.0
    assert [u["up"] for u in pool.report()] == [False, False]


def test_pick_excludes(clock: Clock) -> None:
    pool = UpstreamPool(["a", "b"], clock=clock)
    a, b = pool.upstreams
    assert pool.pick([a]) is b
    assert pool.pick([a, b]) is None
    assert pool.any_available([a])
    assert not pool.any_available([a, b])


def test_the_registrys_alive_receptionists_join_and_leave_but_the_seeds_stay(clock: Clock) -> None:
    pool = UpstreamPool(["a", "b"], clock=clock)
    a, b = pool.upstreams
    joined, left = pool.merge(["b", "c", "d", "c"])
    assert [u.url for u in joined] == ["c", "d"] and left == []
    assert [u.url for u in pool.upstreams] == ["a", "b", "c", "d"]
    assert urls(pool, 4) == ["a", "b", "a", "b"]  # newcomers wait for their first probe
    for upstream in joined:
        pool.probed(upstream, True)
    assert urls(pool, 4) == ["c", "d", "a", "b"]
    joined, left = pool.merge(["d"])  # c is gone; a and b are seeds: they stay whatever the registry says
    assert joined == [] and [u.url for u in left] == ["c"]
    assert pool.upstreams[:2] == [a, b] and [u.url for u in pool.upstreams] == ["a", "b", "d"]
    assert pool.merge(["d"]) == ([], [])  # nothing new: the pool and its turns are left alone
    d = pool.upstreams[2]
    assert pool.merge([]) == ([], [d])
    assert [u.url for u in pool.upstreams] == ["a", "b"]
    assert urls(pool, 3)[0] in ("a", "b")
