"""Reruns on a busy destination (both schemas): a project an earlier run migrated belongs to the
destination's users; a rerun (of that project, or of all projects of its source owner to pick up new
ones) copies, overwrites and deletes none of its objects and touches none of its rows, and migrates
what is new. Checked in the databases' own text and by the objects' bytes."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings

from ..conftest import Simcore, object_digests, table_rows

pytestmark = pytest.mark.usefixtures("prefect")
KiB, MiB = 1024, 1024 * 1024


def spec(seed: int, **changes: Any) -> SampleSpec:
    return SampleSpec(**{**dict(seed=seed, name=f"study {seed}", files=3, file_size=4 * KiB, multipart_size=0,
                                directory_objects=2, directory_object_size=KiB, hidden_children=1, child_files=1,
                                deployment_bound_rows=False, special_names=False), **changes})


async def execute(db: DatabaseSettings, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def test_a_rerun_leaves_migrated_projects_as_the_destination_users_left_them(simcore: Simcore) -> None:
    first = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                       spec=spec(1, multipart_size=6 * MiB, multipart_part_size=5 * MiB))
    second = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=spec(2))
    per_user = simcore.settings(None, source={"owner_user_id": simcore.alice, "include_hidden": True})
    single = simcore.settings(first.uuid, source={"include_hidden": True})
    assert (await migrate_project(per_user)).status == "migrated"

    # destination users at work: a file rewritten (a new object, and its row says so), the study renamed,
    # an upload of another of its files under way
    dst, bucket = simcore.destination_db, simcore.destination_s3.bucket
    rewritten, uploading = sorted(k for k in first.objects if k.startswith(first.uuid) and "/outputs/" in k)[:2]
    new_bytes = b"edited in the destination " * 100
    async with s3_client(simcore.destination_s3) as client:
        put = await client.put_object(Bucket=bucket, Key=rewritten, Body=new_bytes)
        upload = await client.create_multipart_upload(Bucket=bucket, Key=uploading)
        await client.upload_part(Bucket=bucket, Key=uploading, UploadId=upload["UploadId"], PartNumber=1,
                                 Body=b"x" * 5 * MiB)
    await execute(dst, "UPDATE file_meta_data SET file_size = $1, entity_tag = $2, last_modified = now() "
                  "WHERE file_id = $3", len(new_bytes), put["ETag"].strip('"'), rewritten)
    await execute(dst, "UPDATE projects SET name = 'renamed in the destination', last_change_date = now() "
                  "WHERE uuid = $1", first.uuid)
    rows, objects = await table_rows(dst), await object_digests(simcore.destination_s3)
    assert objects[rewritten] == hashlib.sha256(new_bytes).hexdigest()

    again = await migrate_project(single)

    assert again.status == "already-migrated", again.headline()
    assert sorted(again.already_present) == sorted(first.all_projects)
    assert again.objects_copied == again.bytes_copied == again.rows == again.copy_task_runs == 0
    assert "nothing to do: 2 projects already migrated, left as they are" in again.headline()
    # what differs from the source is said, not repaired
    [note] = [w for w in again.warnings if "already migrated, left as it is" in w]
    assert note.startswith(f"{first.uuid} (already migrated, left as it is): 1 of ") and rewritten in note
    assert await table_rows(dst) == rows and await object_digests(simcore.destination_s3) == objects
    async with s3_client(simcore.destination_s3) as client:
        still_open = (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in still_open] == [(uploading, upload["UploadId"])]

    # a new project of the same source user: the per-user rerun adds it and leaves the others alone
    third = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=spec(3))
    more = await migrate_project(per_user)

    assert more.status == "migrated", more.headline()
    assert sorted(more.already_present) == sorted(first.all_projects + second.all_projects)
    assert more.rows_inserted["projects"] == 2 and more.objects_copied == len(third.objects)
    assert more.headline().startswith("migrated 2 projects: ") and "; 4 already migrated, left as they are" in more.headline()
    after = await table_rows(dst)
    theirs = set(third.all_projects)
    assert {t: [r for r in rs if not any(u in r for u in theirs)] for t, rs in after.items()} == rows
    now = await object_digests(simcore.destination_s3)
    assert {k: v for k, v in now.items() if k.split("/", 1)[0] not in theirs} == objects
    assert {k for k in now if k.split("/", 1)[0] in theirs} == set(third.objects)
    verified = await commands.verify(simcore.settings(third.uuid, source={"include_hidden": True}), deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
