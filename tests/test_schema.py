"""projmig/schema.py: a run's :class:`Reflections` makes one reflection per shape of the tables and
reuses it across engines and databases of that shape; any change to what it reads (a column, a
default, a constraint, an index, an enum's labels) makes a new one. A run's reflections are its own."""

from __future__ import annotations

import asyncpg
from sqlalchemy import MetaData

from projmig.db import open_engine
from projmig.schema import PROJECT_TABLES, Reflections, reflect
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings

from .conftest import Simcore


async def reflected(db: DatabaseSettings, known: Reflections | None) -> MetaData:
    async with open_engine(db, "test") as engine, engine.connect() as conn:  # an engine of its own, as each step's
        return await reflect(conn, PROJECT_TABLES, known)


async def alter(db: DatabaseSettings, sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_reflection_is_reused_until_what_it_reads_changes(simcore: Simcore) -> None:
    db, other = simcore.destination_db, simcore.source_db
    known = Reflections()
    await alter(db, "ALTER TABLE projects ADD COLUMN shape_probe integer")  # a shape no other test's database has
    first = await reflected(db, known)
    assert "shape_probe" in first.tables["projects"].c
    assert await reflected(db, known) is first
    await alter(other, "ALTER TABLE projects ADD COLUMN shape_probe integer")
    assert await reflected(other, known) is first  # another database of the same shape

    changes = [
        ("a column's type", "ALTER TABLE projects ALTER COLUMN shape_probe TYPE bigint",
         lambda m: str(m.tables["projects"].c.shape_probe.type) == "BIGINT"),
        ("a column's NOT NULL", "ALTER TABLE projects ALTER COLUMN shape_probe SET NOT NULL",
         lambda m: not m.tables["projects"].c.shape_probe.nullable),
        ("a default", "ALTER TABLE projects ALTER COLUMN shape_probe SET DEFAULT 7",
         lambda m: "7" in str(getattr(m.tables["projects"].c.shape_probe.server_default, "arg", ""))),
        ("a unique constraint", "ALTER TABLE projects ADD CONSTRAINT shape_probe_unique UNIQUE (shape_probe)",
         lambda m: any(getattr(c, "name", None) == "shape_probe_unique" for c in m.tables["projects"].constraints)),
        ("an index", "CREATE INDEX shape_probe_index ON projects (shape_probe, uuid)",
         lambda m: any(i.name == "shape_probe_index" for i in m.tables["projects"].indexes)),
        ("an enum's labels", "ALTER TYPE projecttype ADD VALUE 'SHAPE_PROBE'",
         lambda m: "SHAPE_PROBE" in m.tables["projects"].c.type.type.enums),
        ("a column gone", "ALTER TABLE projects DROP COLUMN shape_probe",
         lambda m: "shape_probe" not in m.tables["projects"].c),
    ]
    before = first
    for what, sql, seen in changes:
        assert not seen(before), what
        await alter(db, sql)
        after = await reflected(db, known)
        assert after is not before and seen(after), what
        assert await reflected(db, known) is after, what
        before = after
    assert await reflected(other, known) is first  # the database not changed keeps its shape
    assert await reflected(db, Reflections()) is not after  # another run reflects on its own
    assert await reflected(db, None) is not after  # and so does a reflection outside a run
