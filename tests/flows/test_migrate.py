"""The migrate-project flow end to end on real PostgreSQL and S3 servers (both schemas; SeaweedFS and
Ceph, each as source and as destination)."""

from __future__ import annotations

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from ..conftest import Simcore

pytestmark = pytest.mark.usefixtures("prefect")


async def fetch(db, sql: str, *args):
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_whole_graph_migrates_then_a_rerun_is_a_no_op(provider_simcore: Simcore) -> None:
    simcore = provider_simcore
    spec = SampleSpec(share_with_gids=[simcore.source_ids.groups["lab"], simcore.source_ids.everyone_gid])
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=spec)
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})

    report = await migrate_project(settings)

    assert report.status == "migrated"
    assert {p.dst_uuid for p in report.projects} == set(sample.all_projects)
    assert report.objects == len(sample.objects) == report.objects_copied
    assert report.bytes_copied == sample.total_bytes
    assert report.rows_inserted["file_meta_data"] == 30 + 2 * 2
    assert report.rows_inserted["projects"] == 3
    assert report.left_behind == {"projects_to_folders": 1, "projects_to_wallet": 1, "projects_tags": 1}
    assert len(report.dropped_groups) == 1 and str(simcore.source_ids.groups["lab"]) in report.dropped_groups[0]

    # the documented remaps, row by row
    dst = simcore.destination_db
    carol = simcore.destination_ids.users["carol"]
    projects = {r["uuid"]: r for r in await fetch(dst, "SELECT * FROM projects")}
    sources = {r["uuid"]: r for r in await fetch(simcore.source_db, "SELECT * FROM projects")}
    assert set(projects) == set(sample.all_projects)
    for uuid, row in projects.items():
        assert row["prj_owner"] == carol.id and row["workspace_id"] is None
        assert row["creation_date"] == sources[uuid]["creation_date"]
        assert row["last_change_date"] == sources[uuid]["last_change_date"]
    access = await fetch(dst, "SELECT project_uuid, gid, read, write, delete FROM project_to_groups WHERE project_uuid = $1", sample.uuid)
    assert {(r["gid"], r["read"], r["write"], r["delete"]) for r in access} == {
        (carol.primary_gid, True, True, True),
        (simcore.destination_ids.everyone_gid, True, False, False),
    }
    files = await fetch(dst, "SELECT * FROM file_meta_data")
    assert len(files) == 34
    assert all(f["user_id"] == carol.id and f["upload_id"] is None for f in files)
    assert {f["bucket_name"] for f in files} == {simcore.destination_s3.bucket}
    parents = await fetch(dst, "SELECT project_uuid, parent_project_uuid FROM projects_metadata WHERE project_uuid = ANY($1::varchar[])", sample.children)
    assert {r["parent_project_uuid"] for r in parents} == {sample.uuid, sample.children[0]}
    assert await fetch(dst, "SELECT * FROM projects_to_folders") == []

    verified = await commands.verify(settings, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    assert verified.objects_checked == len(sample.objects)

    again = await migrate_project(settings)
    assert again.status == "already-migrated"
    assert again.bytes_copied == 0 and again.rows == 0 and again.copy_task_runs == 0
    assert "nothing to do" in again.headline()


async def test_dry_run_writes_nothing(fixture_simcore: Simcore) -> None:
    sample = await build_sample_project(fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
                                        spec=SampleSpec(multipart_size=0, files=5, hidden_children=0))
    report = await migrate_project(fixture_simcore.settings(sample.uuid), dry_run=True)
    assert report.status == "dry-run" and report.objects == len(sample.objects)
    assert report.rows_planned["projects"] == 1
    assert await fetch(fixture_simcore.destination_db, "SELECT uuid FROM projects") == []
    async with s3_client(fixture_simcore.destination_s3) as client:
        bucket = fixture_simcore.destination_s3.bucket
        assert (await client.list_objects_v2(Bucket=bucket)).get("Contents", []) == []
        assert (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", []) == []


async def test_an_object_deleted_in_a_migrated_project_is_reported_not_restored(fixture_simcore: Simcore) -> None:
    """Once migrated, the project is the destination's: a rerun says what differs and writes nothing."""
    sample = await build_sample_project(fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
                                        spec=SampleSpec(multipart_size=0, files=4, hidden_children=0))
    settings = fixture_simcore.settings(sample.uuid)
    await migrate_project(settings)
    victim = sorted(sample.objects)[0]
    async with s3_client(fixture_simcore.destination_s3) as client:
        await client.delete_object(Bucket=fixture_simcore.destination_s3.bucket, Key=victim)
    report = await migrate_project(settings)
    assert report.status == "already-migrated" and report.objects_copied == 0 and report.rows == 0
    assert any(w.startswith(f"{sample.uuid} (already migrated, left as it is): 1 of ") and f"{victim} (missing;" in w
               for w in report.warnings), report.warnings
    verified = await commands.verify(settings, deep=False)
    assert [d.where for d in verified.differences] == [victim]


async def test_the_flows_insert_runs_while_its_final_listing_does(fixture_simcore: Simcore) -> None:
    """In Prefect as in the library: the insert-rows task run starts before the compare-destination
    task run (the listing that verifies the copies) ends, and ends after it (its COMMIT waits)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    simcore = fixture_simcore
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                        spec=SampleSpec(multipart_size=0, files=20, hidden_children=0))
    state = await migrate_project(simcore.settings(sample.uuid), return_state=True)
    report = await state.result()
    assert report.status == "migrated"
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}  # ("compare-destination-1a2", ...)
    listing, insert = by_name["compare-destination"], by_name["insert-rows"]
    assert listing.state.is_completed() and insert.state.is_completed()
    assert insert.start_time < listing.end_time <= insert.end_time
    # each copy task run is named for what it copies ("copy 12 files", "copy <name>" for one object)
    copies = [r.name.split(" ") for r in runs if r.name.startswith("copy ")]
    assert copies and sum(int(w[1]) if w[-1] == "files" else 1 for w in copies) == report.objects_copied > 1
