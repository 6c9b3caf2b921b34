"""A deployment retired into another, user by user (issue 25): every active user's studies into their
own account on the destination, matched by e-mail, into a named folder with their folder tree, their
tags, and their sharing with other matched users kept. The destination is read with SQL of the test's
own (never through projmig's row check), and compared with the source's rows."""

from __future__ import annotations

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.errors import InsertError
from projmig.sandbox.sample import SampleProject, SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings

from ..conftest import Simcore

pytestmark = pytest.mark.usefixtures("prefect")
FOLDER = "archive-x"


async def sql(db: DatabaseSettings, statement: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        if not args and ";" in statement.strip().rstrip(";"):  # several statements
            await conn.execute(statement)
            return []
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


async def add_user(db: DatabaseSettings, name: str, email: str) -> tuple[int, int]:
    """A user (the users trigger gives them a primary group): (id, primary group)."""
    [row] = await sql(db, "INSERT INTO users (name, email, status, role) VALUES ($1, $2, 'ACTIVE', 'USER') "
                          "RETURNING id, primary_gid", name, email)
    [again] = await sql(db, "SELECT primary_gid FROM users WHERE id = $1", row["id"])
    return row["id"], again["primary_gid"]


def spec(seed: int, **changes) -> SampleSpec:
    base = dict(seed=seed, name=f"study {seed}", files=2, file_size=2048, multipart_size=0, directory_objects=2,
                directory_object_size=512, hidden_children=0, child_files=1, soft_link=False,
                deployment_bound_rows=False, special_names=False)
    return SampleSpec(**{**base, **changes})  # type: ignore[arg-type]


async def in_folders(db: DatabaseSettings, owner: int, project: str, path: list[str]) -> None:
    """Put ``project`` into the owner's private folder ``path`` (made here, nested)."""
    parent = None
    for name in path:
        [row] = await sql(db, "INSERT INTO folders_v2 (name, parent_folder_id, product_name, user_id, created_by_gid) "
                              "VALUES ($1, $2, 'osparc', $3, (SELECT primary_gid FROM users WHERE id = $3)) "
                              "RETURNING folder_id", name, parent, owner)
        parent = row["folder_id"]
    await sql(db, "INSERT INTO projects_to_folders (project_uuid, folder_id, user_id) VALUES ($1, $2, $3)",
              project, parent, owner)


async def tagged(db: DatabaseSettings, owner_gid: int, project: str, name: str, color: str) -> None:
    [tag] = await sql(db, "INSERT INTO tags (name, color) VALUES ($1, $2) RETURNING id", name, color)
    await sql(db, "INSERT INTO tags_access_rights (tag_id, group_id, read, write, delete) VALUES ($1, $2, true, true, true)",
              tag["id"], owner_gid)
    await sql(db, "INSERT INTO projects_tags (project_id, tag_id, project_uuid_for_rut) "
                  "SELECT id, $1, uuid FROM projects WHERE uuid = $2", tag["id"], project)


async def folder_path_of(db: DatabaseSettings, project: str) -> list[list[str]]:
    """Each folder the project is in, as names from the top (the test's own recursive query)."""
    rows = await sql(db, """
        WITH RECURSIVE up AS (
            SELECT l.folder_id AS leaf, f.folder_id, f.name, f.parent_folder_id, 0 AS depth
            FROM projects_to_folders l JOIN folders_v2 f ON f.folder_id = l.folder_id WHERE l.project_uuid = $1
            UNION ALL SELECT up.leaf, f.folder_id, f.name, f.parent_folder_id, up.depth + 1
            FROM folders_v2 f JOIN up ON f.folder_id = up.parent_folder_id)
        SELECT leaf, name FROM up ORDER BY leaf, depth DESC""", project)
    paths: dict[int, list[str]] = {}
    for row in rows:
        paths.setdefault(row["leaf"], []).append(row["name"])
    return sorted(paths.values())


async def test_every_user_into_their_own_account_with_folders_tags_and_sharing(simcore: Simcore) -> None:
    src, dst = simcore.source_db, simcore.destination_db
    ids = simcore.source_ids
    alice, bob = ids.users["alice"], ids.users["bob"]
    dave, _ = await add_user(src, "dave", "Dave.Smith@Example.ORG")  # the destination spells it otherwise
    erin, _ = await add_user(src, "erin", "erin@example.org")  # no account in the destination
    alice_at, alice_gid = await add_user(dst, "alice.aws", "ALICE@example.org")
    bob_at, bob_gid = await add_user(dst, "bob.aws", "bob@example.org")
    dave_at, _ = await add_user(dst, "dave.aws", "dave.smith@example.org")
    [lab] = await sql(src, "SELECT gid FROM groups WHERE name = 'lab'")
    [lab_aws] = await sql(dst, "INSERT INTO groups (name, description, type) VALUES ('lab-aws', 'a team', 'STANDARD') RETURNING gid")

    shared: SampleProject = await build_sample_project(src, simcore.source_s3, owner_id=alice.id, spec=spec(
        1, hidden_children=1, share_with_gids=[bob.primary_gid, lab["gid"], ids.everyone_gid]))
    loose = await build_sample_project(src, simcore.source_s3, owner_id=alice.id, spec=spec(2))
    bobs = await build_sample_project(src, simcore.source_s3, owner_id=bob.id, spec=spec(3))
    daves = await build_sample_project(src, simcore.source_s3, owner_id=dave, spec=spec(4))
    erins = await build_sample_project(src, simcore.source_s3, owner_id=erin, spec=spec(5))
    await in_folders(src, alice.id, shared.uuid, ["projects", "2024"])
    await tagged(src, alice.primary_gid, shared.uuid, "important", "#ff0000")
    await sql(dst, "INSERT INTO tags (name, color) VALUES ('important', '#00ff00')")  # someone else's: not reused

    settings = simcore.settings(None, choices={
        "all_users": True, "include_hidden": True, "match_users": "email", "into_folder": FOLDER, "keep_folders": True,
        "group_map": {"lab": "lab-aws"}})
    settings = settings.model_copy(update={"choices": settings.choices.model_copy(update={"destination_user_id": None})})

    # erin has no account: the plan names her, the migration refuses in one line unless told to skip her
    checked, _ = await commands.plan(settings)
    problem = {m.source.email: m.problem for m in checked.matches}
    assert problem == {"alice@example.org": None, "bob@example.org": None, "Dave.Smith@Example.ORG": None,
                       "erin@example.org": "no active destination user has the e-mail 'erin@example.org'"}
    with pytest.raises(Exception, match=r"source user erin@example.org \(user \d+\): no active destination user .*"
                                        r"their 1 projects cannot move"):
        await migrate_project(settings)
    assert await sql(dst, "SELECT uuid FROM projects") == []

    skipping = settings.model_copy(update={"choices": settings.choices.model_copy(update={"skip_unmatched": True})})
    report = await migrate_project(skipping)

    assert report.status == "migrated", report.headline()
    users = {row["user"].split(" ")[0]: row for row in report.user_rows()}
    assert users["erin@example.org"]["status"].startswith("skipped: no active destination user")
    assert (users["alice@example.org"]["studies"], users["alice@example.org"]["projects"]) == (2, 3)
    assert users["Dave.Smith@Example.ORG"]["account"] == f"dave.smith@example.org (user {dave_at})"
    owners = {r["uuid"]: r["prj_owner"] for r in await sql(dst, "SELECT uuid, prj_owner FROM projects")}
    assert owners == {shared.uuid: alice_at, shared.children[0]: alice_at, loose.uuid: alice_at,
                      bobs.uuid: bob_at, daves.uuid: dave_at}
    assert erins.uuid not in owners
    # folders: archive-x in each account once, alice's tree under it; the hidden job in none
    assert await folder_path_of(dst, shared.uuid) == [[FOLDER, "projects", "2024"]]
    assert await folder_path_of(dst, loose.uuid) == [[FOLDER]]
    assert await folder_path_of(dst, bobs.uuid) == [[FOLDER]]
    assert await folder_path_of(dst, shared.children[0]) == []
    archives = await sql(dst, "SELECT user_id, count(*) AS n FROM folders_v2 WHERE name = $1 GROUP BY user_id ORDER BY 1", FOLDER)
    assert [(r["user_id"], r["n"]) for r in archives] == sorted([(alice_at, 1), (bob_at, 1), (dave_at, 1)])
    # tags: alice's "important" re-created for her account (the other one is not hers), linked to the study
    tags = await sql(dst, "SELECT t.name, t.color, a.group_id FROM projects_tags pt JOIN tags t ON t.id = pt.tag_id "
                          "JOIN tags_access_rights a ON a.tag_id = t.id WHERE pt.project_uuid_for_rut = $1", shared.uuid)
    assert [tuple(r) for r in tags] == [("important", "#ff0000", alice_gid)]
    # sharing follows the people: bob's group -> bob's account's, the lab -> lab-aws, Everyone -> Everyone
    gids = {r["gid"]: (r["read"], r["write"], r["delete"]) for r in await sql(
        dst, "SELECT gid, read, write, delete FROM project_to_groups WHERE project_uuid = $1", shared.uuid)}
    source_rights = {r["gid"]: (r["read"], r["write"], r["delete"]) for r in await sql(
        src, "SELECT gid, read, write, delete FROM project_to_groups WHERE project_uuid = $1", shared.uuid)}
    mapped = {alice.primary_gid: alice_gid, bob.primary_gid: bob_gid, lab["gid"]: lab_aws["gid"],
              ids.everyone_gid: simcore.destination_ids.everyone_gid}
    assert gids == {mapped[g]: (True, True, True) if g == alice.primary_gid else rights for g, rights in source_rights.items()}
    # every other column of every project table as the source has it (projmig's own check agrees)
    verified = await commands.verify(skipping, deep=False)
    assert verified.equal, [str(d) for d in verified.differences]

    again = await migrate_project(skipping)
    assert again.status == "already-migrated" and again.objects_copied == 0 and again.rows == 0
    assert (await sql(dst, "SELECT count(*) AS n FROM folders_v2"))[0]["n"] == 5  # 3 archives + projects + 2024

    # rollback of the whole consolidation: the studies, their links, and the folders and tag it made
    before_tags = await sql(dst, "SELECT id FROM tags ORDER BY id")
    removed = await commands.rollback(skipping)
    assert len(removed.removed_projects) == 5
    assert await sql(dst, "SELECT uuid FROM projects") == []
    assert await sql(dst, "SELECT folder_id FROM folders_v2") == []
    assert [r["id"] for r in await sql(dst, "SELECT id FROM tags ORDER BY id")] == [before_tags[0]["id"]]  # someone else's stays
    assert (await commands.rollback(skipping)).nothing


async def test_a_failing_user_does_not_stop_the_others(simcore: Simcore) -> None:
    """Two users; one user's study cannot be inserted (a destination trigger refuses it): the other
    user's studies land, the run ends partial naming the failed one."""
    src, dst = simcore.source_db, simcore.destination_db
    ids = simcore.source_ids
    await add_user(dst, "alice.aws", "alice@example.org")
    await add_user(dst, "bob.aws", "bob@example.org")
    a = await build_sample_project(src, simcore.source_s3, owner_id=ids.users["alice"].id, spec=spec(11))
    b = await build_sample_project(src, simcore.source_s3, owner_id=ids.users["bob"].id, spec=spec(12))
    await sql(dst, f"""
        CREATE FUNCTION refuse_b() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;
        CREATE TRIGGER refuse_b BEFORE INSERT ON projects_nodes FOR EACH ROW
            WHEN (NEW.project_uuid = '{b.uuid}') EXECUTE FUNCTION refuse_b();""")
    settings = simcore.settings(None, choices={"all_users": True, "match_users": "email", "into_folder": FOLDER})
    with pytest.raises(InsertError) as failed:  # (one root failed: its own error, with the run's report)
        await migrate_project(settings)
    report = failed.value.report  # type: ignore[attr-defined]
    assert report.status == "partial" and set(report.failed) == {b.uuid}
    rows = {row["user"].split(" ")[0]: row["status"] for row in report.user_rows()}
    assert rows == {"alice@example.org": "migrated", "bob@example.org": "1 of 1 studies failed"}
    assert [r["uuid"] for r in await sql(dst, "SELECT uuid FROM projects")] == [a.uuid]
