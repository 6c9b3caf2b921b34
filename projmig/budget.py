"""The bytes a run's copies hold in memory at once: one budget, shared by its copiers and their parts,
and the buffers that hold them."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .limits import MiB

LARGER = 2  # a kept buffer serves a request for at least 1/LARGER of it (or for all but a MiB of it)


class ByteBudget:
    """Bounds the bytes held in memory at once; one item larger than the budget may run alone.

    It hands out the buffers that hold them (:meth:`take`, :meth:`give`) and keeps those given back
    for the next takers: memory written into again is not faulted in and zeroed by the kernel anew,
    which cost ~0.6 ms of CPU a MiB on the machine of the bench (a VM). A buffer counts whole while
    in use (it may be larger than what it holds), and the buffers in use and those kept together
    stay within the limit: a kept buffer is dropped to make room for a new one."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0  # bytes of the buffers in use
        self._changed = asyncio.Condition()
        self._kept: list[bytearray] = []  # smallest first
        self._kept_bytes = 0

    async def take(self, n: int) -> memoryview:
        """A writable buffer of ``n`` bytes, once the budget has room for them; :meth:`give` it back."""
        if n == 0:
            return memoryview(b"")
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            held = self._reuse(n)
            if held is None:
                self._trim(self.limit - self.used - n)
                held = bytearray(n)
            self.used += len(held)
        return memoryview(held)[:n]

    async def give(self, view: memoryview) -> None:
        """A buffer from :meth:`take` back (nothing may use it any more): kept for the next taker."""
        held = view.obj
        if not isinstance(held, bytearray):  # (an empty one)
            return
        async with self._changed:
            self.used -= len(held)
            self._kept.insert(bisect.bisect_left(self._kept, len(held), key=len), held)
            self._kept_bytes += len(held)
            self._trim(self.limit - self.used)
            self._changed.notify_all()

    @asynccontextmanager
    async def buffer(self, n: int) -> AsyncIterator[memoryview]:
        """:meth:`take` for the block, then :meth:`give`."""
        view = await self.take(n)
        try:
            yield view
        finally:
            await self.give(view)

    def _reuse(self, n: int) -> bytearray | None:
        """The smallest kept buffer that holds ``n`` bytes, not much larger, and fits the budget now."""
        at = bisect.bisect_left(self._kept, n, key=len)
        if at == len(self._kept):
            return None
        size = len(self._kept[at])
        if (size > LARGER * n and size - n > MiB) or (self.used and self.used + size > self.limit):
            return None
        self._kept_bytes -= size
        return self._kept.pop(at)

    def _trim(self, room: int) -> None:
        """Drop kept buffers, largest first, until they fit in ``room`` bytes."""
        while self._kept and self._kept_bytes > room:
            self._kept_bytes -= len(self._kept.pop())
