"""The destination transaction: all rows of the graph, or none; triggers respected; idempotent."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets

import asyncpg
import pytest
from pydantic import SecretStr

from projmig import commands, steps
from projmig.errors import InsertError
from projmig.insert import COPY_FROM_ROWS, SourceChanged, project_key
from projmig.s3 import s3_client
from projmig.schema import TABLE_RULES
from projmig.buckets import ObjectState
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.run import MigrationRun
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import Simcore, hold_inserts, insert_is_held, insert_rows, migrate_by_steps, verified_objects, wait_until


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


# -- a source that changes between the graph's snapshot and COMMIT --------------------------------

CHANGES: dict[tuple[str, str], tuple[str | None, str]] = {
    # (table, what happens to a row of it): (SQL before the run, SQL while the insert is held), with
    # {root}, {child} (its hidden job), {everyone} (the source's Everyone group) and {node} (a node of
    # the root no other row points at). projects has one row per project: it is only changed, and by
    # a column whose change does not move last_change_date.
    ("projects", "changed"): (None, "UPDATE projects SET description = 'described in the source' WHERE uuid = '{root}'"),
    ("projects_nodes", "added"): (None, "INSERT INTO projects_nodes (node_id, project_uuid, key, version, label) VALUES "
                                        "('00000000-0000-4000-8000-00000000000a', '{root}', 'simcore/services/comp/added', '1.0.0', 'added')"),
    ("projects_nodes", "changed"): (None, "UPDATE projects_nodes SET label = 'edited' WHERE project_uuid = '{root}' AND node_id = '{node}'"),
    ("projects_nodes", "deleted"): (None, "DELETE FROM projects_nodes WHERE project_uuid = '{root}' AND node_id = '{node}'"),
    ("projects_metadata", "added"): ("DELETE FROM projects_metadata WHERE project_uuid = '{root}'",
                                     "INSERT INTO projects_metadata (project_uuid, custom) VALUES ('{root}', '{{\"added\": 1}}')"),
    ("projects_metadata", "changed"): (None, "UPDATE projects_metadata SET custom = '{{\"changed\": 1}}' WHERE project_uuid = '{root}'"),
    ("projects_metadata", "deleted"): (None, "DELETE FROM projects_metadata WHERE project_uuid = '{root}'"),
    ("projects_to_jobs", "added"): (None, "INSERT INTO projects_to_jobs (project_uuid, job_parent_resource_name, "
                                          "storage_assets_deleted) VALUES ('{root}', 'solvers/s/releases/1/jobs/{root}', false)"),
    ("projects_to_jobs", "changed"): (None, "UPDATE projects_to_jobs SET storage_assets_deleted = true WHERE project_uuid = '{child}'"),
    ("projects_to_jobs", "deleted"): (None, "DELETE FROM projects_to_jobs WHERE project_uuid = '{child}'"),
    ("projects_extensions", "added"): ("DELETE FROM projects_extensions WHERE project_uuid = '{root}'",
                                       "INSERT INTO projects_extensions (project_uuid, allow_guests_to_push_states_and_output_ports) "
                                       "VALUES ('{root}', true)"),
    ("projects_extensions", "changed"): (None, "UPDATE projects_extensions SET allow_guests_to_push_states_and_output_ports = false "
                                               "WHERE project_uuid = '{root}'"),
    ("projects_extensions", "deleted"): (None, "DELETE FROM projects_extensions WHERE project_uuid = '{root}'"),
    ("projects_networks", "added"): ("DELETE FROM projects_networks WHERE project_uuid = '{root}'",
                                     "INSERT INTO projects_networks (project_uuid, networks_with_aliases) VALUES ('{root}', '{{}}')"),
    ("projects_networks", "changed"): (None, "UPDATE projects_networks SET networks_with_aliases = '{{\"n\": {{}}}}' "
                                             "WHERE project_uuid = '{root}'"),
    ("projects_networks", "deleted"): (None, "DELETE FROM projects_networks WHERE project_uuid = '{root}'"),
    ("project_to_groups", "added"): (None, "INSERT INTO project_to_groups (project_uuid, gid, read) VALUES ('{root}', {everyone}, true)"),
    ("project_to_groups", "changed"): ("INSERT INTO project_to_groups (project_uuid, gid, read) VALUES ('{root}', {everyone}, true)",
                                       "UPDATE project_to_groups SET write = true WHERE project_uuid = '{root}' AND gid = {everyone}"),
    ("project_to_groups", "deleted"): ("INSERT INTO project_to_groups (project_uuid, gid, read) VALUES ('{root}', {everyone}, true)",
                                       "DELETE FROM project_to_groups WHERE project_uuid = '{root}' AND gid = {everyone}"),
    ("file_meta_data", "added"): (None, "INSERT INTO file_meta_data (location_id, location, bucket_name, object_name, project_id, "
                                        "node_id, user_id, created_at, file_id, last_modified, file_size, entity_tag) SELECT "
                                        "'0', 'simcore.s3', bucket_name, '{added}', '{root}', '{node}', user_id, now(), '{added}', "
                                        "now(), {added_size}, '{added_etag}' FROM file_meta_data WHERE project_id = '{root}' LIMIT 1"),
    ("file_meta_data", "changed"): (None, "UPDATE file_meta_data SET last_modified = now() WHERE file_id = '{file}'"),
    ("file_meta_data", "deleted"): (None, "DELETE FROM file_meta_data WHERE file_id = '{file}'"),
}


async def run_sql(db, statement: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.parametrize("table, kind", list(CHANGES), ids=[f"{t}-{k}" for t, k in CHANGES])
async def test_a_row_changed_in_the_source_during_the_run_commits_nothing_and_the_rerun_takes_it(
    simcore: Simcore, table: str, kind: str
) -> None:
    """Every copied table (projmig.schema.TABLE_RULES): a row of a source project added, changed or
    deleted while the insert is under way (the graph read, the objects copied, the insert held at its
    nodes) rolls the insert back with one line naming the project and the table; the rerun migrates
    the project as it is then."""
    assert {t for t, _ in CHANGES} == {t for t, rule in TABLE_RULES.items() if rule.startswith(("copied", "mapped"))}
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=3, file_size=4096, multipart_size=0, directory_objects=2, hidden_children=1, child_files=1, soft_link=False,
        deployment_bound_rows=False, special_names=False))
    src, dst = simcore.source_db, simcore.destination_db
    parent_nodes = {r[0] for r in await rows_of(src, "SELECT parent_node_id FROM projects_metadata WHERE parent_node_id IS NOT NULL")}
    added, added_body = f"{sample.uuid}/{sample.node_ids[-1]}/outputs/added in the source.txt", b"added during the run\n"
    values = {
        "root": sample.uuid, "child": sample.children[0], "everyone": simcore.source_ids.everyone_gid,
        "node": next(n for n in reversed(sample.node_ids) if n not in parent_nodes),
        "file": sorted(f for f in sample.file_ids if f.startswith(sample.uuid) and "/outputs/output_" in f)[0],
        "added": added, "added_size": len(added_body), "added_etag": hashlib.md5(added_body).hexdigest(),
    }
    setup, change = CHANGES[table, kind]
    if setup:
        await run_sql(src, setup.format(**values))
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    async with MigrationRun.open(settings) as run:
        report = await steps.preflight(run, probe_write=False)
        plan = steps.make_plan(await steps.read_graph(run, report), report)
        await steps.copy_objects(run.transfers, [(c, None) for c in plan.copies])
        verified = await verified_objects(run, plan.copies)

        holder, held = await hold_inserts(dst)
        try:
            insert = asyncio.ensure_future(insert_rows(run, plan, verified))
            await wait_until(lambda: insert_is_held(dst), "the insert at its nodes")
            if table == "file_meta_data" and kind == "added":  # osparc's storage: the object first, then its row
                async with s3_client(simcore.source_s3) as client:
                    await client.put_object(Bucket=simcore.source_s3.bucket, Key=added, Body=added_body)
            await run_sql(src, change.format(**values))
        finally:
            await held.rollback()
            await holder.close()
        with pytest.raises(SourceChanged) as changed:
            await insert

    line = str(changed.value)
    changed_project = sample.children[0] if "{child}" in change else sample.uuid
    assert "\n" not in line and line.startswith(f"source project {changed_project} changed during the migration ("), line
    assert re.search(rf"rows changed in [a-z_, ]*\b{table}\b", line) and "nothing was inserted" in line, line
    assert await rows_of(dst, "SELECT uuid FROM projects") == []

    await migrate_by_steps(settings)  # the rerun
    verified_again = await commands.verify(settings, deep=False)
    assert verified_again.equal, [str(d) for d in verified_again.differences]
    for project in sample.all_projects:  # and by the test's own count of the changed table's rows
        query = f"SELECT count(*) FROM {table} WHERE {project_key(table)} = '{project}'"
        [[there]], [[here]] = await rows_of(dst, query), await rows_of(src, query)
        assert there == here, (project, there, here)


async def rows_of(db, query: str) -> list[tuple]:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


# -- the insert record ------------------------------------------------------------------------------

async def two_inserts_wait(db) -> bool:
    """One insert held at its nodes (:func:`hold_inserts`), another waiting for it (whatever it waits on)."""
    [[waiting]] = await rows_of(db, "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted")
    return waiting >= 2


async def test_two_first_inserts_at_once_create_the_record_table_once(simcore: Simcore) -> None:
    """Two projects inserted at once into a destination projmig never wrote to: both transactions find
    no record table; the one that creates it is held at its nodes (uncommitted), the other waits for
    it, then both commit with their records."""
    a, b = [await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        seed=130 + i, name=f"study {i}", files=2, file_size=1024, multipart_size=0, directory_objects=0,
        hidden_children=0, soft_link=False, deployment_bound_rows=False, special_names=False)) for i in range(2)]
    settings = simcore.settings(None, source={"project_uuids": [a.uuid, b.uuid]}, options={"project_concurrency": 2})
    dst = simcore.destination_db
    async with MigrationRun.open(settings) as run:
        report = await steps.preflight(run, probe_write=False)
        plan = steps.make_plan(await steps.read_graph(run, report), report)
        await steps.copy_objects(run.transfers, [(c, None) for c in plan.copies])
        verified = await verified_objects(run, plan.copies)
        assert await rows_of(dst, "SELECT to_regclass('projmig.inserted_projects')") == [(None,)]

        holder, held = await hold_inserts(dst)
        try:
            inserts = asyncio.ensure_future(steps.insert_roots(run, plan, verified, [a.uuid, b.uuid]))
            await wait_until(lambda: two_inserts_wait(dst), "one insert held at its nodes, the other waiting for it")
        finally:
            await held.rollback()
            await holder.close()
        done = await inserts

    assert [d.error for d in done] == [None, None]
    records = await rows_of(dst, "SELECT project_uuid, source_project_uuid FROM projmig.inserted_projects ORDER BY 1")
    assert records == sorted((u, u) for u in (a.uuid, b.uuid))


async def test_a_destination_user_without_create_rights_gets_one_line_and_nothing_inserted(simcore: Simcore) -> None:
    """The destination's database user may write osparc's tables but not create a schema: the insert
    says what to grant (or what an administrator creates), and commits nothing."""
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=2, file_size=1024, multipart_size=0, directory_objects=0, hidden_children=0, soft_link=False,
        deployment_bound_rows=False, special_names=False))
    role, password = f"writer_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    dst = simcore.destination_db
    await run_sql(dst, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'; "
                       f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
                       f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    try:
        writer = dst.model_copy(update={"user": role, "password": SecretStr(password)})
        settings = simcore.settings(sample.uuid, destination={"db": writer})
        async with MigrationRun.open(settings) as run:
            report = await steps.preflight(run, probe_write=False)
            plan = steps.make_plan(await steps.read_graph(run, report), report)
            await steps.copy_objects(run.transfers, [(c, None) for c in plan.copies])
            with pytest.raises(InsertError) as refused:
                await insert_rows(run, plan, await verified_objects(run, plan.copies))
        line = str(refused.value)
        assert "\n" not in line and line.startswith("the destination database user may not create the schema projmig"), line
        assert "grant it CREATE on the database" in line and line.endswith("nothing was inserted"), line
        assert password not in line
        assert await rows_of(dst, "SELECT uuid FROM projects") == []
    finally:
        await run_sql(dst, f"DROP OWNED BY {role}; DROP ROLE {role}")
