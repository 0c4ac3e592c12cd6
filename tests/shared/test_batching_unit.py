"""The micro-batcher on its own: grouping, per-item outcomes, whole-batch failures."""

from __future__ import annotations

import asyncio

import pytest

from shared.batching import Batcher


async def test_calls_made_together_travel_together_and_get_their_own_outcome() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int | Exception]:
        sent.append(items)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(send, max_items=100, window_s=0.01)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)
    assert sent == [[0, 1, 2, 3, 4, 5]]
    assert outcomes[0::2] == [0, 20, 40]
    assert [str(o) for o in outcomes[1::2]] == ["odd 1", "odd 3", "odd 5"]
    assert (batcher.batches, batcher.items) == (1, 6)


async def test_a_full_batch_goes_at_once_without_waiting_for_the_window() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        return items

    batcher: Batcher[int, int] = Batcher(send, max_items=3, window_s=60)
    calls = [asyncio.create_task(batcher.submit(i)) for i in range(7)]
    # Two full batches leave at once, long before the 60 s window; the seventh item waits for it.
    assert await asyncio.wait_for(asyncio.gather(*calls[:6]), timeout=5) == list(range(6))
    assert sent == [[0, 1, 2], [3, 4, 5]] and not calls[6].done()
    await batcher.close()
    assert await calls[6] == 6 and sent[-1] == [6]


async def test_a_failed_send_fails_every_caller_of_that_batch() -> None:
    async def send(items: list[int]) -> list[int]:
        raise ConnectionError("registry down")

    batcher: Batcher[int, int] = Batcher(send, window_s=0)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]


async def test_close_sends_what_is_waiting() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        return items

    batcher: Batcher[int, int] = Batcher(send, window_s=60)
    waiting = asyncio.create_task(batcher.submit(9))
    await asyncio.sleep(0)
    await batcher.close()
    assert await waiting == 9 and sent == [[9]]
    with pytest.raises(asyncio.TimeoutError):  # nothing else is pending: a new submit waits for its window
        await asyncio.wait_for(asyncio.shield(batcher.submit(1)), timeout=0.01)
    await batcher.close()


async def test_while_a_batch_is_out_the_next_waits_for_it_and_takes_all_that_came_meanwhile() -> None:
    sent: list[list[int]] = []
    release = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        if len(sent) == 1:
            await release.wait()
        return items

    batcher: Batcher[int, int] = Batcher(send, max_items=100, window_s=0.001, max_hold_s=60)
    first = asyncio.create_task(batcher.submit(0))
    while not sent:
        await asyncio.sleep(0.001)
    later = [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
    await asyncio.sleep(0.02)  # many windows: the batch in flight still holds the next one back
    more = [asyncio.create_task(batcher.submit(i)) for i in range(4, 6)]
    await asyncio.sleep(0.01)
    assert sent == [[0]] and not any(task.done() for task in later + more)
    release.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later, *more), timeout=5) == list(range(6))
    assert sent == [[0], [1, 2, 3, 4, 5]]


async def test_max_in_flight_lets_that_many_batches_travel_together_and_full_ones_never_wait() -> None:
    sent: list[list[int]] = []
    release = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        await release.wait()
        return items

    batcher: Batcher[int, int] = Batcher(send, max_items=3, window_s=0.001, max_in_flight=2, max_hold_s=60)
    calls = [asyncio.create_task(batcher.submit(0))]
    await asyncio.sleep(0.01)
    calls.append(asyncio.create_task(batcher.submit(1)))
    await asyncio.sleep(0.01)
    calls += [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4, 5)]  # 2..4 fill a batch; 5 waits
    await asyncio.sleep(0.01)
    assert sent == [[0], [1], [2, 3, 4]]
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*calls), timeout=5) == list(range(6))
    assert sent[-1] == [5]


async def test_a_held_batch_goes_after_max_hold_s_when_the_one_in_flight_is_slow() -> None:
    sent: list[list[int]] = []
    stuck = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        if items == [0]:
            await stuck.wait()  # never set before the end: a call that does not come back
        return items

    batcher: Batcher[int, int] = Batcher(send, window_s=0.001, max_hold_s=0.05)
    first = asyncio.create_task(batcher.submit(0))
    while not sent:
        await asyncio.sleep(0.001)
    assert await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), timeout=5) == [1, 2]
    assert sent == [[0], [1, 2]] and not first.done()
    stuck.set()
    assert await first == 0


async def test_an_idle_batcher_sends_at_once_and_a_busy_one_waits_for_its_window() -> None:
    """After a quiet spell a call leaves on the loop's next turn, with the calls of that turn; calls that
    follow soon after a batch wait for the window, to travel together."""
    sent: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def send(items: list[int]) -> list[int]:
        sent.append((loop.time(), items))
        return items

    batcher: Batcher[int, int] = Batcher(send, max_items=100, window_s=0.5, idle_s=0.2)
    started = loop.time()
    assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [1, 2]
    assert sent == [(sent[0][0], [1, 2])] and sent[0][0] - started < 0.25  # no 0.5 s window
    # Right after it, the next calls wait out the window together.
    later = asyncio.gather(batcher.submit(3), asyncio.sleep(0.05), batcher.submit(4))
    soon = loop.time()
    assert (await later)[0::2] == [3, 4]
    assert [items for _, items in sent] == [[1, 2], [3, 4]] and sent[1][0] - soon >= 0.45
    await asyncio.sleep(0.3)  # quiet for longer than idle_s: at once again
    quiet = loop.time()
    assert await batcher.submit(5) == 5 and sent[2][0] - quiet < 0.25
