"""Many projects in one flow run (all projects of a source user): files of all projects copied in
shared task runs, each root project's rows in a transaction of its own, failures reported per
project without rolling the others back (the run ends failed, with its report), and a rerun that
finishes only what is missing."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.pipeline import MigrationFailed
from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from ..conftest import Simcore
from ..faults.proxy import FaultProxy

pytestmark = pytest.mark.usefixtures("prefect")


@pytest.fixture
def dst_s3_proxy(simcore: Simcore) -> Iterator[FaultProxy]:
    """The destination's S3 server behind a proxy that can answer chosen requests with S3 errors."""
    with FaultProxy("127.0.0.1", simcore.sandbox.destination.s3.s3_port, name="destination-s3", http=True) as proxy:
        yield proxy


async def query(db, sql: str, *args) -> list:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        if not args:
            await conn.execute(sql)  # several statements
            return []
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_each_project_in_its_own_transaction_failures_reported_and_a_rerun_finishes(
    simcore: Simcore, dst_s3_proxy: FaultProxy
) -> None:
    def spec(seed: int, hidden_children: int = 0) -> SampleSpec:
        return SampleSpec(seed=seed, name=f"study {seed}", files=3, file_size=4096, multipart_size=0, directory_objects=0,
                          soft_link=False, hidden_children=hidden_children, child_files=1, deployment_bound_rows=False,
                          special_names=False)

    a = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                   spec=spec(1, hidden_children=1))
    b = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=spec(2))
    c = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=spec(3))
    settings = simcore.settings(
        None, source={"owner_user_id": simcore.alice, "include_hidden": True},
        destination={"s3": simcore.destination_s3.model_copy(update={"endpoint": dst_s3_proxy.endpoint})},
    )
    # b: the destination refuses its objects; c: the destination refuses its nodes (inside c's transaction)
    dst_s3_proxy.fail_requests(10_000, 403, "AccessDenied", match=lambda method, target: method == "PUT" and b.uuid in target)
    await query(simcore.destination_db, f"""
        CREATE FUNCTION refuse_c() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'test refuses the nodes of %', NEW.project_uuid; END $$;
        CREATE TRIGGER refuse_c BEFORE INSERT ON projects_nodes FOR EACH ROW
            WHEN (NEW.project_uuid = '{c.uuid}') EXECUTE FUNCTION refuse_c();""")

    # some roots failed: the run ends failed (the rule for any number of roots), its report says which
    with pytest.raises(MigrationFailed) as failed:
        await migrate_project(settings)
    report = failed.value.report
    assert set(failed.value.causes) == {b.uuid, c.uuid} and not failed.value.transient
    assert str(failed.value).startswith("partly migrated: 2 of 3 root projects failed")

    assert report.status == "partial", report.headline()
    assert "2 of 3 root projects failed" in report.headline()
    assert set(report.failed) == {b.uuid, c.uuid}
    assert "AccessDenied" in report.failed[b.uuid] and "objects not copied" in report.failed[b.uuid]
    assert "test refuses the nodes of" in report.failed[c.uuid] and "rolled back" in report.failed[c.uuid]
    assert report.copy_task_runs == 1  # the files of all three projects went in one copy task run
    assert report.rows_inserted["projects"] == 2  # a and its hidden job
    projects = {r["uuid"] for r in await query(simcore.destination_db, "SELECT uuid FROM projects WHERE $1", True)}
    assert projects == set(a.all_projects)
    for table, key in (("project_to_groups", "project_uuid"), ("file_meta_data", "project_id"),
                       ("projects_metadata", "project_uuid")):  # c's transaction left nothing, not even the trigger's row
        rows = await query(simcore.destination_db, f"SELECT 1 FROM {table} WHERE {key} = ANY($1::varchar[])", [b.uuid, c.uuid])
        assert rows == [], table
    async with s3_client(simcore.destination_s3) as client:
        listed = await client.list_objects_v2(Bucket=simcore.destination_s3.bucket)
        keys = {o["Key"] for o in listed.get("Contents", [])}
    assert set(a.objects) | set(c.objects) <= keys and not set(b.objects) & keys

    dst_s3_proxy.heal()
    await query(simcore.destination_db, "DROP TRIGGER refuse_c ON projects_nodes")
    again = await migrate_project(settings)

    assert again.status == "migrated" and again.failed == {}, again.headline()
    assert sorted(again.already_present) == sorted(a.all_projects)
    assert again.rows_inserted["projects"] == 2  # b and c, nothing of a again
    # a was migrated: left as it is, its objects not even compared; c's objects were there already
    assert again.objects_copied == len(b.objects) and again.objects_skipped == len(c.objects)
    assert "; 2 already migrated, left as they are" in again.headline()
    verified = await commands.verify(settings, deep=False)
    assert verified.equal, [str(d) for d in verified.differences]
    assert sorted(verified.projects) == sorted(a.all_projects + b.all_projects + c.all_projects)

    third = await migrate_project(settings)
    assert third.status == "already-migrated" and third.copy_task_runs == 0 and third.rows == 0
