"""The bytes a run's copies hold in memory at once: one budget, shared by its copiers and their parts."""

from __future__ import annotations

import asyncio


class ByteBudget:
    """Bounds the bytes held in memory at once; one item larger than the budget may run alone."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._changed:
            self.used -= n
            self._changed.notify_all()
