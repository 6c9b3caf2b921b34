"""Prove the destination holds what the plan says: objects (size + ETag after copying; SHA-256 of
the bytes on request) and rows (equal to the source modulo the documented remaps)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import VerificationError
from .graph import read_rows
from .objects import CopyOutcome, ObjectState, compare_with_destination
from .plan import MigrationPlan, ObjectCopy
from .s3 import Retrier
from .schema import GENERATED_COLUMNS, PROJECT_TABLES, reflect

# columns the destination sets itself (sequences, triggers) or that verification checks otherwise
VOLATILE_COLUMNS: dict[str, frozenset[str]] = {
    **GENERATED_COLUMNS,
    "projects_nodes": GENERATED_COLUMNS["projects_nodes"] | {"modified"},
    "projects_metadata": frozenset({"modified"}),
    "project_to_groups": frozenset({"created", "modified"}),
    "file_meta_data": frozenset({"file_size", "entity_tag"}),
}

ROW_KEYS: dict[str, tuple[str, ...]] = {
    "projects": ("uuid",),
    "projects_nodes": ("project_uuid", "node_id"),
    "projects_metadata": ("project_uuid",),
    "projects_to_jobs": ("project_uuid", "job_parent_resource_name"),
    "projects_extensions": ("project_uuid",),
    "projects_networks": ("project_uuid",),
    "project_to_groups": ("project_uuid", "gid"),
    "file_meta_data": ("file_id",),
}


async def verify_copies(dst: Any, bucket: str, copies: list[ObjectCopy], retry: Retrier) -> dict[str, ObjectState]:
    """Every planned object is in the destination with its source's size and ETag (or projmig's
    marker of the source ETag it was verified against); returns key -> destination state."""
    there, missing = await compare_with_destination(dst, bucket, copies, retry)
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
    return {o.dst_key: ObjectState(size=o.size, etag=o.etag) for o in there}


async def sha256_of(client: Any, bucket: str, key: str, retry: Retrier) -> str:
    async def digest() -> str:
        resp = await client.get_object(Bucket=bucket, Key=key)
        hasher = hashlib.sha256()
        async with resp["Body"] as body:
            async for chunk in body.iter_chunks(1024 * 1024):
                hasher.update(chunk)
        return hasher.hexdigest()

    return await retry(f"{key}: read for SHA-256", digest)


class Difference(BaseModel):
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class VerifyReport(BaseModel):
    projects: list[str]
    rows_checked: int = 0
    objects_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    differences: list[Difference] = Field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences


async def compare_rows(dst: AsyncConnection, plan: MigrationPlan, dest_objects: dict[str, ObjectState]) -> tuple[int, list[Difference]]:
    """Destination rows against the plan's rows (the source after the documented remaps)."""
    metadata = await reflect(dst, PROJECT_TABLES)
    actual_by_project = await read_rows(dst, metadata, [p.dst_uuid for p in plan.projects])
    differences: list[Difference] = []
    checked = 0
    for table in PROJECT_TABLES:
        keys = ROW_KEYS[table]
        volatile = VOLATILE_COLUMNS.get(table, frozenset())
        expected = {tuple(r[k] for k in keys): r for r in plan.rows.get(table, [])}
        actual = {
            tuple(r[k] for k in keys): r
            for rows in actual_by_project.values()
            for r in rows.get(table, [])
        }
        for key in expected.keys() - actual.keys():
            differences.append(Difference(where=f"{table} {key}", what="missing in the destination"))
        for key in actual.keys() - expected.keys():
            differences.append(Difference(where=f"{table} {key}", what="in the destination but not in the source"))
        for key in expected.keys() & actual.keys():
            checked += 1
            want, got = expected[key], actual[key]
            for column in sorted(set(want) & set(got) - volatile):
                if want[column] != got[column]:
                    differences.append(
                        Difference(where=f"{table} {key}", what=f"{column} is {got[column]!r}, expected {want[column]!r}")
                    )
            if table == "file_meta_data" and not want.get("is_directory") and not want.get("is_soft_link"):
                state = dest_objects.get(want.get("object_name") or "")
                if state is not None and (got["file_size"], got["entity_tag"]) != (state.size, state.etag):
                    differences.append(
                        Difference(
                            where=f"{table} {key}",
                            what=f"records {got['file_size']} bytes / ETag {got['entity_tag']}, the object has "
                            f"{state.size} bytes / ETag {state.etag}",
                        )
                    )
    return checked, differences


async def compare_objects_sha256(
    src: Any, dst: Any, src_bucket: str, dst_bucket: str, copies: list[ObjectCopy], retry: Retrier, concurrency: int = 8
) -> list[Difference]:
    slots = asyncio.Semaphore(concurrency)

    async def one(copy: ObjectCopy) -> Difference | None:
        async with slots:
            try:
                a, b = await asyncio.gather(
                    sha256_of(src, src_bucket, copy.src_key, retry), sha256_of(dst, dst_bucket, copy.dst_key, retry)
                )
            except Exception as exc:
                return Difference(where=copy.dst_key, what=f"cannot read: {exc}")
            return None if a == b else Difference(where=copy.dst_key, what=f"SHA-256 {b} != source {a}")

    return [d for d in await asyncio.gather(*(one(c) for c in copies)) if d is not None]
