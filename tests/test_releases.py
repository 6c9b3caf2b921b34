"""projmig/releases.py: osparc's own migrations from the operator's package, on real PostgreSQL.

The path between two revisions (direction, steps, which name the project tables) is read without
running osparc's code; running them goes through a subprocess, with the password in its
environment only; an unknown revision and a failing migration are one line each."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from projmig.errors import ConfigError
from projmig.releases import (
    MigrationError,
    OsparcMigrations,
    UnknownRevisionError,
    child_environment,
    connect,
    current_revision,
)
from projmig.sandbox.osparc_releases import OLDER_REVISION, WORKBENCH_REVISION, seed_identities, seed_study

from .releases_fixtures import SourceServer

# one worker of `make test` runs these (their servers, sources and templates are made once per worker)
pytestmark = pytest.mark.xdist_group("osparc-releases")

HEAD = "3f8c0e8d11a4"
WORKBENCH_TO_NODES = "201aa37f4d9a"


def test_the_path_between_two_revisions(osparc: OsparcMigrations) -> None:
    assert osparc.head == HEAD
    up = osparc.path(WORKBENCH_REVISION, HEAD)
    assert up.direction == "upgrade"
    assert [r.id for r in up.steps][:2] == [WORKBENCH_TO_NODES, "c9c165644731"] and up.steps[-1].id == HEAD
    assert len(up.steps) == 12
    touching = {r.id: tables for r, tables in up.touching}
    assert touching[WORKBENCH_TO_NODES] == {"projects", "projects_nodes"}
    assert touching["1f1779261822"] == {"projects", "projects_nodes"}  # ui.workbench -> projects_nodes.ui
    assert touching["4ec498d70da6"] == {"file_meta_data"}  # text dates -> timestamptz
    assert "3f8c0e8d11a4" not in touching and "5f9749ff9007" not in touching  # comp_* index, users column
    assert up.dropped_tables == {"user_to_projects"}
    assert "12 osparc migrations, 8 of them on project tables" in up.describe()

    down = osparc.path(HEAD, WORKBENCH_REVISION)
    assert down.direction == "downgrade"
    assert [r.id for r in down.steps] == [r.id for r in reversed(up.steps)]
    assert WORKBENCH_TO_NODES in {r.id for r, _ in down.touching}

    older = osparc.path(OLDER_REVISION, HEAD)
    assert {"ce69cc44246a", "47dc5c0a138e", WORKBENCH_TO_NODES} <= {r.id for r, _ in older.touching}
    assert "projects_to_products" in older.dropped_tables
    assert any(fk.table == "file_meta_data" and fk.columns == ("user_id",) and fk.referred_table == "users"
               for fk in older.created_foreign_keys)

    assert osparc.path(HEAD, HEAD).direction == "none"
    empty = osparc.path(None, WORKBENCH_REVISION)
    assert empty.direction == "upgrade" and empty.steps[0].id == "645807399320" and len(empty.steps) == 261


def test_an_unknown_revision_is_one_line(osparc: OsparcMigrations) -> None:
    with pytest.raises(UnknownRevisionError) as caught:
        osparc.path("0123456789ab", HEAD)
    assert "0123456789ab" in str(caught.value) and "\n" not in str(caught.value)
    assert str(osparc.package) in str(caught.value)
    with pytest.raises(UnknownRevisionError, match="target revision 0123456789ab"):
        osparc.path(HEAD, "0123456789ab")


def test_the_package_directory_is_checked(osparc: OsparcMigrations, tmp_path: Path) -> None:
    def problem(path: Path) -> str:
        with pytest.raises(ConfigError) as caught:
            OsparcMigrations.at(path)
        assert len(caught.value.problems) == 1 and "\n" not in str(caught.value)
        return str(caught.value)

    assert "is not a directory" in problem(tmp_path / "nowhere")
    assert "is not osparc-simcore's packages/postgres-database" in problem(tmp_path)
    checkout = osparc.package.parents[1]
    assert f"did you mean {osparc.package}" in problem(checkout)
    broken = tmp_path / "broken" / "postgres-database"
    shutil.copytree(osparc.package / "src", broken / "src")
    assert "common-library not found next to" in problem(broken)
    (broken.parent / "common-library").symlink_to(osparc.common_library)
    (broken / "src/simcore_postgres_database/migration/versions/0000_stray.py").write_text(
        'revision = "0000stray"\ndown_revision = "not-there"\n')
    assert "not-there" in problem(broken)


async def test_upgrade_and_downgrade_with_osparc_migrations(osparc: OsparcMigrations, source_server: SourceServer) -> None:
    db = await source_server.create("releases_up_down")
    try:
        timings = {}
        started = time.monotonic()
        run = await source_server.runner.migrate(db, WORKBENCH_REVISION)  # the session's warm subprocess
        timings["empty -> 447db39c5455, warm"] = time.monotonic() - started
        assert len(run.steps_run) == 261 and await current_revision(db) == WORKBENCH_REVISION
        assert await _has_column(db, "projects", "workbench")
        started = time.monotonic()
        await osparc.upgrade(db, HEAD)  # one-shot: a subprocess of its own
        timings["447db39c5455 -> head, one-shot"] = time.monotonic() - started
        assert await current_revision(db) == HEAD and not await _has_column(db, "projects", "workbench")
        with pytest.raises(ConfigError, match="downgrade needed"):
            await osparc.upgrade(db, WORKBENCH_REVISION)
        started = time.monotonic()
        await osparc.downgrade(db, WORKBENCH_REVISION)
        timings["head -> 447db39c5455, one-shot"] = time.monotonic() - started
        assert await current_revision(db) == WORKBENCH_REVISION and await _has_column(db, "projects", "workbench")
        print(" ".join(f"{k}: {v:.2f} s;" for k, v in timings.items()))
    finally:
        await source_server.drop("releases_up_down")


async def test_the_password_reaches_the_subprocess_only_through_its_environment(
    osparc: OsparcMigrations, source_server: SourceServer,
) -> None:
    password = source_server.server.password
    env = child_environment(osparc, source_server.admin)
    assert env["PGPASSWORD"] == password
    assert sum(password in value for value in env.values()) == 1
    runner = await osparc.runner(source_server.admin).start()
    try:
        assert runner._process is not None  # noqa: SLF001 - the test looks at the process it started
        cmdline = Path(f"/proc/{runner._process.pid}/cmdline").read_bytes()  # noqa: SLF001
        assert password.encode() not in cmdline
    finally:
        await runner.close()


async def test_a_database_at_an_unknown_revision_is_one_line(osparc: OsparcMigrations, source_server: SourceServer) -> None:
    db = await source_server.create("releases_unknown")
    try:
        conn = await connect(db)
        try:
            await conn.execute("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL)")
            await conn.execute("INSERT INTO alembic_version VALUES ('ffffffffffff')")
        finally:
            await conn.close()
        with pytest.raises(UnknownRevisionError) as caught:
            await source_server.runner.migrate(db, HEAD)
        assert "ffffffffffff" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        await source_server.drop("releases_unknown")


async def test_a_failing_migration_is_one_line_naming_the_revision_and_the_project(
    osparc: OsparcMigrations, source_server: SourceServer,
) -> None:
    """A node with a key the webserver of 447db39c5455 never wrote: osparc's 201aa37f4d9a refuses it
    (``Unknown workbench keys``). The whole upgrade is one transaction: the database keeps its revision."""
    db = await source_server.create("releases_failing")
    try:
        await source_server.runner.migrate(db, WORKBENCH_REVISION)
        ids = await seed_identities(db, users=["alice"])
        fine = await seed_study(db, ids, "alice", name="fine")
        bad = await seed_study(db, ids, "alice", name="bad", workbench_extra={"legacyKey": 1}, offset=1)
        with pytest.raises(MigrationError) as caught:
            await source_server.runner.migrate(db, HEAD)
        message = str(caught.value)
        print(message)
        assert "\n" not in message, message
        assert WORKBENCH_TO_NODES in message and "Migrate workbench column to projects_nodes" in message
        assert bad.uuid in message and fine.uuid not in message and "Unknown workbench keys" in message
        assert "legacyKey" in message
        assert caught.value.revision == WORKBENCH_TO_NODES and caught.value.projects == [bad.uuid]
        assert source_server.server.password not in message
        assert await current_revision(db) == WORKBENCH_REVISION
    finally:
        await source_server.drop("releases_failing")


async def _has_column(db, table: str, column: str) -> bool:
    conn = await connect(db)
    try:
        return await conn.fetchval(
            "SELECT count(*) > 0 FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
            table, column)
    finally:
        await conn.close()
