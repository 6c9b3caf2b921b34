"""A migration between deployments at different osparc releases, as an operator runs it: the
``migrate-project`` flow with ``host.schema_migrations`` naming osparc's own migrations. What lands in
the destination is compared, in PostgreSQL's text of every value, with osparc's own answer: its
migration of a ``pg_dump`` of the whole source to the destination's revision (modulo the documented
remaps, applied here by the test's own code). Both directions (447db39c5455 -> head by upgrade, head
-> 447db39c5455 by downgrade) and from an older release (a85557c02d71, before ce69cc44246a moved
``projects_to_products`` into ``projects.product_name``)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.errors import PreflightError
from projmig.releases import OsparcMigrations, connect
from projmig.s3 import s3_client
from projmig.sandbox import Sandbox
from projmig.sandbox.osparc_releases import Study, create_osparc_database, seed_identities, seed_study, stored_keys
from projmig.sandbox.simcore import Identities
from projmig.settings import DatabaseSettings, MigrationSettings, S3Settings

from ..faults.conftest import prefect_env
from ..releases_fixtures import SourceServer, dump_and_restore, project_rows, text_rows

pytestmark = [pytest.mark.usefixtures("prefect"), pytest.mark.xdist_group("osparc-releases")]

OLD, OLDER = "447db39c5455", "a85557c02d71"


@dataclass
class Deployments:
    source: DatabaseSettings
    destination: DatabaseSettings
    source_s3: S3Settings
    destination_s3: S3Settings
    source_ids: Identities
    destination_ids: Identities
    study: Study

    def settings(self, osparc: OsparcMigrations | None, **choices: Any) -> MigrationSettings:
        return MigrationSettings(
            source={"db": self.source, "s3": self.source_s3},
            destination={"db": self.destination, "s3": self.destination_s3},
            host={"schema_migrations": osparc.package if osparc else None},
            choices={"project_uuid": self.study.uuid, "include_hidden": True,
                     "destination_user_id": self.destination_ids.users["carol"].id, **choices},
        )


async def put_objects(db: DatabaseSettings, s3: S3Settings, projects: list[str]) -> dict[str, bytes]:
    """An object for each file row of ``projects`` (:func:`stored_keys`), as the source deployment's
    storage holds them."""
    objects = {key: secrets.token_bytes(100 + i) for i, key in enumerate(await stored_keys(db, projects))}
    async with s3_client(s3) as client:
        for key, body in objects.items():
            await client.put_object(Bucket=s3.bucket, Key=key, Body=body)
    return objects


async def deployments(
    server: SourceServer, sandbox: Sandbox, osparc: OsparcMigrations, source_revision: str, destination_revision: str,
) -> Deployments:
    """A source at one osparc revision (alice's study with two hidden jobs, shared with bob and a
    group, a directory entry and a soft link; an unrelated user's study) and a destination at another,
    each database made by osparc's migrations; buckets on the sandbox's two SeaweedFS servers."""
    tag = secrets.token_hex(3)
    source, destination = await server.create(f"rel_src_{tag}"), await server.create(f"rel_dst_{tag}")
    await create_osparc_database(source, osparc, source_revision, runner=server.runner)
    await create_osparc_database(destination, osparc, destination_revision, runner=server.runner)
    source_ids = await seed_identities(source, users=["alice", "bob", "zoe"], groups=["lab"])
    destination_ids = await seed_identities(destination, users=["admin", "carol", "bob"])
    study = await seed_study(source, source_ids, "alice", name="alice's study [v2]", children=2, collaborator="bob",
                             shared_group="lab")
    await seed_study(source, source_ids, "zoe", name="zoe's study", nodes=2, offset=3)
    source_s3 = await sandbox.source.create_bucket(f"rel-src-{tag}")
    destination_s3 = await sandbox.destination.create_bucket(f"rel-dst-{tag}")
    await put_objects(source, source_s3, study.projects)
    return Deployments(source, destination, source_s3, destination_s3, source_ids, destination_ids, study)


async def oracle(server: SourceServer, osparc: OsparcMigrations, source: DatabaseSettings, revision: str) -> DatabaseSettings:
    """osparc's own answer: a pg_dump of the whole source, restored and migrated to ``revision``."""
    copy = await server.create(f"oracle_{secrets.token_hex(3)}")
    dump_and_restore(server, source, copy)
    await osparc.migrate(copy, revision)
    return copy


# columns each database sets itself (sequences, triggers, 201aa37f4d9a's NOW()): never compared
OWN_COLUMNS = {
    "projects": frozenset({"id"}),
    "projects_nodes": frozenset({"project_node_id", "created", "modified"}),
    "projects_metadata": frozenset({"modified"}),
    "project_to_groups": frozenset({"created", "modified"}),
}


def remapped(rows: dict[str, list[tuple]], columns: dict[str, list[str]], remap: dict[tuple[str, str], Any]) -> dict[str, list]:
    """The oracle's rows with the documented remaps applied: ``remap[(table, column)]`` is the value
    the destination must hold (a function of the source value, or a constant)."""
    out = {}
    for table, table_rows in rows.items():
        names = columns[table]
        changed = []
        for row in table_rows:
            values = dict(zip(names, row))
            for (t, column), rule in remap.items():
                if t == table and column in values:
                    values[column] = rule(values[column]) if callable(rule) else rule
            changed.append(tuple(values[n] for n in names))
        out[table] = sorted(changed, key=lambda r: tuple("\0" if v is None else v for v in r))
    return out


async def column_names(db: DatabaseSettings, tables: list[str]) -> dict[str, list[str]]:
    conn = await connect(db)
    try:
        return {t: [r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
            "ORDER BY column_name", t)] for t in tables}
    finally:
        await conn.close()


async def assert_equals_osparcs_answer(
    env: Deployments, server: SourceServer, osparc: OsparcMigrations, revision: str, verified_objects: dict[str, tuple[int, str]],
) -> None:
    expected_db = await oracle(server, osparc, env.source, revision)
    projects = env.study.projects
    expected = await project_rows(expected_db, projects, OWN_COLUMNS)
    got = await project_rows(env.destination, projects, OWN_COLUMNS)
    columns = {t: [c for c in names if c not in OWN_COLUMNS.get(t, frozenset())]
               for t, names in (await column_names(env.destination, list(got))).items()}
    carol = env.destination_ids.users["carol"]
    src_alice = env.source_ids.users["alice"]
    # project_to_groups: the owner's group becomes carol's; Everyone the destination's; the product's
    # group the destination product's; any other group (bob's, the lab) is dropped (table rules)
    groups = {str(src_alice.primary_gid): str(carol.primary_gid), str(env.source_ids.everyone_gid): str(env.destination_ids.everyone_gid)}
    gid_column = columns["project_to_groups"].index("gid")
    expected["project_to_groups"] = [row for row in expected["project_to_groups"] if row[gid_column] in groups]
    file_columns = columns["file_meta_data"]
    rules: dict[tuple[str, str], Any] = {
        ("projects", "prj_owner"): str(carol.id),
        ("projects", "workspace_id"): None,
        ("projects", "trashed_by"): lambda v: None if v is None else str(carol.id),
        ("project_to_groups", "gid"): lambda v: groups[v],
        ("file_meta_data", "user_id"): str(carol.id),
        ("file_meta_data", "bucket_name"): env.destination_s3.bucket,
        ("file_meta_data", "upload_id"): None,
        ("file_meta_data", "upload_expires_at"): None,
    }
    expected = remapped(expected, columns, rules)
    # a file entry with an object of its own records the size and ETag verified in the destination
    name_at, size_at, etag_at, link_at = (file_columns.index(c) for c in ("object_name", "file_size", "entity_tag", "is_soft_link"))
    fixed = []
    for row in expected["file_meta_data"]:
        row = list(row)
        if row[name_at] in verified_objects and row[link_at] == "false":  # (a soft link's object is its target's)
            row[size_at], row[etag_at] = str(verified_objects[row[name_at]][0]), verified_objects[row[name_at]][1]
        fixed.append(tuple(row))
    expected["file_meta_data"] = sorted(fixed, key=lambda r: tuple("\0" if v is None else v for v in r))
    assert set(got) == set(expected)
    for table in expected:
        assert got[table] == expected[table], table


async def destination_objects(s3: S3Settings) -> dict[str, tuple[int, str]]:
    async with s3_client(s3) as client:
        listed = await client.list_objects_v2(Bucket=s3.bucket)
    return {o["Key"]: (o["Size"], o["ETag"].strip('"')) for o in listed.get("Contents", [])}  # (as osparc's storage keeps it)


async def test_a_study_of_an_older_release_lands_as_osparcs_upgrade_makes_it(
    source_server: SourceServer, sandbox: Sandbox, osparc: OsparcMigrations,
) -> None:
    env = await deployments(source_server, sandbox, osparc, OLD, osparc.head)

    # without osparc's migrations: refused before anything is written, saying what makes it possible
    with pytest.raises(PreflightError) as refused:
        await commands.plan(env.settings(None))
    assert refused.value.problems == [
        f"schema revision mismatch: source is at {OLD}, destination at {osparc.head} (set host.schema_migrations to "
        "osparc-simcore's packages/postgres-database to migrate across the releases with osparc's own migrations, "
        "or set options.allow_schema_drift to migrate where the columns allow it)"
    ]

    settings = env.settings(osparc)
    checked, plan = await commands.plan(settings)
    assert checked.release is not None and checked.release.direction == "upgrade"
    assert checked.release.path.startswith(f"upgrade {OLD} -> {osparc.head}: ")
    assert any("201aa37f4d9a" in t and "projects_nodes" in t for t in checked.release.touching)
    assert checked.release.staged_rows["projects"] == 3  # the study and its two jobs, nothing of zoe's
    assert "projects.workbench" in checked.release.gone  # its nodes are projects_nodes rows at head
    assert len(plan.projects) == 3

    report = await migrate_project(settings)
    assert report.status == "migrated", report.headline()
    assert report.rows_inserted["projects"] == 3

    await assert_equals_osparcs_answer(env, source_server, osparc, osparc.head, await destination_objects(env.destination_s3))
    verified = await commands.verify(settings, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    assert verified.notes[0].startswith(f"rows compared with the source's as osparc's migrations make them at {osparc.head}")

    again = await migrate_project(settings)
    assert again.status == "already-migrated" and again.rows == 0 and again.objects_copied == 0

    # rollback finds what the migration wrote through the same staging: all of it, and nothing else
    assert len(await text_rows(env.destination, "projects")) == 3
    removed = await commands.rollback(settings)
    assert sorted(p.dst_uuid for p in removed.removed_projects) == sorted(env.study.projects)
    assert await text_rows(env.destination, "projects") == [] and await destination_objects(env.destination_s3) == {}


async def test_a_study_of_the_newer_release_lands_as_osparcs_downgrade_makes_it(
    source_server: SourceServer, sandbox: Sandbox, osparc: OsparcMigrations,
) -> None:
    # a study made at 447db39c5455, then the source deployment upgraded to head by osparc (as real ones are)
    env = await deployments(source_server, sandbox, osparc, OLD, OLD)
    await osparc.migrate(env.source, osparc.head)
    settings = env.settings(osparc)

    checked, _ = await commands.plan(settings)
    assert checked.release is not None and checked.release.direction == "downgrade"
    # what the downgrade drops is said before anything moves
    assert "projects_nodes.ui" in checked.release.gone
    lines = checked.release.lines()
    assert any(line.startswith("  dropped by the downgrade: projects_nodes.ui (") for line in lines), lines

    report = await migrate_project(settings)
    assert report.status == "migrated", report.headline()
    await assert_equals_osparcs_answer(env, source_server, osparc, OLD, await destination_objects(env.destination_s3))
    assert (await commands.verify(settings, deep=False)).equal


async def test_a_study_from_before_the_product_column_lands_as_osparcs_upgrade_makes_it(
    source_server: SourceServer, sandbox: Sandbox, osparc: OsparcMigrations,
) -> None:
    env = await deployments(source_server, sandbox, osparc, OLDER, osparc.head)
    settings = env.settings(osparc)
    report = await migrate_project(settings)
    assert report.status == "migrated", report.headline()
    await assert_equals_osparcs_answer(env, source_server, osparc, osparc.head, await destination_objects(env.destination_s3))


def projmig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "projmig"), *args], capture_output=True, text=True,
                          timeout=600, env={**prefect_env(), "COLUMNS": "200"})


def cfg_json(path: Path, env: Deployments) -> Path:
    """The deployments as an operator's cfg.json (secrets in clear: test servers only)."""
    def plain(model: Any) -> dict[str, Any]:
        data = model.model_dump(mode="json", exclude_none=True)
        for name in ("password", "access_key", "secret_key"):
            if getattr(model, name, None) is not None:
                data[name] = getattr(model, name).get_secret_value()
        return data

    path.write_text(json.dumps({
        "source": {"db": plain(env.source), "s3": plain(env.source_s3)},
        "destination": {"db": plain(env.destination), "s3": plain(env.destination_s3)},
        "choices": {"project_uuid": env.study.uuid, "include_hidden": True,
                    "destination_user_id": env.destination_ids.users["carol"].id},
    }))
    return path


async def test_the_cli_plans_across_releases_and_refuses_what_osparcs_migrations_refuse_in_one_line(
    source_server: SourceServer, sandbox: Sandbox, osparc: OsparcMigrations, tmp_path: Path,
) -> None:
    env = await deployments(source_server, sandbox, osparc, OLD, osparc.head)
    cfg = cfg_json(tmp_path / "cfg.json", env)
    flag = ["--schema-migrations", str(osparc.package)]

    # without osparc's migrations the revisions differ: refused in one line naming what to give
    unstaged = projmig("migrate", "--config", str(cfg))
    assert unstaged.returncode == 2, unstaged.stdout + unstaged.stderr
    (line,) = unstaged.stderr.strip().splitlines()
    assert OLD in line and osparc.head in line and "host.schema_migrations" in line, line
    assert await text_rows(env.destination, "projects") == [] and await destination_objects(env.destination_s3) == {}

    planned = projmig("plan", "--config", str(cfg), *flag)
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    assert lines[0].startswith(f"across osparc releases: upgrade {OLD} -> {osparc.head}: ") and " osparc migrations, " in lines[0]
    assert lines[1] == f"  osparc's migrations from {osparc.package}"
    assert lines[2].startswith("  staged rows: ") and ", projects 3, " in lines[2] and "(staging " in lines[2], lines[2]
    assert any(line.startswith("  not at the destination's revision: projects.workbench (3 rows held a value)") for line in lines)

    # a study osparc's own migration refuses (its webserver wrote a key 201aa37f4d9a does not know)
    broken = await seed_study(env.source, env.source_ids, "alice", name="broken", workbench_extra={"legacyKey": 1}, offset=9)
    await put_objects(env.source, env.source_s3, broken.projects)
    failed = projmig("migrate", "--config", str(cfg), *flag, "--project", broken.uuid)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("error: osparc migration 201aa37f4d9a (") and f"on project {broken.uuid}" in line, line
    assert "Unknown workbench keys" in line and "Traceback" not in failed.stderr
    assert await text_rows(env.destination, "projects") == [] and await destination_objects(env.destination_s3) == {}

    # a source at a revision the package does not know
    conn = await connect(env.source)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed0001'")
    finally:
        await conn.close()
    unknown = projmig("plan", "--config", str(cfg), *flag)
    assert unknown.returncode == 2
    (line,) = unknown.stderr.strip().splitlines()
    assert "f00dfeed0001" in line and str(osparc.package) in line, line
