"""Rollback on real servers (both schemas; SeaweedFS and Ceph on either side): a migration's rows and objects removed, and only
those; refused, with nothing removed, when the destination changed after the migration; a
rerun is a no-op; migrating again afterwards works."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from projmig import commands, steps
from projmig.errors import TransferError
from projmig.insert import project_key
from projmig.plan import MigrationPlan
from projmig.rollback import RollbackRefused
from projmig.run import MigrationRun
from projmig.s3 import s3_client
from projmig.sandbox import SeaweedServer, find_pg_bindir
from projmig.sandbox.sample import SampleProject, SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.schema import PROJECT_TABLES
from projmig.settings import DatabaseSettings, MigrationSettings, S3Settings

from .conftest import Simcore, copy_marks, expected_marks, insert_rows, object_digests, table_rows as snapshot, unique, verified_objects
from .faults.proxy import FaultProxy

PROJMIG = str(Path(sys.executable).parent / "projmig")
KiB, MiB = 1024, 1024 * 1024


def projmig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROJMIG, *args], capture_output=True, text=True, timeout=120)


def small(seed: int, **changes: Any) -> SampleSpec:
    spec = dict(seed=seed, name=f"study {seed}", files=3, file_size=4 * KiB, multipart_size=0, directory_objects=2,
                directory_object_size=KiB, hidden_children=0, child_files=1, deployment_bound_rows=False,
                special_names=False)
    return SampleSpec(**{**spec, **changes})


async def migrate(settings: MigrationSettings) -> MigrationPlan:
    """The migration's steps one by one (the pipeline runs them the same way)."""
    async with MigrationRun.open(settings) as run:
        report = await steps.preflight(run, probe_write=False)
        plan = steps.make_plan(await steps.read_graph(run, report), report)
        _, todo = await steps.compare(run, plan.copies)
        await steps.copy_objects(run.transfers, todo)
        await insert_rows(run, plan, await verified_objects(run, plan.copies))
    return plan


async def sql(db: DatabaseSettings, statement: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def without(snap: dict[str, list[str]], uuids: set[str]) -> dict[str, list[str]]:
    """The snapshot minus the rows of these projects in the tables a migration writes."""
    return {
        t: [r for r in rows if json.loads(r).get(project_key(t)) not in uuids] if t in PROJECT_TABLES else rows
        for t, rows in snap.items()
    }


async def keys(s3: S3Settings) -> set[str]:
    async with s3_client(s3) as client:
        found: set[str] = set()
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
            found.update(o["Key"] for o in page.get("Contents", []))
        return found


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "cfg.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return str(path)


async def test_rollback_removes_that_migration_and_nothing_else(provider_simcore: Simcore, tmp_path: Path) -> None:
    simcore = provider_simcore
    bob = simcore.source_ids.users["bob"].id
    a = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(
        1, multipart_size=6 * MiB, multipart_part_size=5 * MiB, hidden_children=2, soft_link=True,
        special_names=True, deployment_bound_rows=True))
    b = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(2))
    c = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=bob, spec=small(3, hidden_children=1))
    of_alice = {"owner_user_id": simcore.alice, "include_hidden": True}
    everything_of_alice = simcore.settings(None, source=of_alice)
    mine = set(a.all_projects) | {b.uuid}
    first = await migrate(everything_of_alice)
    assert {p.dst_uuid for p in first.projects} == mine
    other = simcore.settings(c.uuid, source={"include_hidden": True})  # another migration, kept
    await migrate(other)
    before, objects = await snapshot(simcore.destination_db), await keys(simcore.destination_s3)
    cfg = write_config(tmp_path, simcore.config(None, source=of_alice))

    dry = projmig("rollback", "--config", cfg, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would remove 4 projects" in dry.stdout and "nothing was removed" in dry.stdout
    assert f"would remove objects: {len(a.objects) + len(b.objects)}" in dry.stdout
    assert await snapshot(simcore.destination_db) == before and await keys(simcore.destination_s3) == objects

    done = projmig("rollback", "--config", cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = sum(1 for t, rs in before.items() if t in PROJECT_TABLES for r in rs if json.loads(r).get(project_key(t)) in mine)
    assert f"rolled back 4 projects: {rows} rows and {len(a.objects) + len(b.objects)} objects" in done.stdout, done.stdout
    assert await snapshot(simcore.destination_db) == without(before, mine)  # only these rows went
    assert await keys(simcore.destination_s3) == objects - set(a.objects) - set(b.objects)

    again = await commands.rollback(everything_of_alice)  # a rerun: nothing left to remove, and it says so
    assert again.nothing and again.rows == {} and again.objects_removed == 0
    assert again.headline().startswith(f"nothing to roll back: {a.uuid}") and "not in the destination" in again.headline()

    # migrating again works: the owner-group trigger gives each project its row again, no clash
    await migrate(everything_of_alice)
    verified = await commands.verify(everything_of_alice, deep=False)
    assert verified.equal, [str(d) for d in verified.differences]
    assert await keys(simcore.destination_s3) == objects


async def modify(simcore: Simcore, case: str, sample: SampleProject) -> str:
    """Change the destination copy of ``sample`` as osparc would; returns the refusal expected."""
    dst, uuid = simcore.destination_db, sample.uuid
    carol = simcore.destination_ids.users["carol"]
    if case == "renamed":
        await sql(dst, "UPDATE projects SET name = 'renamed', last_change_date = now() WHERE uuid = $1", uuid)
        return rf"destination project {uuid} \('renamed'\) was modified after the migration: last changed .*, the migration wrote"
    if case == "node edited":  # the projects_nodes trigger moves last_change_date
        await sql(dst, "UPDATE projects_nodes SET label = 'edited' WHERE project_uuid = $1 AND node_id = $2", uuid, sample.node_ids[0])
        return rf"destination project {uuid} .* was modified after the migration: last changed"
    if case == "file uploaded":  # storage writes file_meta_data only: last_change_date stays
        await sql(dst, "INSERT INTO file_meta_data (location_id, location, bucket_name, object_name, project_id, node_id, "
                  "user_id, created_at, file_id, last_modified, file_size) VALUES ('0', 'simcore.s3', $1, $2, $3, $4, $5, "
                  "now(), $2, now(), 0)", simcore.destination_s3.bucket, f"{uuid}/{sample.node_ids[0]}/new.txt",
                  uuid, sample.node_ids[0], carol.id)
        return rf"destination project {uuid} was modified after the migration: file_meta_data has 1 rows changed .*new.txt"
    if case == "shared":
        await sql(dst, "INSERT INTO project_to_groups (project_uuid, gid, read) VALUES ($1, $2, true)",
                  uuid, simcore.destination_ids.everyone_gid)
        return rf"destination project {uuid} was modified after the migration: project_to_groups has 1 rows changed"
    if case == "moved to a folder":
        folder = (await sql(dst, "INSERT INTO folders_v2 (name, product_name, user_id, created_by_gid) "
                            "VALUES ('f', 'osparc', $1, $2) RETURNING folder_id", carol.id, carol.primary_gid))[0][0]
        await sql(dst, "INSERT INTO projects_to_folders (project_uuid, folder_id, user_id) VALUES ($1, $2, $3)",
                  uuid, folder, carol.id)
        return rf"destination project {uuid} is used by rows the migration did not write: projects_to_folders.project_uuid 1"
    if case == "not this migration's":
        await sql(dst, "UPDATE projects SET creation_date = '2020-01-01' WHERE uuid = $1", uuid)
        return rf"destination project {uuid} .* was not inserted by this migration: created 2020-01-01"
    raise AssertionError(case)


CASES = ["renamed", "node edited", "file uploaded", "shared", "moved to a folder", "not this migration's"]


async def test_changed_after_the_migration_is_refused_and_nothing_is_removed(simcore: Simcore, tmp_path: Path) -> None:
    *samples, parent = await asyncio.gather(*(
        build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                             spec=small(10 + i, directory_objects=0, hidden_children=int(i == len(CASES) + 1)))
        for i in range(len(CASES) + 2)
    ))
    await migrate(simcore.settings(None, source={"project_uuids": [s.uuid for s in samples]}))
    await migrate(simcore.settings(parent.uuid, source={"include_hidden": True}))
    expected = {case: await modify(simcore, case, sample) for case, sample in zip(CASES, samples)}
    before, objects = await snapshot(simcore.destination_db), await keys(simcore.destination_s3)

    # every modified project named in one rollback: refused, one line per project, each saying why
    with pytest.raises(RollbackRefused) as refused:
        await commands.rollback(simcore.settings(None, source={"project_uuids": [s.uuid for s in samples]}))
    problems = refused.value.problems
    assert len(problems) == len(CASES), problems  # the unmodified last sample is not refused, and not removed either
    for case, problem in zip(CASES, problems):
        assert re.search(expected[case], problem), (case, problem)
        assert problem.endswith("; nothing was removed"), problem
    # the hidden job was migrated with the parent: a rollback without include_hidden would orphan it
    with pytest.raises(RollbackRefused, match=rf"{parent.uuid} is used by rows .*projects_metadata.parent_project_uuid 1\b.*include_hidden"):
        await commands.rollback(simcore.settings(parent.uuid))
    # the CLI: one error line, exit 2
    result = projmig("rollback", "--config", write_config(tmp_path, simcore.config(samples[0].uuid)))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: destination project") and "nothing was removed" in lines[0], lines
    assert await snapshot(simcore.destination_db) == before and await keys(simcore.destination_s3) == objects

    # the unmodified one alone goes
    done = await commands.rollback(simcore.settings(samples[-1].uuid))
    assert [p.dst_uuid for p in done.removed_projects] == [samples[-1].uuid]
    assert await snapshot(simcore.destination_db) == without(before, {samples[-1].uuid})
    done = await commands.rollback(simcore.settings(parent.uuid, source={"include_hidden": True}))
    assert {p.dst_uuid for p in done.removed_projects} == set(parent.all_projects)


async def test_source_changed_since_the_migration(simcore: Simcore) -> None:
    """The source moved on: the insert's record (what it wrote, and when) tells the migration's rows from
    later changes in the destination."""
    kept, edited = [await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                               spec=small(40 + i, directory_objects=0)) for i in range(2)]
    await migrate(simcore.settings(None, source={"project_uuids": [kept.uuid, edited.uuid]}))
    before = await snapshot(simcore.destination_db)
    # kept: the source changed (a node, so last_change_date; one file deleted, one added) but the destination did not
    gone = [f for f in kept.file_ids if "/outputs/output_" in f][-1]  # not the soft link's target
    await sql(simcore.source_db, "UPDATE projects_nodes SET label = 'changed in the source' WHERE project_uuid = $1", kept.uuid)
    await sql(simcore.source_db, "DELETE FROM file_meta_data WHERE file_id = $1", gone)
    # edited: changed in the destination first, then in the source: the source's date is later than the destination's
    await sql(simcore.destination_db, "UPDATE projects_nodes SET label = 'edited' WHERE project_uuid = $1", edited.uuid)
    await sql(simcore.source_db, "UPDATE projects_nodes SET label = 'changed in the source' WHERE project_uuid = $1", edited.uuid)
    edited_rows = await snapshot(simcore.destination_db)

    with pytest.raises(RollbackRefused, match=rf"{edited.uuid} .* was modified after the migration: last changed .*, the migration wrote"):
        await commands.rollback(simcore.settings(edited.uuid))
    assert await snapshot(simcore.destination_db) == edited_rows

    result = await commands.rollback(simcore.settings(kept.uuid))
    assert [p.dst_uuid for p in result.removed_projects] == [kept.uuid]
    assert result.objects_removed == len(kept.objects)  # the deleted source file's object too: its row named it
    assert gone in result.objects
    remaining = await snapshot(simcore.destination_db)
    assert without(remaining, {edited.uuid}) == without(before, {kept.uuid, edited.uuid})
    assert not {k for k in await keys(simcore.destination_s3) if k.startswith(kept.uuid)}


async def test_fresh_uuid_copies_roll_back_alone(simcore: Simcore) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                        spec=small(50, hidden_children=1, soft_link=True))
    kept = simcore.settings(sample.uuid, source={"include_hidden": True})
    copy = simcore.settings(sample.uuid, source={"include_hidden": True}, options={"uuid_policy": "new"})
    home = simcore.settings(sample.uuid, source={"include_hidden": True}, options={"uuid_policy": "new"},
                            destination={"db": simcore.source_db, "s3": simcore.source_s3, "user_id": simcore.alice})
    await migrate(kept)
    destination, destination_keys = await snapshot(simcore.destination_db), await keys(simcore.destination_s3)
    source, source_keys = await snapshot(simcore.source_db), await keys(simcore.source_s3)
    copied = {p.dst_uuid for p in (await migrate(copy)).projects}
    copied_home = {p.dst_uuid for p in (await migrate(home)).projects}
    assert len(copied | copied_home | set(sample.all_projects)) == 6

    result = await commands.rollback(copy)
    assert {p.dst_uuid for p in result.removed_projects} == copied
    assert {p.src_uuid for p in result.removed_projects} == set(sample.all_projects)
    assert await snapshot(simcore.destination_db) == destination  # the kept-ids migration untouched
    assert await keys(simcore.destination_s3) == destination_keys

    result = await commands.rollback(home)  # a copy inside the source deployment: the original stays
    assert {p.dst_uuid for p in result.removed_projects} == copied_home
    assert await snapshot(simcore.source_db) == source and await keys(simcore.source_s3) == source_keys
    assert (await commands.rollback(home)).nothing

    # uuid_policy=keep with the source as destination: the "copy" would be the original itself
    same_bucket = simcore.settings(sample.uuid, destination={"db": simcore.source_db, "s3": simcore.source_s3})
    with pytest.raises(RollbackRefused, match="the destination bucket .* is the source bucket .*an object written to one is seen in the other"):
        await commands.rollback(same_bucket)
    same_db = simcore.settings(sample.uuid, destination={"db": simcore.source_db})
    with pytest.raises(RollbackRefused, match="the destination database is the source database"):
        await commands.rollback(same_db)
    assert await snapshot(simcore.source_db) == source and await keys(simcore.source_s3) == source_keys


SELECTED_BY_OWNER = """
    WITH RECURSIVE graph(uuid) AS (
        SELECT uuid FROM projects WHERE prj_owner = $1 AND trashed IS NULL AND NOT hidden
        UNION
        SELECT m.project_uuid FROM projects_metadata m JOIN projects p ON p.uuid = m.project_uuid
        JOIN graph g ON g.uuid IN (m.parent_project_uuid, m.root_parent_project_uuid) WHERE p.hidden
    )
    SELECT uuid FROM graph"""
PROJECT_FACE = "SELECT name, creation_date::text, hidden FROM projects WHERE uuid = ANY($1::varchar[]) ORDER BY name"


async def test_rollback_of_an_owner_migration_with_hidden_jobs_under_new_ids_finds_what_it_created(simcore: Simcore) -> None:
    """Migrate and rollback decide which projects a configuration means, and their new ids, alike:
    every project of a source user (one trashed left out, another user's not taken), their hidden jobs
    (a chain of two below one root), each under a new uuid from its root's namespace. What the migration
    created is read from the destination in SQL, and the source's side by a query of the test's own."""
    bob = simcore.source_ids.users["bob"].id
    a = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(70, hidden_children=2))
    b = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(71, hidden_children=1))
    trashed = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(72))
    await sql(simcore.source_db, "UPDATE projects SET trashed = now() WHERE uuid = $1", trashed.uuid)
    theirs = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=bob, spec=small(73, hidden_children=1))
    await migrate(simcore.settings(theirs.uuid, source={"include_hidden": True}))  # already in the destination, kept

    wanted = {r[0] for r in await sql(simcore.source_db, SELECTED_BY_OWNER, simcore.alice)}
    assert wanted == set(a.all_projects) | set(b.all_projects)  # the test's own query agrees with the samples
    before, before_keys = await snapshot(simcore.destination_db), await keys(simcore.destination_s3)
    there = {r[0] for r in await sql(simcore.destination_db, "SELECT uuid FROM projects")}
    settings = simcore.settings(None, source={"owner_user_id": simcore.alice, "include_hidden": True},
                                options={"uuid_policy": "new", "copy_label": "one selection"})
    await migrate(settings)

    created = {r[0] for r in await sql(simcore.destination_db, "SELECT uuid FROM projects")} - there
    assert len(created) == len(wanted) and not created & wanted  # new ids, one per selected project
    faces = [[tuple(r) for r in await sql(db, PROJECT_FACE, list(u))]
             for db, u in ((simcore.destination_db, created), (simcore.source_db, wanted))]
    assert faces[0] == faces[1]  # name, creation date and hidden as the source has them
    links = await sql(simcore.destination_db, "SELECT parent_project_uuid, root_parent_project_uuid FROM projects_metadata "
                      "WHERE project_uuid = ANY($1::varchar[]) AND parent_project_uuid IS NOT NULL", list(created))
    assert len(links) == 3 and {u for link in links for u in link} <= created  # the jobs hang below the copies
    new_keys = await keys(simcore.destination_s3) - before_keys
    assert new_keys and {k.split("/", 1)[0] for k in new_keys} <= created

    dry = await commands.rollback(settings.with_choices(dry_run=True))
    assert {p.dst_uuid for p in dry.projects} == {p.dst_uuid for p in dry.removed_projects} == created
    assert {p.src_uuid for p in dry.projects} == wanted
    hidden = {r[0] for r in await sql(simcore.destination_db, "SELECT uuid FROM projects WHERE hidden AND uuid = ANY($1::varchar[])",
                                      list(created))}
    assert {p.dst_uuid for p in dry.projects if p.hidden} == hidden
    assert set(dry.objects) == new_keys

    done = await commands.rollback(settings)
    assert {p.dst_uuid for p in done.removed_projects} == created and done.objects_removed == len(new_keys)
    assert await snapshot(simcore.destination_db) == before  # exactly the migration's rows went, the rest stayed
    assert await keys(simcore.destination_s3) == before_keys


@pytest.mark.fault_proxy
async def test_object_deletion_is_retried_and_a_rerun_finishes_it(fixture_simcore: Simcore) -> None:
    simcore = fixture_simcore  # about S3 behaviour: one schema is enough
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(60))
    settings = simcore.settings(sample.uuid)

    def deletes() -> Any:
        """DeleteObjects requests after the first (the probe of whether the server honours their
        per-key ETag condition: projmig.buckets.conditional_deletes)."""
        seen: list[str] = []

        def match(method: str, target: str) -> bool:
            if method == "POST" and "?delete" in target:
                seen.append(target)
            return len(seen) > 1 and method == "POST" and "?delete" in target

        return match

    with FaultProxy("127.0.0.1", simcore.sandbox.destination.s3.s3_port, name="destination-s3", http=True) as proxy:
        via_proxy = simcore.settings(
            sample.uuid, destination={"s3": simcore.destination_s3.model_copy(update={"endpoint": proxy.endpoint})})
        await migrate(settings)
        proxy.fail_requests(2, 503, "SlowDown", match=deletes())  # throttled twice: retried
        result = await commands.rollback(via_proxy)
        assert result.objects_removed == len(sample.objects) and not await keys(simcore.destination_s3)
        assert sum(f.startswith("503 SlowDown for POST") for f in proxy.faults) == 2, proxy.faults

        await migrate(settings)
        proxy.fail_requests(100, 403, "AccessDenied", match=deletes())  # not worth retrying: fails at once
        with pytest.raises(TransferError, match=r"delete \d+ objects from s3://.*: AccessDenied.*the rows are removed; "
                                                r"rerun the rollback to remove the objects left"):
            await commands.rollback(via_proxy)
    assert await sql(simcore.destination_db, "SELECT uuid FROM projects") == []
    assert await keys(simcore.destination_s3) == set(sample.objects)
    result = await commands.rollback(settings)  # the rerun removes what is left
    assert result.removed_projects == [] and result.objects_removed == len(sample.objects)
    assert result.headline().startswith("rolled back what was left: no project rows")
    assert not await keys(simcore.destination_s3)
    assert (await commands.rollback(settings)).nothing


async def test_with_the_rows_gone_only_objects_marked_by_the_migration_are_deleted(provider_simcore: Simcore) -> None:
    simcore = provider_simcore  # also into Ceph's RADOS Gateway: the mark is user metadata it must keep
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                        spec=small(70, multipart_size=6 * MiB, multipart_part_size=5 * MiB))
    settings = simcore.settings(sample.uuid)
    await migrate(settings)
    # single-part and multipart copies alike carry the mark, as the server answers a HEAD
    assert await copy_marks(simcore.destination_s3, sample.objects) == expected_marks(sample.objects)
    # the rows went already (a rollback that stopped before its objects)
    async with MigrationRun.open(settings) as run:
        rows_only = await steps.rollback_rows(run)
    assert [p.dst_uuid for p in rows_only.removed_projects] == [sample.uuid]
    # since then, a destination user wrote over one of the migration's objects and put one of their own
    # beside it; an upload of theirs is under way
    dst, bucket = simcore.destination_s3, simcore.destination_s3.bucket
    overwritten = sorted(k for k in sample.objects if "/outputs/" in k)[0]
    added = overwritten.rsplit("/", 1)[0] + "/added in the destination.txt"
    async with s3_client(dst) as client:
        await client.put_object(Bucket=bucket, Key=overwritten, Body=b"the user's own bytes")
        await client.put_object(Bucket=bucket, Key=added, Body=b"the user's new file")
        upload = await client.create_multipart_upload(Bucket=bucket, Key=overwritten)
    theirs = {k: v for k, v in (await object_digests(dst)).items() if k in (overwritten, added)}

    result = await commands.rollback(settings)

    assert result.removed_projects == [] and result.objects_left == 2
    assert result.objects_removed == len(sample.objects) - 1 and overwritten not in result.objects
    assert await object_digests(dst) == theirs
    async with s3_client(dst) as client:
        uploads = (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [upload["UploadId"]]


async def test_keep_policy_rollback_through_another_name_of_the_source_bucket_is_refused(simcore: Simcore) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(80))
    source = simcore.source_s3
    assert source.endpoint and "127.0.0.1" in source.endpoint
    alias = source.model_copy(update={"endpoint": source.endpoint.replace("127.0.0.1", "localhost")})
    settings = simcore.settings(sample.uuid, destination={"s3": alias})  # the source bucket, by another name
    await migrate(settings)  # its "copies" are the source's own objects
    rows, objects = await snapshot(simcore.destination_db), await object_digests(source)

    with pytest.raises(RollbackRefused, match=rf"the destination bucket s3://{source.bucket} at http://localhost:\d+ is "
                                              rf"the source bucket .*an object written to one is seen in the other"):
        await commands.rollback(settings)
    assert await snapshot(simcore.destination_db) == rows and await object_digests(source) == objects


async def test_a_same_bucket_probe_answered_403_refuses_rollback(fixture_simcore: Simcore, tmp_path: Path) -> None:
    """uuid_policy=keep into the source bucket itself, rolled back with source credentials that may
    list the bucket but not read its objects (an identity of SeaweedFS's s3.json with ``List`` only):
    the probe's 403 leaves open whether the destination is the source bucket. Refused, with nothing
    removed; taken for "another bucket", the source's own objects would go."""
    simcore = fixture_simcore
    name = unique("shared")
    lister = {"accessKey": f"LS{secrets.token_hex(8).upper()}", "secretKey": secrets.token_urlsafe(24)}
    server = SeaweedServer(tmp_path / "s3", access_key=f"AK{secrets.token_hex(8).upper()}", secret_key=secrets.token_urlsafe(24),
                           extra_identities=[{"name": "lister", "credentials": [lister], "actions": [f"List:{name}"]}]).start()
    try:
        source = await server.create_bucket(name)
        sample = await build_sample_project(simcore.source_db, source, owner_id=simcore.alice, spec=small(90))
        assert source.endpoint
        alias = source.model_copy(update={"endpoint": source.endpoint.replace("127.0.0.1", "localhost")})
        await migrate(simcore.settings(sample.uuid, source={"s3": source}, destination={"s3": alias}))
        rows, objects = await snapshot(simcore.destination_db), await object_digests(source)
        list_only = source.model_copy(update={"access_key": SecretStr(lister["accessKey"]),
                                              "secret_key": SecretStr(lister["secretKey"])})
        async with s3_client(list_only) as client:  # what the probe meets: listing is allowed, reading is not
            assert (await client.list_objects_v2(Bucket=name, MaxKeys=1))["KeyCount"] == 1

        with pytest.raises(RollbackRefused, match=r"cannot tell whether the destination bucket .* is the source bucket "
                                                  r".*got 403.*give the source's credentials read rights"):
            await commands.rollback(simcore.settings(sample.uuid, source={"s3": list_only}, destination={"s3": alias}))
        assert await snapshot(simcore.destination_db) == rows and await object_digests(source) == objects
    finally:
        server.stop()


async def test_unmarked_objects_under_a_migrated_prefix_survive_rollback(provider_simcore: Simcore) -> None:
    """A destination user's objects under the migrated project's prefix, written straight to S3 (no
    row changes): one inside a directory entry's prefix, one written over a file a removed row names.
    Rollback removes the rows and the migration's marked objects, and keeps theirs (each mark is read
    just before its delete)."""
    simcore = provider_simcore  # into Ceph too, which ignores a conditional delete's If-Match
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                        spec=small(100, directory_objects=3))
    settings = simcore.settings(sample.uuid)
    await migrate(settings)
    dst = simcore.destination_s3
    [directory] = [r[0] for r in await sql(simcore.destination_db, "SELECT file_id FROM file_meta_data WHERE is_directory")]
    inside = f"{directory}/sub0/uploaded by a user.dat"
    overwritten = sorted(k for k in sample.objects if "/outputs/output_" in k)[0]
    async with s3_client(dst) as client:
        await client.put_object(Bucket=dst.bucket, Key=inside, Body=b"the user's own file")
        await client.put_object(Bucket=dst.bucket, Key=overwritten, Body=b"the user's own bytes")
    theirs = await object_digests(dst, f"{sample.uuid}/")
    theirs = {k: v for k, v in theirs.items() if k in (inside, overwritten)}

    result = await commands.rollback(settings)

    assert [p.dst_uuid for p in result.removed_projects] == [sample.uuid] and result.objects_left == 2
    assert result.objects_removed == len(sample.objects) - 1 and set(result.objects) == set(sample.objects) - {overwritten}
    assert await object_digests(dst) == theirs
    assert await sql(simcore.destination_db, "SELECT uuid FROM projects") == []


def pg_tool(name: str, db: DatabaseSettings, *args: str, stdin: bytes | None = None) -> bytes:
    """Run PostgreSQL's own client ``name`` (pg_dump, pg_restore) against ``db``."""
    assert db.password is not None
    env = {**os.environ, "PGPASSWORD": db.password.get_secret_value()}
    done = subprocess.run([str(find_pg_bindir() / name), "-h", db.host, "-p", str(db.port), "-U", db.user, *args],
                          input=stdin, capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


async def test_a_destination_restored_from_a_dump_of_the_source_is_refused(simcore: Simcore) -> None:
    """The project's rows come into the destination from a pg_dump of the source (pg_restore of the
    project tables' data, as a restore of an old dump does), and its bucket holds copies of the
    source's objects: the same uuids, creation and last change dates as the source's, but no record
    of an insert by projmig. Refused, nothing removed."""
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(110))
    tables = [arg for table in PROJECT_TABLES for arg in ("-t", table)]
    dump = pg_tool("pg_dump", simcore.source_db, "-Fc", "--data-only", *tables, "-d", simcore.source_db.database or "")
    # the source's owner and groups are not the destination's: foreign keys are not checked while restoring,
    # then the owner is one of the destination's users, as an operator restoring the dump would make it
    pg_tool("pg_restore", simcore.destination_db, "--data-only", "--disable-triggers", "-d",
            simcore.destination_db.database or "", stdin=dump)
    await sql(simcore.destination_db, "UPDATE projects SET prj_owner = $1", simcore.carol)
    await sql(simcore.destination_db, "UPDATE file_meta_data SET user_id = $1", simcore.carol)
    dst = simcore.destination_s3
    async with s3_client(simcore.source_s3) as src, s3_client(dst) as client:
        for key in sample.objects:  # the bucket restored alongside: plain copies, no mark
            body = await src.get_object(Bucket=simcore.source_s3.bucket, Key=key)
            async with body["Body"] as stream:
                await client.put_object(Bucket=dst.bucket, Key=key, Body=await stream.read())
    face = "SELECT uuid, creation_date, last_change_date FROM projects"
    assert await sql(simcore.destination_db, face) == await sql(simcore.source_db, face)
    rows, objects = await snapshot(simcore.destination_db), await object_digests(dst)

    with pytest.raises(RollbackRefused) as refused:
        await commands.rollback(simcore.settings(sample.uuid))
    [problem] = refused.value.problems
    assert problem.startswith(f"destination project {sample.uuid} ('study 110') has no record of an insert by "
                              "projmig (table projmig.inserted_projects)"), problem
    assert "osparc's own project deletion" in problem and problem.endswith("; nothing was removed"), problem
    assert await snapshot(simcore.destination_db) == rows and await object_digests(dst) == objects


async def test_a_project_migrated_without_an_insert_record_is_refused_with_one_line(simcore: Simcore, tmp_path: Path) -> None:
    """A projmig older than the insert record migrated the project: rollback cannot prove it is
    projmig's and says how to go on instead."""
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=small(120))
    settings = simcore.settings(sample.uuid)
    await migrate(settings)
    [[recorded]] = await sql(simcore.destination_db, "SELECT count(*) FROM projmig.inserted_projects WHERE project_uuid = $1",
                             sample.uuid)
    assert recorded == 1
    await sql(simcore.destination_db, "DROP SCHEMA projmig CASCADE")  # as an older projmig left it
    rows, objects = await snapshot(simcore.destination_db), await object_digests(simcore.destination_s3)

    result = projmig("rollback", "--config", write_config(tmp_path, simcore.config(sample.uuid)))
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: destination project {sample.uuid} ('study 120') has no record of an insert by projmig"), line
    assert await snapshot(simcore.destination_db) == rows and await object_digests(simcore.destination_s3) == objects
