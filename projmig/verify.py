"""Prove the destination holds what the plan says: objects (size + ETag after copying; SHA-256 of
the bytes on request). Rows are compared by :mod:`projmig.rowcheck`, which shares nothing with the insert."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from .errors import VerificationError
from .buckets import ObjectState
from .copier import CopyOutcome
from .objects import compare_with_destination
from .plan import ObjectCopy
from .rowcheck import Difference
from .s3 import Retrier
from .s3data import DataPath


async def verify_copies(
    dst: Any, bucket: str, copies: list[ObjectCopy], retry: Retrier, *, data: DataPath | None = None
) -> dict[str, ObjectState]:
    """Every planned object is in the destination with its source's size and ETag (or projmig's
    marker of the source ETag it was verified against); returns key -> destination state."""
    there, missing = await compare_with_destination(dst, bucket, copies, retry, data=data)
    return verified_states(there, missing, len(copies))


def verified_states(
    there: list[CopyOutcome], missing: list[tuple[ObjectCopy, ObjectState | None]], total: int
) -> dict[str, ObjectState]:
    """key -> destination state from a comparison of every planned object; any mismatch fails."""
    if missing:
        shown = ", ".join(
            f"{c.dst_key} ({'missing' if s is None else f'{s.size} bytes, ETag {s.etag}'}; source {c.size} bytes, ETag {c.etag})"
            for c, s in missing[:3]
        )
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise VerificationError(f"{len(missing)} of {total} objects do not match their source: {shown}{more}")
    return states_of(there)


def states_of(outcomes: list[CopyOutcome]) -> dict[str, ObjectState]:
    """destination key -> the state its outcome (a copy's, or a listing's) gives."""
    return {o.dst_key: ObjectState(size=o.size, etag=o.etag) for o in outcomes}




class VerifyReport(BaseModel):
    projects: list[str]
    rows_checked: int = 0
    objects_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    differences: list[Difference] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # what the row check did not compare, and why

    @property
    def equal(self) -> bool:
        return not self.differences


async def compare_objects_sha256(
    src: DataPath, dst: DataPath, src_bucket: str, dst_bucket: str, copies: list[ObjectCopy], retry: Retrier,
    concurrency: int = 8,
) -> list[Difference]:
    """SHA-256 of every object's bytes on both sides (``src``/``dst``: :mod:`projmig.s3data` paths,
    the objects streamed through the hash), ``concurrency`` objects at once."""
    pending = iter(copies)
    differences: list[Difference] = []

    async def one(copy: ObjectCopy) -> Difference | None:
        try:
            a, b = await asyncio.gather(
                retry(f"{copy.src_key}: read for SHA-256", lambda: src.sha256(src_bucket, copy.src_key)),
                retry(f"{copy.dst_key}: read for SHA-256", lambda: dst.sha256(dst_bucket, copy.dst_key)),
            )
        except Exception as exc:
            return Difference(where=copy.dst_key, what=f"cannot read: {exc}")
        return None if a == b else Difference(where=copy.dst_key, what=f"SHA-256 {b} != source {a}")

    async def worker() -> None:
        for copy in pending:  # the workers share one iterator: each object is read once
            found = await one(copy)
            if found is not None:
                differences.append(found)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    order = {c.dst_key: i for i, c in enumerate(copies)}
    return sorted(differences, key=lambda d: order[d.where])
