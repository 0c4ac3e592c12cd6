"""The micro-batcher on its own: grouping, per-item outcomes, whole-batch failures."""

from __future__ import annotations

import asyncio

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
    out = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        if items == [0]:
            await out.wait()
        return items

    batcher: Batcher[int, int] = Batcher(send, window_s=60)
    first = asyncio.create_task(batcher.submit(0))  # nothing out: it goes at once, and stays out
    while not sent:
        await asyncio.sleep(0.001)
    waiting = asyncio.create_task(batcher.submit(9))  # behind it: a 60 s window
    await asyncio.sleep(0)
    out.set()
    await batcher.close()
    assert await first == 0 and await waiting == 9 and sent == [[0], [9]]
    # Nothing is left armed: the batcher still works after a close.
    assert await asyncio.wait_for(batcher.submit(1), timeout=5) == 1 and sent == [[0], [9], [1]]
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


async def test_a_call_with_no_batch_out_goes_at_once_and_calls_behind_one_travel_together() -> None:
    """Nagle's rule. With no batch on its way a call leaves on the loop's next turn, with the calls of that
    turn, even right after another batch came back (a handler reports a job finished a millisecond after
    it reported it started); calls made while a batch is out wait for it and then travel together."""
    sent: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()
    out = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        sent.append((loop.time(), items))
        if items == [3]:
            await out.wait()  # stays on its way until the test lets it land
        return items

    batcher: Batcher[int, int] = Batcher(send, max_items=100, window_s=0.5, max_hold_s=60)
    started = loop.time()
    assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [1, 2]
    assert [items for _, items in sent] == [[1, 2]] and sent[0][0] - started < 0.25  # no 0.5 s window
    right_after = loop.time()
    third = asyncio.create_task(batcher.submit(3))
    while len(sent) < 2:
        await asyncio.sleep(0.001)
    assert sent[1][1] == [3] and sent[1][0] - right_after < 0.25  # at once again, no window
    behind = asyncio.gather(batcher.submit(4), batcher.submit(5))
    await asyncio.sleep(0.6)  # their window is over, and [3] is still out: they are held
    assert [items for _, items in sent] == [[1, 2], [3]] and not behind.done()
    out.set()
    assert await third == 3 and await asyncio.wait_for(behind, timeout=5) == [4, 5]
    assert [items for _, items in sent] == [[1, 2], [3], [4, 5]]


async def test_without_nagle_even_a_quiet_batcher_waits_its_window_for_company() -> None:
    """``nagle=False`` (a handler's acks): a call made with no batch out still waits the window, and the
    calls of that window travel together."""
    sent: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def send(items: list[int]) -> list[int]:
        sent.append((loop.time(), items))
        return items

    batcher: Batcher[int, int] = Batcher(send, max_items=100, window_s=0.3, nagle=False)
    started = loop.time()
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.1)  # well inside the window: the first call is still waiting
    assert sent == [] and not first.done()
    assert await asyncio.gather(first, batcher.submit(2)) == [1, 2]
    assert [items for _, items in sent] == [[1, 2]] and sent[0][0] - started >= 0.29
    await batcher.close()


async def test_put_adds_an_item_without_waiting_and_close_still_sends_it() -> None:
    """``put`` (a handler's acks, which nobody awaits): the item is in the batch at once, its future carries
    the outcome to whoever looks, and a close sends it without waiting out the window."""
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int | BaseException]:
        sent.append(items)
        return [ValueError("lost") if item == 2 else item * 10 for item in items]

    batcher: Batcher[int, int] = Batcher(send, window_s=60, nagle=False)
    one, two = batcher.put(1), batcher.put(2)
    assert not one.done() and sent == []
    await asyncio.wait_for(batcher.close(), timeout=5)  # the 60 s window is not waited out
    assert sent == [[1, 2]] and one.result() == 10 and isinstance(two.exception(), ValueError)
