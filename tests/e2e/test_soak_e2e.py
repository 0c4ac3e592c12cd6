"""``conveyor soak``'s machinery on a short run: a steady rate through a real stack while random services
are SIGKILLed, then every accepted job accounted for (the whole soak is ``make soak``, not in CI)."""

from __future__ import annotations

import pytest

from shared.soak import SoakOptions, soak_run
from tests.e2e.conftest import _free_port_base


@pytest.mark.timeout(300)
async def test_a_short_soak_with_kills_loses_nothing_and_finishes_nothing_twice() -> None:
    opts = SoakOptions(duration_s=8, rate=40, kill_every_s=2, warmup_s=1, seed=7)
    run = await soak_run(opts, "short", _free_port_base(), kills=True)
    assert len(run["kills"]) >= 3, run
    assert run["accepted"] > 0 and run["ended_in_time"], run
    assert (run["lost"], run["finished_twice"]) == (0, 0), run
    assert run["accepted"] == run["finished"] + run["failed"]
    assert run["accepted"] + run["refused"] + run["unanswered"] >= 8 * 40
    assert set(run["memory"]) >= {"gateway", "registry", "scheduler", "handler-1"}
    assert run["ok"]
