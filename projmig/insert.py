"""Insert every row of a plan into the destination in one transaction: all of it, or nothing. Before
COMMIT the rows are read back and checked against the source by :mod:`projmig.rowcheck`, and the
source projects are read again: a project changed since the graph's snapshot (any row of any of its
tables, or the objects under one of its directory entries) commits nothing.

**The insert record.** The same transaction records each project it inserts in a table of
projmig's own in the destination database, ``projmig.inserted_projects`` (schema ``projmig``, which
osparc's services neither read nor migrate): the destination uuid, the source project and the
source database's identity (:func:`projmig.graph.database_identity`), the ``creation_date`` and
``last_change_date`` written (as text, in the row check's text form), and the transaction's time.
The record commits with the rows or not at all; rollback removes rows only of projects recorded
there (:mod:`projmig.rollback`). The schema and table are created on the first insert, inside the
insert transaction (the destination user needs ``CREATE`` on the database for that, or an
administrator creates them beforehand: :data:`RECORD_DDL`); concurrent first inserts serialise on an
advisory lock, so that neither fails on the other's ``CREATE``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, Field
from sqlalchemy import JSON, Table, Text, bindparam, cast, insert, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .errors import InsertError
from .graph import Row, listing_digest, snapshot, source_states
from .buckets import ObjectState
from .placement import FOLDERS_TABLE, PLACEMENT_DDL, TAGS_TABLE, place
from .plan import MigrationPlan, PlannedProject
from .rowcheck import compare, read_text_rows, use_text_form
from .schema import PROJECT_TABLES, Reflections, insert_order, reflect
from .selection import Lister

SHOWN_DIFFERENCES = 5  # in the error of a failed check (the rest are counted)
COPY_FROM_ROWS = 1000  # a table's rows (of one shape) from this many on go in with COPY, not INSERT


class SourceChanged(InsertError):
    """A source project changed between the graph's snapshot and the insert: nothing was committed."""


class InsertResult(BaseModel):
    inserted: dict[str, int] = Field(default_factory=dict)  # table -> rows
    already_present: list[str] = Field(default_factory=list)  # projects found from an earlier run
    dropped_columns: dict[str, list[str]] = Field(default_factory=dict)  # source columns the destination lacks

    @property
    def rows(self) -> int:
        return sum(self.inserted.values())


def project_key(table: str) -> str:
    return {"projects": "uuid", "file_meta_data": "project_id"}.get(table, "project_uuid")


RECORD_TABLE = "projmig.inserted_projects"
RECORD_DDL = (
    "CREATE SCHEMA IF NOT EXISTS projmig",
    f"""CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (
        project_uuid varchar PRIMARY KEY,
        source_project_uuid varchar NOT NULL,
        source_system_identifier text NOT NULL,
        source_database text NOT NULL,
        creation_date text NOT NULL,
        last_change_date text,
        inserted_at timestamptz NOT NULL DEFAULT now()
    )""",
    *PLACEMENT_DDL,
)
# two-key advisory locks: apart from the insert's one-key locks and from locks.py's (LOCK_SPACE, project)
RECORD_LOCK = (0x706D6968, 0)
LISTINGS_AT_ONCE = 8  # directory listings in flight while the insert re-reads the source
INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE


class InsertRecord(BaseModel):
    """A row of :data:`RECORD_TABLE`: projmig inserted this destination project."""

    project_uuid: str
    source_project_uuid: str
    source_database: tuple[str, str]  # (system identifier, database name)
    creation_date: str  # the row check's text form
    last_change_date: str | None
    inserted_at: datetime


Confirm = Callable[[MigrationPlan], Awaitable[None]]
"""Called with a root's plan just before its COMMIT: raises :class:`NotConfirmed` (the transaction
is rolled back) unless the destination holds that root's objects in the states the rows record."""


class NotConfirmed(InsertError):
    """The objects were not confirmed in the states the rows record: rolled back, to be inserted again
    from what the destination's listing shows (:func:`projmig.pipeline.migrate` does)."""


async def insert_plan(
    engine: AsyncEngine, plan: MigrationPlan, verified: Mapping[str, ObjectState], *, source: AsyncEngine,
    source_listing: Lister, confirm: Confirm | None = None, known: Reflections | None = None,
) -> InsertResult:
    """``verified``: destination key -> state, as verified after copying (sizes and ETags to record).
    ``source``, ``source_listing`` (prefix -> {key: (size, ETag)} in the source bucket): the source,
    read again just before COMMIT (:func:`_refuse_changed_source`), after ``confirm``, if given."""
    committing = False
    try:
        async with engine.begin() as conn:
            result = await _insert(conn, plan, verified, known)
            if confirm is not None:  # (first: the source is read again as late as it can be)
                await confirm(plan)
            await _refuse_changed_source(
                source, source_listing, [p for p in plan.projects if p.dst_uuid not in result.already_present])
            committing = True  # leaving the block sends COMMIT
        return result
    except (DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        detail = (str(cause).splitlines() or [type(cause).__name__])[0]
        # (a COPY's errors come from asyncpg itself, untranslated: they never happen while committing)
        lost = not isinstance(exc, (DBAPIError, asyncpg.PostgresError)) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated)
        if committing and lost:
            # the COMMIT may have reached the server before the connection went: all rows or none
            raise InsertError(
                f"destination connection lost while committing: every row was inserted or none was "
                f"(a rerun finds out and finishes the migration): {detail}"
            ) from exc
        raise InsertError(f"destination transaction rolled back, nothing was inserted: {detail}") from exc


async def ensure_record_table(conn: AsyncConnection) -> None:
    """:data:`RECORD_TABLE` (and placement's records), created inside this transaction when not there yet."""
    if await conn.scalar(text(
        f"SELECT to_regclass('{RECORD_TABLE}') IS NOT NULL AND to_regclass('{FOLDERS_TABLE}') IS NOT NULL "
        f"AND to_regclass('{TAGS_TABLE}') IS NOT NULL"
    )):
        return
    # a concurrent first insert may be creating it, uncommitted: wait for it, then IF NOT EXISTS sees it
    await conn.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": RECORD_LOCK[0], "b": RECORD_LOCK[1]})
    try:
        for statement in RECORD_DDL:
            await conn.execute(text(statement))
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise InsertError(
            f"the destination database user may not create the schema projmig, where projmig records each project it "
            f"inserts (rollback removes only recorded projects): grant it CREATE on the database, or have an "
            f"administrator run {'; '.join(' '.join(s.split()) for s in RECORD_DDL)} and grant it INSERT, SELECT, "
            "DELETE on it; nothing was inserted"
        ) from exc


async def _record_inserts(conn: AsyncConnection, projects: list[PlannedProject]) -> None:
    """Record these projects, just inserted, as projmig's (:data:`RECORD_TABLE`), in this transaction."""
    if not projects:
        return
    missing = [p.src_uuid for p in projects if p.source_state is None]
    if missing:
        raise InsertError(f"the plan carries no source state of {', '.join(missing)} to record the insert with; "
                          "nothing inserted")
    await use_text_form(conn)
    await conn.execute(
        text(
            f"INSERT INTO {RECORD_TABLE} (project_uuid, source_project_uuid, source_system_identifier, "
            "source_database, creation_date, last_change_date) "
            "SELECT p.uuid, w.src, w.sysid, w.db, p.creation_date::text, p.last_change_date::text "
            "FROM unnest(CAST(:dst AS text[]), CAST(:src AS text[]), CAST(:sysid AS text[]), CAST(:db AS text[])) "
            "  AS w(dst, src, sysid, db) JOIN projects p ON p.uuid = w.dst "
            # a record left by a project deleted in the destination since (osparc knows nothing of it)
            "ON CONFLICT (project_uuid) DO UPDATE SET source_project_uuid = excluded.source_project_uuid, "
            "  source_system_identifier = excluded.source_system_identifier, source_database = excluded.source_database, "
            "  creation_date = excluded.creation_date, last_change_date = excluded.last_change_date, inserted_at = now()"
        ),
        {
            "dst": [p.dst_uuid for p in projects],
            "src": [p.src_uuid for p in projects],
            "sysid": [p.source_state.database[0] for p in projects],  # type: ignore[union-attr]
            "db": [p.source_state.database[1] for p in projects],  # type: ignore[union-attr]
        },
    )


async def read_records(conn: AsyncConnection, uuids: list[str]) -> dict[str, InsertRecord]:
    """destination uuid -> projmig's record of inserting it, for those of ``uuids`` that have one.
    Sets the row check's text form (:func:`projmig.rowcheck.use_text_form`) on the transaction, so
    that the dates compare as text with the projects' own."""
    await use_text_form(conn)
    if not await conn.scalar(text(f"SELECT to_regclass('{RECORD_TABLE}') IS NOT NULL")):
        return {}
    rows = await conn.execute(
        text(f"SELECT project_uuid, source_project_uuid, source_system_identifier, source_database, creation_date, "
             f"last_change_date, inserted_at FROM {RECORD_TABLE} WHERE project_uuid = ANY(:u)"),
        {"u": uuids},
    )
    return {
        r.project_uuid: InsertRecord(
            project_uuid=r.project_uuid, source_project_uuid=r.source_project_uuid,
            source_database=(r.source_system_identifier, r.source_database), creation_date=r.creation_date,
            last_change_date=r.last_change_date, inserted_at=r.inserted_at,
        )
        for r in rows
    }


async def forget_records(conn: AsyncConnection, uuids: list[str]) -> None:
    """Drop the records of these projects (rollback, with their rows, in its transaction)."""
    if await conn.scalar(text(f"SELECT to_regclass('{RECORD_TABLE}') IS NOT NULL")):
        await conn.execute(text(f"DELETE FROM {RECORD_TABLE} WHERE project_uuid = ANY(:u)"), {"u": uuids})


async def _insert(
    conn: AsyncConnection, plan: MigrationPlan, verified: Mapping[str, ObjectState], known: Reflections | None
) -> InsertResult:
    metadata = await reflect(conn, PROJECT_TABLES, known)
    result = InsertResult()
    uuids = [p.dst_uuid for p in plan.projects]
    # serialise concurrent runs of the same migration on the projects they create
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(u)) FROM unnest(CAST(:u AS text[])) AS u ORDER BY u"), {"u": uuids}
    )
    found = dict((await conn.execute(
        text("SELECT uuid, creation_date FROM projects WHERE uuid = ANY(:u)"), {"u": uuids}
    )).all())
    planned = {r["uuid"]: r.get("creation_date") for r in plan.rows.get("projects", [])}
    clashes = [u for u, created in found.items() if created != planned.get(u)]
    if clashes:
        raise InsertError(f"collision: the destination got a different project {', '.join(clashes)} meanwhile; nothing inserted")
    present = set(found)
    result.already_present = [u for u in uuids if u in present]
    if len(present) < len(uuids):  # (a rerun that inserts nothing needs no rights to record)
        await ensure_record_table(conn)

    for table in insert_order(metadata):
        rows = [r for r in plan.rows.get(table.name, []) if r.get(project_key(table.name)) not in present]
        dropped = sorted({k for r in rows for k in r} - set(table.c.keys()))
        if dropped:
            result.dropped_columns[table.name] = dropped
        if rows:
            await _insert_rows(conn, table, rows, verified if table.name == "file_meta_data" else None)
            result.inserted[table.name] = len(rows)

    # projects_nodes' trigger stamped last_change_date with now(): give each project its own back
    projects = metadata.tables["projects"]
    for row in plan.rows.get("projects", []):
        if row["uuid"] not in present and row.get("last_change_date") is not None:
            await conn.execute(
                update(projects).where(projects.c.uuid == row["uuid"]).values(last_change_date=row["last_change_date"])
            )
    await _check_written(conn, plan, present, verified)
    await _record_inserts(conn, [p for p in plan.projects if p.dst_uuid not in present])
    for project in plan.projects:  # where it lands in its owner's account (with the project, or not at all)
        if project.dst_uuid not in present and project.placement is not None:
            await place(conn, project.dst_uuid, project.placement, into_folder=plan.into_folder,
                        owner=project.owner_id, owner_gid=project.owner_gid, product=project.product)
    return result


async def _check_written(
    conn: AsyncConnection, plan: MigrationPlan, present: set[str], verified: Mapping[str, ObjectState]
) -> None:
    """Read back what this transaction wrote, in PostgreSQL's text form, and compare it with the source
    (:mod:`projmig.rowcheck`); any difference rolls the transaction back."""
    if plan.expected is None:
        raise InsertError("the plan carries no source rows to check the inserted rows against; nothing inserted")
    written = [p for p in plan.projects if p.dst_uuid not in present]
    if not written:
        return
    expected = plan.expected.subset({p.src_uuid for p in written})
    check = compare(expected, await read_text_rows(conn, [p.dst_uuid for p in written]), verified)
    if check.differences:
        shown = "; ".join(str(d) for d in check.differences[:SHOWN_DIFFERENCES])
        more = len(check.differences) - SHOWN_DIFFERENCES
        raise InsertError(
            f"the rows read back before COMMIT differ from the source ({shown}{f'; and {more} more' if more > 0 else ''}): "
            "destination transaction rolled back, nothing was inserted"
        )


async def _refuse_changed_source(source: AsyncEngine, listing: Lister, projects: list[PlannedProject]) -> None:
    """The source projects being inserted, as they are now, must be as the graph read them (every row
    of every project table, and the objects under each directory entry): else the rows in hand are
    no longer the source's and nothing is committed; the objects copied stay for the rerun, which
    migrates the project's current state. The rows are digested in one snapshot of the source, as
    the graph's were; each directory prefix is listed again."""
    if not projects:
        return
    async with snapshot(source) as conn:
        now = await source_states(conn, [p.src_uuid for p in projects])
    slots = asyncio.Semaphore(LISTINGS_AT_ONCE)

    async def listed(prefix: str) -> str:
        async with slots:
            found = await listing(prefix)
        return listing_digest((key, size, etag) for key, (size, etag) in found.items())

    prefixes = sorted({d for p in projects if p.source_state is not None for d in p.source_state.directories})
    digests = dict(zip(prefixes, await asyncio.gather(*(listed(d) for d in prefixes))))
    for p in projects:
        state = now.get(p.src_uuid)
        if state is not None and p.source_state is not None:
            state.directories = {d: digests[d] for d in p.source_state.directories}
    changed = [
        f"source project {p.src_uuid} changed during the migration ({how}); rerun to migrate its current state"
        for p in projects
        if (how := "no state read with the graph" if p.source_state is None else p.source_state.changes(now.get(p.src_uuid)))
    ]
    if changed:
        raise SourceChanged(f"{'; '.join(changed)} (destination transaction rolled back, nothing was inserted; "
                            "the objects copied are kept for the rerun)")


def _verified_state(row: Row, verified: Mapping[str, ObjectState]) -> ObjectState | None:
    """The verified state a file row records (None: a directory, a soft link, or no object of its own)."""
    state = verified.get(row.get("object_name") or row.get("file_id") or "")
    return None if state is None or row.get("is_directory") or row.get("is_soft_link") else state


def _with_verified(row: Row, verified: Mapping[str, ObjectState]) -> Row:
    state = _verified_state(row, verified)
    return row if state is None else {**row, "file_size": state.size, "entity_tag": state.etag}


async def _insert_rows(
    conn: AsyncConnection, table: Table, rows: list[Row], verified: Mapping[str, ObjectState] | None = None,
) -> None:
    """``verified``: file rows, whose sizes and ETags are the objects' as verified. Each row's values
    are prepared as they are sent (a COPY takes them one by one), not all of them beforehand: 100,000
    file rows would otherwise be held twice more."""
    columns = set(table.c.keys())
    # rows built by projmig may lack columns with server defaults: one statement per shape
    shapes: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        keys = row.keys()
        if verified is not None and _verified_state(row, verified) is not None:
            keys = keys | {"file_size", "entity_tag"}  # (what _with_verified sets)
        shapes.setdefault(tuple(sorted(k for k in keys if k in columns)), []).append(row)

    def prepared(batch: list[Row], shape: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        for row in batch:
            sent = _with_verified(row, verified) if verified is not None else row
            yield {c: sent[c] for c in shape}

    for shape, plain in shapes.items():
        batch = prepared(plain, shape)
        # a JSON value travels as the source's text and becomes JSON in the database, exactly
        values = {c: cast(bindparam(c, type_=Text()), table.c[c].type) for c in shape if isinstance(table.c[c].type, JSON)}
        if table.name == "project_to_groups":
            # the destination's trigger already gave the owner's group its row
            stmt = pg_insert(table).values(values) if values else pg_insert(table)
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.project_uuid, table.c.gid],
                set_={"read": stmt.excluded.read, "write": stmt.excluded.write, "delete": stmt.excluded.delete},
            )
            await conn.execute(stmt, list(batch))
        elif len(plain) >= COPY_FROM_ROWS:
            await _copy_rows(conn, table, list(shape), batch)
        else:
            await conn.execute(insert(table).values(values) if values else insert(table), list(batch))


async def _copy_rows(conn: AsyncConnection, table: Table, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    """Many rows in one ``COPY ... FROM STDIN`` (binary), inside the open transaction: triggers and
    constraints apply as for INSERT, with less work per row for the server and for us (52,000 file
    rows: 2.2 -> 1.6 s of the server's CPU, 1.4 -> 0.9 s of ours). Values are prepared as for the
    INSERT: each column type's bind processor, except that a JSON value is the source's text, which
    the database parses (as the INSERT's cast does); then asyncpg's codecs encode them."""
    # the dialect's own implementation of each type, as a statement's parameters get (the generic
    # Numeric's processor, for one, would turn a Decimal into a float)
    processors = [
        None if isinstance(table.c[c].type, JSON) else table.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        for c in columns
    ]
    records = (
        tuple(value if process is None else process(value) for process, value in zip(processors, (row[c] for c in columns)))
        for row in rows
    )
    raw = await conn.get_raw_connection()
    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
        table.name, columns=columns, records=records, schema_name=table.schema
    )


@dataclass
class RootInsert:
    """One root project's graph (the root and its hidden children), inserted in a transaction of its
    own, or not (``error``)."""

    root: str  # source uuid of the root project
    projects: list[str]  # destination uuids: the root and its hidden children
    result: InsertResult | None = None
    error: InsertError | None = None


async def insert_each(
    engine: AsyncEngine, plan: MigrationPlan, verified: Mapping[str, ObjectState], roots: list[str], *,
    source: AsyncEngine, source_listing: Lister, concurrency: int = 4, confirm: Confirm | None = None,
    known: Reflections | None = None,
) -> list[RootInsert]:
    """Each root's graph (the root and its hidden children) in a transaction of its own, ``concurrency``
    at once: a project that fails is rolled back alone and the others are kept. ``confirm``: as
    :func:`insert_plan` takes it, for each root."""
    groups = plan.roots()
    slots = asyncio.Semaphore(concurrency)

    async def one(root: str) -> RootInsert:
        uuids = [p.dst_uuid for p in groups[root]]
        async with slots:
            try:
                return RootInsert(root, uuids, result=await insert_plan(
                    engine, plan.subset(uuids), verified, source=source, source_listing=source_listing,
                    confirm=confirm, known=known))
            except InsertError as exc:
                return RootInsert(root, uuids, error=exc)

    return list(await asyncio.gather(*(one(root) for root in roots)))
