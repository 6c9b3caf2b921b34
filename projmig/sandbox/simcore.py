"""Make an empty database look like an osparc-simcore deployment: schema, revision, seed rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from ..settings import DatabaseSettings

FIXTURE_REVISION = "3f8c0e8d11a4"  # the real schema file's alembic head; the fixture mirrors it
SCHEMA_SQL_ENV = "PROJMIG_TEST_SCHEMA_SQL"


def fixture_schema_sql() -> str:
    return resources.files(__package__).joinpath("simcore_fixture.sql").read_text()


def schema_sql() -> tuple[str, str]:
    """(sql, origin): ``$PROJMIG_TEST_SCHEMA_SQL`` when it names a file, else projmig's fixture."""
    path = os.environ.get(SCHEMA_SQL_ENV)
    if path:
        return Path(path).read_text(), path
    return fixture_schema_sql(), "projmig fixture"


def asyncpg_dsn(db: DatabaseSettings) -> str:
    return db.url().set(drivername="postgresql").render_as_string(hide_password=False)


async def load_schema(db: DatabaseSettings, sql: str, revision: str = FIXTURE_REVISION) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    # a pg_dump empties search_path for its session: start a fresh one
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute("DELETE FROM alembic_version")
        await conn.execute("INSERT INTO alembic_version (version_num) VALUES ($1)", revision)
    finally:
        await conn.close()


@dataclass(frozen=True)
class User:
    id: int
    name: str
    primary_gid: int


@dataclass(frozen=True)
class Identities:
    everyone_gid: int
    product: str
    users: dict[str, User]
    groups: dict[str, int]


async def seed(
    db: DatabaseSettings,
    *,
    users: list[str],
    groups: list[str] = (),  # type: ignore[assignment]
    product: str = "osparc",
    skip_user_ids: int = 0,
) -> Identities:
    """The rows every deployment has (EVERYONE group, a product) plus named users and groups.

    ``skip_user_ids`` advances the users' id sequence so that two deployments give the same
    person different ids, as real deployments do.
    """
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        async with conn.transaction():
            everyone = await conn.fetchval("SELECT gid FROM groups WHERE type = 'EVERYONE'")
            if everyone is None:
                everyone = await conn.fetchval(
                    "INSERT INTO groups (name, description, type) VALUES ('Everyone', 'all users', 'EVERYONE') RETURNING gid"
                )
            await conn.execute(
                "INSERT INTO products (name, host_regex, base_url) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                product,
                rf"^{product}\.",
                f"https://{product}.example.org",
            )
            if skip_user_ids:
                await conn.execute("SELECT setval('users_id_seq', $1)", skip_user_ids)
            made: dict[str, User] = {}
            for name in users:
                row = await conn.fetchrow(
                    "INSERT INTO users (name, email, status, role) VALUES ($1, $2, 'ACTIVE', 'USER') RETURNING id",
                    name,
                    f"{name}@example.org",
                )
                gid = await conn.fetchval("SELECT primary_gid FROM users WHERE id = $1", row["id"])
                made[name] = User(id=row["id"], name=name, primary_gid=gid)
            made_groups = {}
            for name in groups:
                made_groups[name] = await conn.fetchval(
                    "INSERT INTO groups (name, description, type) VALUES ($1, 'a team', 'STANDARD') RETURNING gid", name
                )
        return Identities(everyone_gid=everyone, product=product, users=made, groups=made_groups)
    finally:
        await conn.close()
