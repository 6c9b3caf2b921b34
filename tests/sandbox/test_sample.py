"""The sample builder makes a study that satisfies every FK and trigger, on both schemas."""

from __future__ import annotations

import asyncpg

from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from ..conftest import Simcore


async def test_sample_study(simcore: Simcore) -> None:
    spec = SampleSpec(share_with_gids=[simcore.source_ids.groups["lab"], simcore.source_ids.everyone_gid])
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=spec)
    conn = await asyncpg.connect(asyncpg_dsn(simcore.source_db))
    try:
        project = await conn.fetchrow("SELECT * FROM projects WHERE uuid = $1", sample.uuid)
        assert project["prj_owner"] == simcore.alice and not project["hidden"]
        # the owner-group trigger gave alice's primary group full access
        access = {r["gid"]: r for r in await conn.fetch("SELECT * FROM project_to_groups WHERE project_uuid = $1", sample.uuid)}
        alice_gid = simcore.source_ids.users["alice"].primary_gid
        assert access[alice_gid]["write"] and access[alice_gid]["delete"]
        assert set(access) == {alice_gid, simcore.source_ids.groups["lab"], simcore.source_ids.everyone_gid}
        assert await conn.fetchval("SELECT count(*) FROM projects_nodes WHERE project_uuid = $1", sample.uuid) == 5
        files = await conn.fetch("SELECT * FROM file_meta_data WHERE project_id = $1", sample.uuid)
        assert len(files) == 30
        assert sum(f["is_directory"] for f in files) == 1 and sum(f["is_soft_link"] for f in files) == 1
        # hidden job projects, the second a child of the first (recursion)
        children = await conn.fetch(
            "SELECT p.uuid, p.hidden, m.parent_project_uuid, m.root_parent_project_uuid FROM projects p "
            "JOIN projects_metadata m ON m.project_uuid = p.uuid WHERE p.uuid = ANY($1::varchar[])",
            sample.children,
        )
        assert all(c["hidden"] and c["root_parent_project_uuid"] == sample.uuid for c in children)
        assert {c["parent_project_uuid"] for c in children} == {sample.uuid, sample.children[0]}
        assert await conn.fetchval("SELECT count(*) FROM projects_to_jobs WHERE project_uuid = ANY($1::varchar[])", sample.children) == 2
        assert await conn.fetchval("SELECT count(*) FROM projects_to_folders WHERE project_uuid = $1", sample.uuid) == 1
    finally:
        await conn.close()

    async with s3_client(simcore.source_s3) as client:
        listed = {}
        for prefix in sample.all_projects:
            page = await client.list_objects_v2(Bucket=simcore.source_s3.bucket, Prefix=f"{prefix}/")
            listed.update({o["Key"]: o for o in page.get("Contents", [])})
    assert {k: o["Size"] for k, o in listed.items()} == sample.objects
    big = next(o for k, o in listed.items() if k.endswith("large result.h5"))
    assert big["Size"] == 40 * 1024 * 1024 and big["ETag"].strip('"').endswith("-7")  # 6 MiB parts
    assert any(k.endswith("empty.txt") and o["Size"] == 0 for k, o in listed.items())
    assert any("résumé ü.dat" in k for k in listed) and any("hash#tag" in k for k in listed)
