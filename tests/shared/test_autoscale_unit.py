"""The autoscaler's decisions (:class:`shared.autoscale.Scaler`), on a clock of the test's own."""

from __future__ import annotations

import pytest

from shared.autoscale import Policy, Scaler, Signal

POLICY = Policy(min_handlers=1, max_handlers=4, up_backlog=2.0, up_age_s=5.0, up_cooldown_s=3.0, quiet_s=10.0)


def busy(ready: int, handlers: int, running: int, age_s: float = 0.0) -> Signal:
    return Signal(ready=ready, oldest_age_s=age_s, slots=4 * handlers, busy=running)


def test_jobs_waiting_for_the_free_slots_scale_up_once_per_cooldown() -> None:
    scaler = Scaler(POLICY)
    first = scaler.decide(1, busy(ready=50, handlers=1, running=4), now=100.0)
    assert first.action == "up" and "50 jobs ready for 0 free slots" in first.reason
    assert scaler.decide(2, busy(ready=46, handlers=2, running=8), now=101.0).action == "hold"  # cooling down
    assert scaler.decide(2, busy(ready=40, handlers=2, running=8), now=103.0).action == "up"


def test_an_old_ready_job_scales_up_even_with_few_waiting() -> None:
    decision = Scaler(POLICY).decide(2, busy(ready=1, handlers=2, running=7, age_s=6.0), now=0.0)
    assert decision.action == "up" and "waited 6.0s" in decision.reason


def test_a_backlog_below_the_threshold_holds() -> None:
    # 3 ready for 2 free slots: 1.5 a slot, under 2, and young.
    assert Scaler(POLICY).decide(2, busy(ready=3, handlers=2, running=6, age_s=1.0), now=0.0).action == "hold"


def test_at_the_maximum_it_holds_and_says_so() -> None:
    decision = Scaler(POLICY).decide(4, busy(ready=100, handlers=4, running=16), now=0.0)
    assert decision.action == "hold" and "maximum 4" in decision.reason


def test_down_only_after_a_whole_quiet_period_and_one_step_a_period() -> None:
    scaler = Scaler(POLICY)
    quiet = busy(ready=0, handlers=4, running=2)
    assert scaler.decide(4, quiet, now=0.0).action == "hold"
    assert scaler.decide(4, quiet, now=9.0).action == "hold"
    down = scaler.decide(4, quiet, now=10.0)
    assert down.action == "down" and "quiet for 10s" in down.reason
    assert scaler.decide(3, busy(ready=0, handlers=3, running=2), now=11.0).action == "hold"
    assert scaler.decide(3, busy(ready=0, handlers=3, running=2), now=20.0).action == "down"


def test_no_flapping_a_burst_restarts_the_quiet_period() -> None:
    """Hysteresis: load that comes and goes keeps the handlers; only a long quiet removes one."""
    scaler = Scaler(POLICY)
    decisions = []
    for t in range(0, 60):
        # A burst every 8 s: quiet periods of 10 s never complete.
        signal = busy(ready=30, handlers=2, running=8) if t % 8 == 0 else busy(ready=0, handlers=2, running=1)
        decisions.append(scaler.decide(2, signal, now=float(t)).action)
    assert "down" not in decisions


def test_busy_slots_that_need_every_handler_hold() -> None:
    # 13 busy slots do not fit in 3 handlers of 4: no scale-down however long it lasts.
    scaler = Scaler(POLICY)
    assert all(scaler.decide(4, busy(ready=0, handlers=4, running=13), now=float(t)).action == "hold"
               for t in range(0, 100, 5))


def test_never_below_the_minimum_and_up_to_it_at_once() -> None:
    scaler = Scaler(Policy(min_handlers=2, max_handlers=3, quiet_s=1.0))
    assert all(scaler.decide(2, busy(ready=0, handlers=2, running=0), now=float(t)).action == "hold"
               for t in range(10))
    assert scaler.decide(1, busy(ready=0, handlers=1, running=0), now=0.0).action == "up"


def test_a_policy_needs_min_at_most_max() -> None:
    with pytest.raises(ValueError, match="min handlers"):
        Policy(min_handlers=3, max_handlers=2)
