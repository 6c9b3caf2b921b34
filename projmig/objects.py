"""The copy step's decisions: which planned objects the destination already holds, and how the rest
is cut into units of work.

- What is already in the destination is decided from one listing per destination prefix (size +
  ETag; 1,000 keys per call), not per-object HEADs; an object of the same size and another ETag
  counts only where projmig re-chunked it or verified it by SHA-256 and marked it with the source
  ETag it was verified against (one HEAD each).
- The rest is batched: a large object alone, small ones together (bounded by count and bytes), so
  that a task run carries enough work to be worth its orchestration. :mod:`projmig.copier` copies them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .buckets import ObjectState, list_prefix
from .copier import MARKER, CopyOutcome
from .plan import ObjectCopy
from .s3 import Retrier
from .s3data import DataPath


async def source_marker(client: Any, bucket: str, key: str, retry: Retrier) -> str | None:
    """The source ETag a destination object was verified against (objects re-chunked by projmig)."""
    head = await retry(f"HEAD {key}", lambda: client.head_object(Bucket=bucket, Key=key))
    return (head.get("Metadata") or {}).get(MARKER)


async def compare_with_destination(
    dst: Any, bucket: str, copies: list[ObjectCopy], retry: Retrier, *, concurrency: int = 16,
    listed: dict[str, dict[str, ObjectState]] | None = None, data: DataPath | None = None,
) -> tuple[list[CopyOutcome], list[tuple[ObjectCopy, ObjectState | None]]]:
    """(already there, still to copy), from one listing per destination prefix (``listed``:
    prefix -> its listing, taken earlier in this run; other prefixes are listed now, through
    ``data``'s listing if given).

    Same size and ETag: there. Same size, other ETag: there only if projmig re-chunked it or
    verified it by SHA-256, and marked it with the source ETag it was verified against (one HEAD each).
    """
    listing: dict[str, ObjectState] = {}
    for prefix in sorted({top_prefix(c.dst_key) for c in copies}):
        if listed is not None and prefix in listed:
            listing.update(listed[prefix])
        else:
            listing.update(await list_prefix(dst, bucket, prefix, retry, data=data))
    there: list[CopyOutcome] = []
    todo: list[tuple[ObjectCopy, ObjectState | None]] = []
    slots = asyncio.Semaphore(concurrency)

    async def by_marker(item: ObjectCopy, state: ObjectState) -> bool:
        async with slots:
            return await source_marker(dst, bucket, item.dst_key, retry) == item.etag

    checks = {}
    for item in copies:
        state = listing.get(item.dst_key)
        if state is not None and state.size == item.size and state.etag != item.etag:
            checks[item.dst_key] = asyncio.ensure_future(by_marker(item, state))
    marked = dict(zip(checks, await asyncio.gather(*checks.values()))) if checks else {}
    for item in copies:
        state = listing.get(item.dst_key)
        if state is not None and state.size == item.size and (state.etag == item.etag or marked.get(item.dst_key)):
            there.append(
                CopyOutcome(src_key=item.src_key, dst_key=item.dst_key, size=item.size, etag=state.etag, action="skipped")
            )
        else:
            todo.append((item, state))
    return there, todo


def top_prefix(key: str) -> str:
    head, sep, _ = key.partition("/")
    return head + sep


def batch_transfers(
    items: list[tuple[ObjectCopy, ObjectState | None]], *, large: int, max_files: int, max_bytes: int
) -> list[list[tuple[ObjectCopy, ObjectState | None]]]:
    """Group transfers into units of work: a large object alone, small ones together (bounded by
    count and bytes), largest first so that the long transfers start early."""
    batches: list[list[tuple[ObjectCopy, ObjectState | None]]] = []
    current: list[tuple[ObjectCopy, ObjectState | None]] = []
    current_bytes = 0
    for item in sorted(items, key=lambda i: (-i[0].size, i[0].dst_key)):
        if item[0].size >= large:
            batches.append([item])
            continue
        if current and (len(current) >= max_files or current_bytes + item[0].size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += item[0].size
    if current:
        batches.append(current)
    return batches
