"""The rollback-migration flow after a migrate-project flow run, and migrating again afterwards:
the copy task's cached results (persisted across flow runs) must not hide the deleted objects."""

from __future__ import annotations

import re

import asyncpg
import pytest

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.migrate import migrate_project
from flows.progress import add_listener, remove_listener
from flows.rollback import rollback_migration
from projmig import commands
from projmig.insert import project_key
from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.schema import PROJECT_TABLES

from ..conftest import Simcore

pytestmark = pytest.mark.usefixtures("prefect")


async def count_rows(simcore: Simcore, uuids: list[str]) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        total = 0
        for table in PROJECT_TABLES:
            total += await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {project_key(table)} = ANY($1::varchar[])", uuids)
        return total
    finally:
        await conn.close()


class ProgressRecorder:
    """What the CLI's progress bar is told: totals, and bytes done since the last total."""

    def __init__(self) -> None:
        self.totals: list[tuple[int, int]] = []
        self.done = 0

    def total(self, objects: int, nbytes: int) -> None:
        self.totals.append((objects, nbytes))
        self.done = 0

    def advance(self, nbytes: int) -> None:
        self.done += nbytes


async def test_rollback_flow_then_migrate_again(fixture_simcore: Simcore) -> None:
    simcore = fixture_simcore  # the schemas are covered by tests/test_rollback.py; this is about the flow
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=4, file_size=4096, multipart_size=0, directory_objects=2, hidden_children=1, child_files=1,
        deployment_bound_rows=False, special_names=False, seed=7))
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    assert (await migrate_project(settings)).status == "migrated"
    rows = await count_rows(simcore, sample.all_projects)

    result = await rollback_migration(settings)
    assert "rolled back 2 projects" in result.headline()
    assert sum(result.rows.values()) == rows and result.objects_removed == len(sample.objects)
    assert await count_rows(simcore, sample.all_projects) == 0
    async with s3_client(simcore.destination_s3) as client:
        assert (await client.list_objects_v2(Bucket=simcore.destination_s3.bucket)).get("Contents", []) == []

    progress = ProgressRecorder()
    add_listener(progress)
    try:
        state = await migrate_project(settings, return_state=True)
    finally:
        remove_listener(progress)
    again = await state.result()
    assert again.status == "migrated", again.headline()
    # the cached copy results are stale: the objects are copied again, and progress counts them once
    assert progress.totals and progress.totals[-1][1] == sum(sample.objects.values())
    assert progress.done == progress.totals[-1][1]
    async with get_client() as client:
        shown = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["projmig-copy"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
        ))
    assert shown  # this run's progress (other tests' runs share the server, some stopped mid-copy)
    for artifact in shown:  # Prefect clamps the value to 100 (with a warning); the description is ours
        done, total, pct = re.search(r"^(\d+)/(\d+) objects, .* \((\d+)%\)$", artifact.description or "").groups()
        assert int(done) <= int(total) and int(pct) <= 100, artifact.description
    assert again.rows_inserted["projects"] == 2 and await count_rows(simcore, sample.all_projects) == rows
    verified = await commands.verify(settings, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
