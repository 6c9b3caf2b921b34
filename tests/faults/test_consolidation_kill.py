"""``kill -9`` of a consolidation (every user's studies into their own accounts, into a folder, with
their tags) at chosen moments, then a rerun: it ends as one uninterrupted run would, with each
folder and tag made once, and in between every project is all there or not at all."""

from __future__ import annotations

import json

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import MiB, Faulty, Kill, duplicate_rows, open_uploads, row_counts

pytestmark = pytest.mark.usefixtures("prefect")
FOLDER = "archive-k"


async def sql(db, statement: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def moment(name: str, faulty: Faulty, kill: Kill) -> None:
    p = faulty.proxies
    if name == "mid-copy":  # the multipart object is halfway
        p.dst_s3.after(up=6 * MiB, do=kill)
    elif name == "making the first folder":  # inside the first project's insert: its folder, before its links
        p.dst_db.after(match=b"INSERT INTO folders_v2", do=kill)
    elif name == "linking a tag":  # a user's folder made (uncommitted), their tag being linked
        p.dst_db.after(match=b"INSERT INTO projects_tags", do=kill)
    elif name == "a later user's insert":  # alice's projects committed, bob's first one being inserted
        p.dst_db.after(match=b"bob 1", do=kill)
    else:
        raise ValueError(name)


@pytest.mark.parametrize("when", ["mid-copy", "making the first folder", "linking a tag", "a later user's insert"])
async def test_a_killed_consolidation_is_finished_by_a_rerun(faulty: Faulty, tmp_path, when: str) -> None:
    env = faulty.env
    src, dst = env.source_db, env.destination_db
    ids = env.source_ids
    for name, email in (("alice.k", "alice@example.org"), ("bob.k", "bob@example.org")):
        await sql(dst, "INSERT INTO users (name, email, status, role) VALUES ($1, $2, 'ACTIVE', 'USER')", name, email)
    spec = dict(files=2, file_size=4096, directory_objects=2, hidden_children=0, soft_link=False,
                deployment_bound_rows=False, special_names=False, multipart_size=0)
    studies = [
        await build_sample_project(src, env.source_s3, owner_id=ids.users["alice"].id, spec=SampleSpec(
            seed=1, name="alice 1", **{**spec, "multipart_size": 12 * MiB, "multipart_part_size": 6 * MiB})),
        await build_sample_project(src, env.source_s3, owner_id=ids.users["alice"].id, spec=SampleSpec(seed=2, name="alice 2", **spec)),
        await build_sample_project(src, env.source_s3, owner_id=ids.users["bob"].id, spec=SampleSpec(seed=3, name="bob 1", **spec)),
        await build_sample_project(src, env.source_s3, owner_id=ids.users["bob"].id, spec=SampleSpec(seed=4, name="bob 2", **spec)),
    ]
    for study, owner in zip(studies, ("alice", "alice", "bob", "bob")):
        user = ids.users[owner]
        [folder] = await sql(src, "INSERT INTO folders_v2 (name, product_name, user_id, created_by_gid) "
                                  "VALUES ('mine', 'osparc', $1, $2) RETURNING folder_id", user.id, user.primary_gid)
        await sql(src, "INSERT INTO projects_to_folders (project_uuid, folder_id, user_id) VALUES ($1, $2, $3)",
                  study.uuid, folder["folder_id"], user.id)
        [tag] = await sql(src, "INSERT INTO tags (name, color) VALUES ('done', '#00aa00') RETURNING id")
        await sql(src, "INSERT INTO tags_access_rights (tag_id, group_id, read, write, delete) VALUES ($1, $2, true, true, true)",
                  tag["id"], user.primary_gid)
        await sql(src, "INSERT INTO projects_tags (project_id, tag_id, project_uuid_for_rut) SELECT id, $1, uuid FROM projects "
                       "WHERE uuid = $2", tag["id"], study.uuid)
    uuids = [s.uuid for s in studies]
    choices = {"all_users": True, "match_users": "email", "into_folder": FOLDER, "keep_folders": True}
    config = faulty.config_file(tmp_path / "cfg.json", uuids[0], part_concurrency=1)
    cfg = json.loads(config.read_text())
    cfg["choices"].update(project_uuid=None, destination_user_id=None, **choices)
    config.write_text(json.dumps(cfg))
    direct = faulty.direct(uuids[0]).with_choices(project_uuid=None, **choices)

    kill = Kill(faulty.proxies)
    moment(when, faulty, kill)
    code, out = await kill.start(config).wait()
    assert kill.process.killed and code == -9, f"{when}: the kill did not happen\n{out}"

    for study in studies:  # each project all there or not at all
        counts = await row_counts(direct, [study.uuid])
        assert counts["projects"] == 0 or all(counts[t] > 0 for t in ("projects_nodes", "file_meta_data", "project_to_groups")), (when, counts)
        linked = await sql(dst, "SELECT count(*) AS n FROM projects_to_folders WHERE project_uuid = $1", study.uuid)
        assert linked[0]["n"] == counts["projects"], (when, study.uuid)  # a project is in its folder, or not there

    faulty.proxies.heal()
    report = await migrate_project(faulty.settings(uuids[0], part_concurrency=1).with_choices(project_uuid=None, **choices))
    assert report.status in ("migrated", "already-migrated"), report.headline()

    owners = {r["uuid"]: r["email"] for r in await sql(
        dst, "SELECT p.uuid, u.email FROM projects p JOIN users u ON u.id = p.prj_owner")}
    assert owners == {s.uuid: f"{o}@example.org" for s, o in zip(studies, ("alice", "alice", "bob", "bob"))}
    # each account: one archive folder, one 'mine' under it, one 'done' tag: made once whatever the kill cut
    folders = await sql(dst, "SELECT u.email, f.name, count(*) AS n FROM folders_v2 f JOIN users u ON u.id = f.user_id "
                             "GROUP BY 1, 2 ORDER BY 1, 2")
    assert [tuple(r) for r in folders] == [("alice@example.org", FOLDER, 1), ("alice@example.org", "mine", 1),
                                           ("bob@example.org", FOLDER, 1), ("bob@example.org", "mine", 1)]
    tags = await sql(dst, "SELECT name, count(*) AS n FROM tags GROUP BY 1")
    assert [tuple(r) for r in tags] == [("done", 2)]  # one per account
    assert await duplicate_rows(direct) == {} and await open_uploads(direct) == []
    verified = await commands.verify(direct, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
