"""The destination transaction: all rows of the graph, or none; triggers respected; idempotent."""

from __future__ import annotations

import asyncpg
import pytest

from projmig import steps
from projmig.errors import InsertError
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import Simcore


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
    report = await steps.preflight(settings)
    plan = steps.make_plan(await steps.read_project_graph(settings, report), report)
    await steps.copy_objects(settings, [(c, None) for c in plan.copies])
    verified = await steps.verify_objects(settings, plan.copies)

    broken = plan.model_copy(deep=True)
    broken.rows["file_meta_data"][-1]["user_id"] = 987654  # no such user: the last insert fails
    with pytest.raises(InsertError, match="rolled back, nothing was inserted"):
        await steps.insert_rows(settings, broken, verified)
    for table in ("projects", "projects_nodes", "project_to_groups", "projects_metadata", "file_meta_data"):
        assert await count(simcore.destination_db, table) == 0, table

    result = await steps.insert_rows(settings, plan, verified)
    assert result.inserted["projects"] == 2 and result.already_present == []
    assert await count(simcore.destination_db, "file_meta_data") == len(plan.rows["file_meta_data"])
    # the owner-group trigger's row and ours did not clash
    assert await count(simcore.destination_db, "project_to_groups") == len(plan.rows["project_to_groups"])

    again = await steps.insert_rows(settings, plan, verified)
    assert again.rows == 0 and sorted(again.already_present) == sorted(sample.all_projects)
