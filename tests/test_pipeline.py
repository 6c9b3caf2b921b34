"""The pipeline's streamed end (issue 26): the listing that verifies the copies runs while the rows
are inserted, and each root commits only once that listing saw its objects as the copies reported
them. Real servers; the test's hands are in the listing step (what a user deleting an object, or a
destination that cannot be listed, does at that moment)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from projmig import pipeline
from projmig.errors import TransferError
from projmig.run import MigrationRun
from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import Simcore

SPEC = SampleSpec(files=6, multipart_size=0, directory_objects=2, hidden_children=1)


async def projects_in(db) -> set[str]:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return {r["uuid"] for r in await conn.fetch("SELECT uuid FROM projects")}
    finally:
        await conn.close()


async def file_rows(db) -> dict[str, tuple[int, str]]:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return {r["object_name"]: (r["file_size"], r["entity_tag"])
                for r in await conn.fetch("SELECT object_name, file_size, entity_tag FROM file_meta_data WHERE NOT is_directory")}
    finally:
        await conn.close()


def started_together(calls: list[str]) -> bool:
    """The listing and the gated insert began before the listing ended (in either order)."""
    return sorted(calls) == ["insert gated", "listing begins", "listing ends"] and calls[-1] == "listing ends"


class Watched(pipeline.Steps):
    """The library's steps; the verifying listing (a compare without a listing in hand) runs
    ``before_listing`` first, and the calls are recorded in order."""

    def __init__(self, before_listing=None) -> None:
        super().__init__(logging.getLogger("projmig.test"))
        self.before_listing = before_listing
        self.calls: list[str] = []

    async def compare(self, run, copies, listed=None):
        if listed is not None:
            return await super().compare(run, copies, listed)
        self.calls.append("listing begins")
        if self.before_listing is not None:
            await self.before_listing(run, copies)
        try:
            return await super().compare(run, copies)
        finally:
            self.calls.append("listing ends")

    async def insert_roots(self, run, plan, verified, roots, confirm=None):
        self.calls.append(f"insert {'gated' if confirm else 'ungated'}")
        return await super().insert_roots(run, plan, verified, roots, confirm)


async def test_the_rows_wait_uncommitted_for_the_listing_that_verifies_the_copies(simcore: Simcore) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SPEC)
    seen_while_listing: list[set[str]] = []

    async def slow_listing(run, copies):
        await asyncio.sleep(2.0)  # the insert, started meanwhile, reaches its COMMIT and waits
        seen_while_listing.append(await projects_in(simcore.destination_db))

    steps = Watched(slow_listing)
    async with MigrationRun.open(simcore.settings(sample.uuid, source={"include_hidden": True})) as run:
        report = await pipeline.migrate(run, steps)

    assert report.status == "migrated" and report.objects_copied == len(sample.objects)
    # one insert, started before the listing ended, committed after it: nothing was visible meanwhile
    assert started_together(steps.calls[:3]) and len(steps.calls) == 3
    assert seen_while_listing == [set()]
    assert await projects_in(simcore.destination_db) == {p.dst_uuid for p in report.projects}
    assert len(report.projects) == len(sample.all_projects)
    rows = await file_rows(simcore.destination_db)
    async with s3_client(simcore.destination_s3) as client:
        for key, (size, etag) in rows.items():
            head = await client.head_object(Bucket=simcore.destination_s3.bucket, Key=key)
            assert (head["ContentLength"], head["ETag"].strip('"')) == (size, etag), key


async def test_an_object_gone_before_the_listing_is_copied_again_and_its_project_inserted_after(
    simcore: Simcore, caplog: pytest.LogCaptureFixture
) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SPEC)
    deleted: list[str] = []

    async def delete_one(run, copies):
        if not deleted:  # (only before the first verifying listing)
            deleted.append(copies[0].dst_key)
            async with s3_client(simcore.destination_s3) as client:
                await client.delete_object(Bucket=simcore.destination_s3.bucket, Key=deleted[0])

    steps = Watched(delete_one)
    caplog.set_level(logging.WARNING, "projmig.test")
    async with MigrationRun.open(simcore.settings(sample.uuid, source={"include_hidden": True})) as run:
        report = await pipeline.migrate(run, steps)

    assert report.status == "migrated", report.failed
    # the gated insert was rolled back (the listing missed an object), the object copied once more,
    # listed again, and the rows inserted from that listing
    assert started_together(steps.calls[:3]) and steps.calls[3:] == ["listing begins", "listing ends", "insert ungated"]
    assert "did not confirm every object as copied" in caplog.text
    rows = await file_rows(simcore.destination_db)
    assert deleted[0] in rows
    async with s3_client(simcore.destination_s3) as client:
        head = await client.head_object(Bucket=simcore.destination_s3.bucket, Key=deleted[0])
    assert (head["ContentLength"], head["ETag"].strip('"')) == rows[deleted[0]]
    assert len(await projects_in(simcore.destination_db)) == len(sample.all_projects)


async def test_a_destination_that_cannot_be_listed_after_the_copy_gets_no_row(simcore: Simcore) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SPEC)

    async def unlistable(run, copies):
        await asyncio.sleep(0.5)
        raise TransferError("destination bucket: listing refused (AccessDenied)")

    steps = Watched(unlistable)
    async with MigrationRun.open(simcore.settings(sample.uuid, source={"include_hidden": True})) as run:
        with pytest.raises(TransferError, match="listing refused"):
            await pipeline.migrate(run, steps)
    assert "insert gated" in steps.calls
    assert await projects_in(simcore.destination_db) == set()
    assert await file_rows(simcore.destination_db) == {}
