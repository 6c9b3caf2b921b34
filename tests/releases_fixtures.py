"""Fixtures and independent views for the tests across osparc releases (tests/test_releases.py,
tests/test_staging.py): osparc's package, one PostgreSQL server for the sources, sources built at
older revisions by osparc's migrations, and the oracle (osparc's own migration of a ``pg_dump`` of a
whole source).

The package: ``$PROJMIG_TEST_OSPARC_PACKAGE`` (osparc-simcore's ``packages/postgres-database``), else
``../shared/osparc-simcore/packages/postgres-database`` next to the checkout; without either, the
tests skip and say so.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from projmig.releases import MigrationRunner, OsparcMigrations, connect
from projmig.sandbox.osparc_releases import Study, create_osparc_database, seed_identities, seed_study
from projmig.sandbox.servers import PostgresServer, find_pg_bindir
from projmig.sandbox.simcore import Identities
from projmig.schema import PROJECT_TABLES
from projmig.settings import DatabaseSettings
from projmig.staging import StagingServer, stop_at_once

PACKAGE_ENV = "PROJMIG_TEST_OSPARC_PACKAGE"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_PACKAGE = REPO.parent / "shared" / "osparc-simcore" / "packages" / "postgres-database"
PROJECT_COLUMN = {"projects": "uuid", "file_meta_data": "project_id"}  # else project_uuid
UNRELATED_USERS = 22


def osparc_package() -> Path | None:
    given = os.environ.get(PACKAGE_ENV)
    if given:
        return Path(given)
    return DEFAULT_PACKAGE if DEFAULT_PACKAGE.is_dir() else None


@pytest.fixture(scope="session")
def osparc() -> OsparcMigrations:
    package = osparc_package()
    if package is None:
        pytest.skip(f"osparc-simcore's packages/postgres-database not found: set {PACKAGE_ENV} "
                    f"(or put osparc-simcore at {DEFAULT_PACKAGE.parents[2]})")
    return OsparcMigrations.at(package, what=PACKAGE_ENV)


@dataclass
class SourceServer:
    """A PostgreSQL server for the tests' source and oracle databases."""

    server: PostgresServer
    admin: DatabaseSettings
    runner: MigrationRunner

    def database(self, name: str) -> DatabaseSettings:
        return self.admin.model_copy(update={"database": name})

    async def create(self, name: str, template: str | None = None) -> DatabaseSettings:
        conn = await connect(self.admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        finally:
            await conn.close()
        return self.database(name)

    async def drop(self, name: str) -> None:
        conn = await connect(self.admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def source_server(osparc: OsparcMigrations, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SourceServer]:
    password = secrets.token_urlsafe(12)
    server = PostgresServer(tmp_path_factory.mktemp("osparc-sources"), password=password)
    await asyncio.to_thread(server.start)
    admin = DatabaseSettings(host=server.host, port=server.port, user=server.user, password=password,
                             database="postgres", ssl="disable")
    runner = await osparc.runner(admin).start()
    try:
        yield SourceServer(server, admin, runner)
    finally:
        await runner.close()
        await asyncio.to_thread(stop_at_once, server)


@pytest.fixture(scope="session")
async def staging_server() -> AsyncIterator[StagingServer]:
    """One staging server for the session's stagings (its templates made once)."""
    server = await StagingServer.start_local()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class Source:
    """A source deployment's database (a template: tests copy it before changing anything)."""

    db: DatabaseSettings
    revision: str
    ids: Identities
    selected: list[Study]  # the studies the tests stage
    others: list[Study]

    @property
    def selection(self) -> list[str]:
        return [p for study in self.selected for p in study.projects]


async def build_source(source_server: SourceServer, osparc: OsparcMigrations, name: str, revision: str) -> Source:
    """A source at ``revision``: alice's study with two hidden job children, a collaborator (dave, who
    owns nothing selected: only his file names him), a shared
    group, a workspace, trashed by carol; bob's plain study (at a revision with the workbench JSON,
    its nodes only there, not in projects_nodes); and 22 unrelated users with a study each
    (every third with a job child)."""
    await source_server.drop(name)
    db = await source_server.create(name)
    await create_osparc_database(db, osparc, revision, runner=source_server.runner)
    users = ["alice", "bob", "carol", "dave"] + [f"user{i:02d}" for i in range(UNRELATED_USERS)]
    ids = await seed_identities(db, users=users, groups=["lab", "other-lab"])
    conn = await connect(db)
    try:
        selected = [
            await seed_study(conn, ids, "alice", name="alice's study", children=2, collaborator="dave",
                             shared_group="lab", workspace=True, trashed_by="carol"),
            await seed_study(conn, ids, "bob", name="bob's study", nodes=2, offset=5, nodes_table=False),
        ]
        others = [
            await seed_study(conn, ids, f"user{i:02d}", name=f"study {i}", nodes=2, offset=10 + i,
                             children=1 if i % 3 == 0 else 0, collaborator="dave" if i % 4 == 0 else None,
                             shared_group="other-lab" if i % 5 == 0 else None)
            for i in range(UNRELATED_USERS)
        ]
    finally:
        await conn.close()
    return Source(db=db, revision=revision, ids=ids, selected=selected, others=others)


async def copy_of(source_server: SourceServer, source: Source, name: str) -> DatabaseSettings:
    await source_server.drop(name)
    return await source_server.create(name, template=source.db.database)


# -- the oracle: osparc's own migration of a dump of the whole source ---------------------------


def pg_tool(name: str) -> str:
    local = find_pg_bindir() / name
    return str(local) if local.exists() else name


def dump_and_restore(source_server: SourceServer, source: DatabaseSettings, into: DatabaseSettings) -> None:
    """``pg_dump`` the whole source and load it into the empty ``into``. The dump empties
    search_path, and osparc's CHECK and trigger functions name tables unqualified (osparc README):
    the load runs with ``search_path = public``."""
    env = dict(os.environ, PGPASSWORD=source_server.server.password)
    common = ["-h", source_server.server.host, "-p", str(source_server.server.port), "-U", source_server.server.user]
    dump = subprocess.run([pg_tool("pg_dump"), *common, "--no-owner", "--no-privileges", source.database or ""],
                          capture_output=True, text=True, env=env, check=True).stdout
    dump = dump.replace("SELECT pg_catalog.set_config('search_path', '', false);", "SET search_path = public;")
    subprocess.run([pg_tool("psql"), *common, "-q", "-v", "ON_ERROR_STOP=1", "-d", into.database or ""],
                   input=dump, capture_output=True, text=True, env=env, check=True)


# -- independent views of rows (PostgreSQL's own text of each value) ----------------------------


async def text_rows(
    db: DatabaseSettings, table: str, where: str = "true", args: tuple = (), exclude: frozenset[str] = frozenset(),
) -> list[tuple[str | None, ...]]:
    """Rows of ``table`` matching ``where``, each value as PostgreSQL's text of it (None: SQL NULL),
    columns by name (so that two databases' column orders do not matter), sorted."""
    conn = await connect(db)
    try:
        await conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1")
        columns = [r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
            "ORDER BY column_name", table)]
        shown = [c for c in columns if c not in exclude]
        rows = await conn.fetch(
            f"SELECT {', '.join(f'{_q(c)}::text' for c in shown)} FROM {_q(table)} t WHERE {where}", *args)
        return sorted((tuple(r) for r in rows), key=lambda r: tuple("\0" if v is None else v for v in r))
    finally:
        await conn.close()


async def project_rows(
    db: DatabaseSettings, projects: list[str], exclude: dict[str, frozenset[str]] | None = None,
) -> dict[str, list[tuple[str | None, ...]]]:
    """Every project table's rows of ``projects``, as :func:`text_rows`."""
    found = {}
    conn = await connect(db)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    for table in PROJECT_TABLES:
        if table in tables:
            column = PROJECT_COLUMN.get(table, "project_uuid")
            found[table] = await text_rows(db, table, f"{_q(column)} = ANY($1::text[])", (projects,),
                                           (exclude or {}).get(table, frozenset()))
    return found


async def table_counts(db: DatabaseSettings) -> dict[str, int]:
    conn = await connect(db)
    try:
        tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {_q(t)}") for t in tables}
        return {t: n for t, n in counts.items() if n}
    finally:
        await conn.close()


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


