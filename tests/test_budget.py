"""The byte budget: what it lets run at once, and the buffers it hands out and keeps."""

from __future__ import annotations

import asyncio

from projmig.budget import LARGER, ByteBudget

MiB = 1024 * 1024


def held(view: memoryview) -> bytearray:
    return view.obj  # type: ignore[return-value]


async def test_a_buffer_given_back_is_taken_again() -> None:
    budget = ByteBudget(64 * MiB)
    first = await budget.take(10 * MiB)
    first[:3] = b"abc"
    buffer = held(first)
    await budget.give(first)
    # a smaller request, down to 1/LARGER of it: the kept buffer (no new memory to fault in)
    again = await budget.take(10 * MiB // LARGER)
    assert held(again) is buffer and len(again) == 10 * MiB // LARGER
    assert budget.used == 10 * MiB  # (it counts whole)
    await budget.give(again)
    # much smaller: a buffer of its own, not a large one held for it
    small = await budget.take(MiB)
    assert held(small) is not buffer and len(held(small)) == MiB
    await budget.give(small)
    assert budget.used == 0


async def test_buffers_in_use_and_kept_stay_within_the_limit() -> None:
    budget = ByteBudget(16 * MiB)
    views = [await budget.take(4 * MiB) for _ in range(4)]
    assert budget.used == 16 * MiB
    waiting = asyncio.ensure_future(budget.take(3 * MiB))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the budget is full
    for view in views:
        await budget.give(view)
    three = await asyncio.wait_for(waiting, 1)
    assert len(held(three)) == 4 * MiB  # a kept one
    assert budget.used + budget._kept_bytes <= 16 * MiB
    # a size no kept buffer holds: room made among the kept ones
    other = await budget.take(6 * MiB)
    assert len(held(other)) == 6 * MiB and budget.used + budget._kept_bytes <= 16 * MiB
    await budget.give(other)
    await budget.give(three)
    assert budget.used == 0 and budget._kept_bytes <= 16 * MiB


async def test_a_kept_buffer_that_does_not_fit_the_room_left_is_not_taken() -> None:
    budget = ByteBudget(16 * MiB)
    large = await budget.take(8 * MiB)
    await budget.give(large)
    holding = await budget.take(9 * MiB)  # (no kept buffer holds it: the 8 MiB one dropped for room)
    small = await budget.take(5 * MiB)
    assert budget.used == 14 * MiB and len(held(small)) == 5 * MiB
    await budget.give(holding)
    await budget.give(small)


async def test_one_item_larger_than_the_budget_runs_alone_and_is_not_kept() -> None:
    budget = ByteBudget(4 * MiB)
    large = await budget.take(10 * MiB)
    waiting = asyncio.ensure_future(budget.take(1))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await budget.give(large)
    await budget.give(await asyncio.wait_for(waiting, 1))
    assert budget.used == 0 and budget._kept_bytes <= 4 * MiB
    assert all(len(b) <= 4 * MiB for b in budget._kept)


async def test_an_empty_object_takes_nothing() -> None:
    budget = ByteBudget(MiB)
    async with budget.buffer(0) as view:
        assert len(view) == 0 and budget.used == 0
    assert budget._kept_bytes == 0
