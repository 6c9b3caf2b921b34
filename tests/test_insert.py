"""The destination transaction: all rows of the graph, or none; triggers respected; idempotent."""

from __future__ import annotations

import asyncpg
import pytest

from projmig import steps
from projmig.errors import InsertError
from projmig.insert import COPY_FROM_ROWS
from projmig.buckets import ObjectState
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.run import MigrationRun
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import Simcore, insert_rows, verified_objects


async def count(db, table: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await conn.close()


async def test_a_failing_row_rolls_back_every_row(simcore: Simcore) -> None:
    sample = await build_sample_project(
        simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
        spec=SampleSpec(files=4, multipart_size=0, directory_objects=2, hidden_children=1),
    )
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    async with MigrationRun.open(settings) as run:
        report = await steps.preflight(run)
        plan = steps.make_plan(await steps.read_graph(run, report), report)
        await steps.copy_objects(run.transfers, [(c, None) for c in plan.copies])
        verified = await verified_objects(run, plan.copies)

        broken = plan.model_copy(deep=True)
        broken.rows["file_meta_data"][-1]["user_id"] = 987654  # no such user: the last insert fails
        with pytest.raises(InsertError, match="rolled back, nothing was inserted"):
            await insert_rows(run, broken, verified)
        for table in ("projects", "projects_nodes", "project_to_groups", "projects_metadata", "file_meta_data"):
            assert await count(simcore.destination_db, table) == 0, table

        result = await insert_rows(run, plan, verified)
        assert result.inserted["projects"] == 2 and result.already_present == []
        assert await count(simcore.destination_db, "file_meta_data") == len(plan.rows["file_meta_data"])
        # the owner-group trigger's row and ours did not clash
        assert await count(simcore.destination_db, "project_to_groups") == len(plan.rows["project_to_groups"])

        again = await insert_rows(run, plan, verified)
    assert again.rows == 0 and sorted(again.already_present) == sorted(sample.all_projects)


# columns the insert sets for the destination (owner, bucket, no upload) or from the verified objects
REMAPPED = ("user_id", "bucket_name", "upload_id", "upload_expires_at")


async def file_rows(db, project: str) -> dict[str, dict]:
    """file_id -> the row as PostgreSQL renders it (to_jsonb), without the remapped columns."""
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        rows = await conn.fetch(
            "SELECT file_id, (to_jsonb(f) - $2::text[])::text AS row FROM file_meta_data f WHERE project_id = $1",
            project, list(REMAPPED),
        )
        return {r["file_id"]: r["row"] for r in rows}
    finally:
        await conn.close()


async def test_many_file_rows_go_in_with_copy_all_or_nothing(simcore: Simcore) -> None:
    files = COPY_FROM_ROWS + 150  # above the threshold: file_meta_data goes in with COPY
    sample = await build_sample_project(
        simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
        spec=SampleSpec(nodes=3, files=files, file_size=16, exact_file_size=True, multipart_size=0,
                        directory_objects=5, hidden_children=0, special_names=True),
    )
    settings = simcore.settings(sample.uuid)
    async with MigrationRun.open(settings) as run:
        report = await steps.preflight(run)
        plan = steps.make_plan(await steps.read_graph(run, report), report)
        verified = {c.dst_key: ObjectState(size=c.size, etag=c.etag) for c in plan.copies}

        broken = plan.model_copy(deep=True)
        broken.rows["file_meta_data"][-1]["user_id"] = 987654  # no such user: the COPY fails on its last row
        with pytest.raises(InsertError, match="rolled back, nothing was inserted"):
            await insert_rows(run, broken, verified)
        for table in ("projects", "projects_nodes", "file_meta_data"):
            assert await count(simcore.destination_db, table) == 0, table

        result = await insert_rows(run, plan, verified)
    assert result.inserted["file_meta_data"] == files + 2  # + the directory and the soft link
    # every column as the source has it (in PostgreSQL's own rendering), the remapped ones as planned
    assert await file_rows(simcore.destination_db, sample.uuid) == await file_rows(simcore.source_db, sample.uuid)
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        remapped = await conn.fetch(
            "SELECT DISTINCT user_id, bucket_name, upload_id IS NULL AS no_upload FROM file_meta_data WHERE project_id = $1",
            sample.uuid,
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in remapped] == [(simcore.carol, simcore.destination_s3.bucket, True)]
