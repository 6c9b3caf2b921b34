"""uuid_policy=new on real servers: copies that never collide with their original, each complete
and self-contained, and a rerun that resumes instead of making another copy."""

from __future__ import annotations

import json

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands, steps
from projmig.plan import build_plan
from projmig.remap import UUID_RE, copy_namespace, legacy_destination_identity
from projmig.run import MigrationRun
from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleProject, SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings, S3Settings, resolve_secrets

from ..conftest import Simcore, insert_rows, verified_objects

pytestmark = pytest.mark.usefixtures("prefect")

KEYS = {"projects": "uuid", "file_meta_data": "project_id"}
TABLES = ("projects", "projects_nodes", "projects_metadata", "projects_to_jobs", "projects_extensions",
          "projects_networks", "project_to_groups", "file_meta_data")


async def rows_of(db: DatabaseSettings, uuids: list[str]) -> dict[str, list[dict]]:
    """Every row of these projects, JSON decoded, per table."""
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        out = {}
        for table in TABLES:
            key = KEYS.get(table, "project_uuid")
            found = await conn.fetch(
                f"SELECT row_to_json(t)::text AS j FROM {table} t WHERE {key} = ANY($1::varchar[]) ORDER BY 1", uuids
            )
            out[table] = [json.loads(r["j"]) for r in found]
        return out
    finally:
        await conn.close()


async def keys_under(s3: S3Settings, prefixes: list[str]) -> set[str]:
    async with s3_client(s3) as client:
        keys: set[str] = set()
        for prefix in prefixes:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=s3.bucket, Prefix=f"{prefix}/"):
                keys.update(o["Key"] for o in page.get("Contents", []))
        return keys


def links(value, found: list[dict]) -> list[dict]:
    """Every JSON object inside ``value`` that is a port link or a file link."""
    if isinstance(value, dict):
        if "nodeUuid" in value or "path" in value:
            found.append(value)
        for v in value.values():
            links(v, found)
    elif isinstance(value, list):
        for v in value:
            links(v, found)
    return found


async def assert_valid_copy(db: DatabaseSettings, s3: S3Settings, copy: list[str], original: SampleProject,
                            original_ids: set[str]) -> None:
    """Every reference of the copy resolves inside the copy; none names the original."""
    rows = await rows_of(db, copy)
    keys = await keys_under(s3, copy)
    assert {r["uuid"] for r in rows["projects"]} == set(copy)
    nodes = {p: {r["node_id"] for r in rows["projects_nodes"] if r["project_uuid"] == p} for p in copy}
    files = {r["file_id"]: r for r in rows["file_meta_data"]}
    assert len(rows["projects_nodes"]) == len(original.node_ids) + len(original.children)
    assert len(files) == len(original.file_ids) and len(keys) == len(original.objects)

    for project in rows["projects"]:
        assert set(project["ui"]["workbench"]) == nodes[project["uuid"]]
    for node in rows["projects_nodes"]:
        own = nodes[node["project_uuid"]]
        assert set(node["input_nodes"] or []) <= own
        for link in links(node["inputs"], []) + links(node["outputs"], []):
            if "nodeUuid" in link:
                assert link["nodeUuid"] in own, link
            else:
                assert link["path"] in files and files[link["path"]]["project_id"] == node["project_uuid"], link
                assert link["path"].startswith(f"{node['project_uuid']}/")
    for meta in rows["projects_metadata"]:
        for project, node in (("parent_project_uuid", "parent_node_id"), ("root_parent_project_uuid", "root_parent_node_id")):
            if meta[project] is not None:
                assert meta[project] in copy and meta[node] in nodes[meta[project]], meta
    for job in rows["projects_to_jobs"]:
        assert job["job_parent_resource_name"].endswith(job["project_uuid"])
    for file_id, row in files.items():
        assert row["project_id"] in copy and row["node_id"] in nodes[row["project_id"]]
        assert file_id.startswith(f"{row['project_id']}/{row['node_id']}/")
        if row["is_directory"]:
            assert any(k.startswith(f"{row['object_name']}/") for k in keys)
        else:
            assert row["object_name"] in keys, row  # a soft link's target is the copy's object too
    text = json.dumps(rows) + json.dumps(sorted(keys))
    assert not original_ids & {u.lower() for u in UUID_RE.findall(text)}


async def test_two_copies_next_to_each_other_and_one_back_into_the_source(simcore: Simcore) -> None:
    sample = await build_sample_project(
        simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
        spec=SampleSpec(files=6, multipart_size=0, directory_objects=3, hidden_children=2, child_files=1,
                        file_size=8 * 1024),
    )
    original_ids = {u.lower() for u in [*sample.all_projects, *sample.node_ids]}
    before = await rows_of(simcore.source_db, sample.all_projects)
    original_ids |= {r["node_id"] for r in before["projects_nodes"]}  # the children's nodes too
    new = {"uuid_policy": "new"}
    first = simcore.settings(sample.uuid, source={"include_hidden": True}, options=new)
    second = simcore.settings(sample.uuid, source={"include_hidden": True}, options={**new, "copy_label": "second"})
    home = simcore.settings(
        sample.uuid, source={"include_hidden": True}, options=new,
        destination={"db": simcore.source_db, "s3": simcore.source_s3, "user_id": simcore.alice},
    )

    copies = []
    for settings in (first, second, home):
        report = await migrate_project(settings)
        assert report.status == "migrated", report.headline()
        assert report.objects_copied == len(sample.objects) and report.rows_inserted["projects"] == 3
        copies.append([p.dst_uuid for p in report.projects])
    assert len({u for c in copies for u in c} | set(sample.all_projects)) == 3 * 3 + 3  # all distinct

    for (db, s3), copy in zip(
        [(simcore.destination_db, simcore.destination_s3)] * 2 + [(simcore.source_db, simcore.source_s3)], copies
    ):
        await assert_valid_copy(db, s3, copy, sample, original_ids)
    # the original next to its copy is untouched, and still the only owner of its objects
    assert await rows_of(simcore.source_db, sample.all_projects) == before
    assert await keys_under(simcore.source_s3, sample.all_projects) == set(sample.objects)

    verified = await commands.verify(second, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    assert sorted(verified.projects) == sorted(copies[1])

    again = await migrate_project(first)  # the same migration again resumes: no third copy
    assert again.status == "already-migrated", again.headline()
    assert again.rows == 0 and again.copy_task_runs == 0
    assert sorted(again.already_present) == sorted(copies[0])
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        assert await conn.fetchval("SELECT count(*) FROM projects") == 6
    finally:
        await conn.close()


async def test_the_copy_is_the_same_however_the_configuration_names_the_destination(
    simcore: Simcore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=3, file_size=4096, multipart_size=0, directory_objects=1, hidden_children=1, child_files=1,
        deployment_bound_rows=False, special_names=False))
    db = simcore.destination_db
    # the destination database as a DSN reference (another host name for the same server) and as fields
    monkeypatch.setenv("PROJMIG_TEST_DESTINATION_DSN", f"postgresql://{db.user}:{db.password.get_secret_value()}"  # type: ignore[union-attr]
                       f"@localhost:{db.port}/{db.database}")
    new_ids = {"uuid_policy": "new"}
    source = {"include_hidden": True}
    by_reference = simcore.settings(sample.uuid, source=source, options=new_ids,
                                    destination={"db": {"dsn": {"env": "PROJMIG_TEST_DESTINATION_DSN"}}})
    literal = simcore.settings(sample.uuid, source=source, options=new_ids)
    assert by_reference.destination.db.describe() != literal.destination.db.describe()

    made = await migrate_project(by_reference)
    assert made.status == "migrated", made.headline()
    again = await migrate_project(literal)
    assert again.status == "already-migrated", again.headline()
    assert sorted(again.already_present) == sorted(p.dst_uuid for p in made.projects)
    assert (await commands.verify(literal, deep=False)).equal
    removed = await commands.rollback(resolve_secrets(by_reference))  # and its rollback, spelled either way
    assert sorted(p.dst_uuid for p in removed.removed_projects) == sorted(again.already_present)

    # a copy made by an earlier version, whose ids came from how the configuration spelled the
    # destination (host:port/database), is resumed and rolled back, not made again
    earlier = simcore.settings(sample.uuid, source=source, options={**new_ids, "copy_label": "made before"})
    async with MigrationRun.open(earlier) as run:
        checked = await steps.preflight(run, probe_write=False)
        graph = await steps.read_graph(run, checked)
        spelled = legacy_destination_identity(earlier.destination.db.describe(), earlier.destination.s3.bucket)
        plan = build_plan(graph, checked.facts, {sample.uuid: copy_namespace(spelled, sample.uuid, "made before")})
        _, todo = await steps.compare(run, plan.copies)
        await steps.copy_objects(run.transfers, todo)
        await insert_rows(run, plan, await verified_objects(run, plan.copies))
    before = sorted(p.dst_uuid for p in plan.projects)
    assert not set(before) & {p.dst_uuid for p in made.projects}

    resumed = await migrate_project(earlier)
    assert resumed.status == "already-migrated", resumed.headline()
    assert sorted(resumed.already_present) == before
    assert sorted(p.dst_uuid for p in (await commands.rollback(earlier)).removed_projects) == before
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        assert await conn.fetchval("SELECT count(*) FROM projects") == 0
    finally:
        await conn.close()
