"""Roll a migration back: remove from the destination what it provably wrote, its rows in one
transaction, then its objects. Refuse, removing nothing, when a destination project is not recorded
as this migration's insert, or changed after it.

**Which rows are the migration's.** Rollback takes the migration's own configuration and recomputes
its plan from the source with the migration's own selection (:mod:`projmig.selection`: the same
roots, hidden children with ``include_hidden``, and under ``uuid_policy=new`` the same destination
ids: they derive from the destination, the source uuid and ``copy_label``). Every destination
project of that plan that is there must be what the migration inserted, unchanged since:

1. **recorded**: the insert transaction wrote a record of it into ``projmig.inserted_projects`` in
   the destination database (:mod:`projmig.insert`: schema ``projmig``, projmig's own, which
   osparc's services do not read), naming this source project and this source database (its
   system identifier and name, :func:`projmig.graph.database_identity`). No record: refused, one
   line that says how to go on. That is the answer for a project migrated by a projmig older than
   the record (it cannot be told from a project that got there otherwise: remove it with osparc's
   own project deletion if it must go), and for rows a restore brought: the record lives in the
   destination database, so ``pg_dump``/``pg_restore`` of that whole database carries records and
   rows together, but a destination restored from a dump of the *source* (same uuids, same dates),
   or a dump of osparc's ``public`` schema only, has no record and nothing of it is removed. A
   record naming another source project or database (another migration's insert) refuses too;
2. its ``creation_date`` is the one recorded (else the uuid now names another project), and its
   ``last_change_date`` is the one the insert wrote, as recorded (every change in osparc moves it to
   *now*; the ``projects_nodes`` trigger does so for every node change). Both are compared as text
   in the row check's text form (:func:`projmig.rowcheck.use_text_form`), as the record holds them;
3. nothing else changed after the insert's recorded time either: no node, metadata, access right
   (``project_to_groups.created/modified``) or file row (``file_meta_data.created_at/last_modified``)
   is stamped later;
4. no row the migration does not write points at the project or its nodes (folders, wallets, tags,
   pricing units, computations, conversations, hidden job projects created in the destination, or
   hidden children migrated with ``include_hidden`` when the rollback's configuration lacks it):
   every foreign key to ``projects``/``projects_nodes`` is found by reflection.

A planned project that is not in the destination has nothing to remove (rolled back already, or
never inserted); when none is there and none of the objects either, rollback is a no-op that says
so. With ``uuid_policy=keep`` the destination must not be the source itself: the same database is
detected (an advisory lock held in one is seen from the other) and so is the same bucket (a probe
object written through the destination's client is seen through the source's), whatever names the
configuration gives them, and rollback refuses, since there the "copy" is the original. Only a
404 for the probe says "another bucket": a 403 or any other unclear answer refuses too.

**What is removed.** In one destination transaction, tables in reverse foreign-key order
(``file_meta_data``, ``project_to_groups``, ``projects_networks``, ``projects_extensions``,
``projects_to_jobs``, ``projects_metadata``, ``projects_nodes`` and last ``projects``), every row of
these projects, and their records. The checks above run in that same transaction, with the project
rows locked, so nothing can change between the check and the delete. Then, only once the rows are
gone (osparc never sees a file row without its object): the unfinished multipart uploads this
migration started (listed in its ledger objects, :mod:`projmig.marks`) are aborted, and of the
objects under the prefix of each project of the plan, exactly those that carry this migration's
mark are deleted, each mark read just before its delete (a HEAD) and the delete conditional on the
ETag that HEAD gave (:func:`projmig.buckets.delete_marked`): a file a row named, or one under a
directory entry, that a destination user has written over or added is kept. Where the server
honours DeleteObjects' per-key ETag (asked once per rollback, :func:`projmig.buckets.conditional_deletes`:
SeaweedFS 4.x and AWS do) the marked objects go in batches of 1,000 and one written over since its
HEAD is kept; where it ignores it (Ceph RGW 16.2) each goes by its own ``DeleteObject`` right after
its HEAD, with ``If-Match`` in vain, one round trip apart. Calls are retried like every S3 call. If
deleting fails, a rerun finds no rows and deletes the marked objects that are left.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Row as SqlRow
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .errors import PreflightError, ProjmigError
from .graph import database_identity
from .insert import RECORD_TABLE, InsertRecord, forget_records, project_key, read_records
from .marks import COPY_MARK, UploadRecord, copy_mark, project_of, read_mark, read_record
from .buckets import (
    MARK_READS_AT_ONCE,
    MarkedDeletion,
    ObjectState,
    abort_upload,
    conditional_deletes,
    delete_marked,
    list_prefix,
    list_uploads,
)
from .placement import placements_of, prune_created, unplace
from .plan import DestinationFacts, MigrationPlan
from .units import human_bytes
from .s3 import Retrier, describe_error, error_code, s3_client
from .schema import PROJECT_TABLES, insert_order, reflect
from .selection import Lister, Selection, plan_selection, read_selection, select_projects
from .settings import MigrationSettings, UuidPolicy

IDENTITY_PROBE = ".projmig-identity-"  # + random hex: written to the destination, looked for in the source

class RollbackRefused(PreflightError):
    """The destination holds something this migration did not write, or changed since: nothing removed."""

    def __init__(self, problems: list[str] | str):
        problems = [problems] if isinstance(problems, str) else problems
        super().__init__([f"{p}; nothing was removed" for p in problems])


class RollbackProject(BaseModel):
    src_uuid: str
    dst_uuid: str
    name: str
    hidden: bool
    present: bool  # in the destination when the rollback started


class RollbackResult(BaseModel):
    dry_run: bool = False
    projects: list[RollbackProject] = Field(default_factory=list)
    rows: dict[str, int] = Field(default_factory=dict)  # table -> rows removed (dry run: that would be)
    # destination key -> size: found under the projects' prefixes (a dry run: those that carry the
    # mark), then those removed
    objects: dict[str, int] = Field(default_factory=dict)
    uploads: list[tuple[str, str]] = Field(default_factory=list)  # (key, upload id) unfinished, ours
    objects_left: int = 0  # under the projects' prefixes but not written by this migration: kept
    objects_removed: int = 0
    uploads_aborted: int = 0

    @property
    def removed_projects(self) -> list[RollbackProject]:
        return [p for p in self.projects if p.present]

    @property
    def absent_projects(self) -> list[RollbackProject]:
        return [p for p in self.projects if not p.present]

    @property
    def bytes(self) -> int:
        return sum(self.objects.values())

    def object_marks(self) -> dict[str, str]:
        """Each object found -> the mark it must carry to be removed: that of its project's copy."""
        mark = {p.dst_uuid.lower(): copy_mark(p.src_uuid, p.dst_uuid) for p in self.projects}
        return {key: mark[project_of(key).lower()] for key in self.objects if project_of(key).lower() in mark}

    @property
    def nothing(self) -> bool:
        return not self.removed_projects and not self.objects and not self.uploads

    def headline(self) -> str:
        n = len(self.removed_projects)
        what = f"{n} project{'s' if n != 1 else ''}"
        rows = sum(self.rows.values())
        if self.nothing:
            names = ", ".join(p.dst_uuid for p in self.projects) or "no project"
            prefix = "dry run: " if self.dry_run else ""
            return (
                f"{prefix}nothing to roll back: {names} not in the destination, and none of the migration's objects "
                "(rolled back already, or never migrated)"
            )
        uploads = f", {len(self.uploads)} unfinished uploads" if self.uploads else ""
        if self.dry_run:
            return (
                f"dry run: would remove {what}: {rows} rows, {len(self.objects)} objects "
                f"({human_bytes(self.bytes)}){uploads}; nothing was removed"
            )
        aborted = f", {self.uploads_aborted} unfinished uploads aborted" if self.uploads_aborted else ""
        if not n:
            return (
                f"rolled back what was left: no project rows (removed before), {self.objects_removed} objects "
                f"({human_bytes(self.bytes)}) removed{aborted}"
            )
        return (
            f"rolled back {what}: {rows} rows and {self.objects_removed} objects ({human_bytes(self.bytes)}) "
            f"removed{aborted}"
        )

    def summary_lines(self) -> list[str]:
        lines = []
        verb = "would remove" if self.dry_run else "removed"
        for p in self.projects:
            kind = "hidden job" if p.hidden else "study"
            origin = "" if p.src_uuid == p.dst_uuid else f" (copy of {p.src_uuid})"
            state = verb if p.present else "not in the destination"
            lines.append(f"  {p.dst_uuid}{origin} {p.name!r} ({kind}): {state}")
        if self.rows:
            lines.append(f"{verb} rows: " + ", ".join(f"{t} {n}" for t, n in self.rows.items()))
        if self.objects or self.uploads:
            lines.append(f"{verb} objects: {len(self.objects)} ({human_bytes(self.bytes)})")
        if self.uploads:
            lines.append(f"unfinished uploads {'to abort' if self.dry_run else 'aborted'}: {len(self.uploads)}")
        if self.objects_left:
            lines.append(
                f"kept: {self.objects_left} objects under these projects' prefixes that the migration did not write"
            )
        return lines


# --- which rows: the migration's plan, recomputed -------------------------------------------------


async def recompute_plan(
    src: AsyncConnection, dst: AsyncConnection, lister: Lister, settings: MigrationSettings,
    rows_of: Callable[[Selection], Awaitable[AsyncConnection]] | None = None,
) -> MigrationPlan:
    """The plan the migration with these settings made (and would make now: see the module's rule),
    from the same selection (:func:`projmig.selection.select_projects`). ``rows_of``: where the
    selection's rows are read (across osparc releases, their staging); default: the source."""
    problems: list[str] = []
    selection = await select_projects(settings, src, dst, problems)
    if problems:
        raise RollbackRefused([f"{p}: rollback finds what the migration wrote from the source projects" for p in problems])
    graph = await read_selection(await rows_of(selection) if rows_of else src, lister, selection, source=src)
    graph.placements = await placements_of(src, graph.root_owners(), settings.choices)
    # rollback reads the plan's ids, dates, file ids and keys: the remapped owner/group values do not matter
    facts = DestinationFacts(
        owner_id=settings.choices.destination_user_id or 0, owner_gid=0, everyone_gid=None,
        product_name=settings.choices.product_name, bucket=settings.destination.s3.bucket,
        into_folder=settings.choices.into_folder,
    )
    return plan_selection(graph, selection, facts)


async def refuse_shared_bucket(settings: MigrationSettings, retry: Retrier) -> None:
    """uuid_policy=keep into the source bucket itself (under any name: another host name or address
    of the same endpoint, a proxy): the "copy" objects are the source's. Decided by identity: a probe
    object written through the destination's client is looked for through the source's. Only a
    plain "not there" (404) tells the buckets apart: any other answer (403, an error retrying did not
    cure) leaves the question open, and rollback refuses."""
    if settings.choices.uuid_policy != UuidPolicy.KEEP:
        return
    src, dst = settings.source.s3, settings.destination.s3
    key = f"{IDENTITY_PROBE}{secrets.token_hex(16)}"
    unclear: str | None = None
    async with s3_client(dst) as writer, s3_client(src) as reader:
        await retry(f"{dst.describe()}: write identity probe", lambda: writer.put_object(
            Bucket=dst.bucket, Key=key, Body=b"", Metadata={COPY_MARK: "identity probe"}))
        try:
            try:
                await retry(f"{src.describe()}: look for identity probe",
                            lambda: reader.head_object(Bucket=src.bucket, Key=key))
                shared = True
            except ClientError as exc:
                # a HEAD has no body: a missing key and a missing bucket are both a bare 404
                shared = False
                if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                    unclear = describe_error(exc)
            except ProjmigError as exc:  # what retrying could not cure (TransferError)
                shared, unclear = False, str(exc)
        finally:
            await retry(f"{dst.describe()}: remove identity probe",
                        lambda: writer.delete_object(Bucket=dst.bucket, Key=key))
    if unclear is not None:
        raise RollbackRefused(
            f"cannot tell whether the destination bucket {dst.describe()} is the source bucket {src.describe()}: "
            f"a probe object written to the destination, looked for with the source's credentials, got {unclear} "
            "(with uuid_policy=keep into the source bucket the objects to remove would be the source's own); give the "
            "source's credentials read rights (HeadObject) on its bucket and roll back again"
        )
    if shared:
        raise RollbackRefused(
            f"the destination bucket {dst.describe()} is the source bucket {src.describe()} (an object written to "
            "one is seen in the other): with uuid_policy=keep its objects are the source project's own"
        )


# --- the rows, in one transaction -----------------------------------------------------------------


class RowRemoval(BaseModel):
    present: list[str] = Field(default_factory=list)  # destination uuids found (and removed)
    rows: dict[str, int] = Field(default_factory=dict)


async def remove_rows(
    dst: AsyncEngine, src: AsyncEngine, plan: MigrationPlan, *, keep_ids: bool, dry_run: bool
) -> RowRemoval:
    """Check that the destination holds the plan's projects as the migration recorded inserting them,
    unchanged since, and delete every row of them in one transaction (``dry_run``: count them,
    delete nothing)."""
    uuids = [p.dst_uuid for p in plan.projects]
    async with src.connect() as conn:
        source = await database_identity(conn)
    async with dst.connect() as conn:
        async with conn.begin():
            # the lock the insert takes: a migration inserting these projects right now finishes first
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(u)) FROM unnest(CAST(:u AS text[])) AS u ORDER BY u"),
                {"u": uuids},
            )
            metadata = await reflect(conn, PROJECT_TABLES)
            records = await read_records(conn, uuids)  # (and the row check's text form, for the dates)
            found = {
                r.uuid: r
                for r in await conn.execute(
                    text("SELECT uuid, name, creation_date::text AS creation_date, last_change_date::text AS "
                         "last_change_date FROM projects WHERE uuid = ANY(:u) ORDER BY uuid FOR UPDATE"),
                    {"u": uuids},
                )
            }
            present = [u for u in uuids if u in found]
            removal = RowRemoval(present=present)
            if not present:
                return removal
            if keep_ids:
                await _refuse_same_database(conn, src)
            # the links of the folders and tags the migration placed them in are its own (a dry run
            # undoes them at its end, with the rest of what it tried)
            placed = await conn.begin_nested()
            await unplace(
                conn, present,
                {p.dst_uuid: p.placement.path(plan.into_folder) for p in plan.projects if p.placement is not None},
                {p.dst_uuid: [t.name for t in p.placement.tags] for p in plan.projects if p.placement is not None},
            )
            problems: dict[str, str] = {}  # uuid -> the first reason to refuse it: one line per project
            for found_problems in (
                _check_records(plan, found, records, source),
                await _changed_since_insert(
                    conn, metadata, {u: records[u].inserted_at for u in present if u in records}),
                await _foreign_references(conn, present),
            ):
                for uuid, problem in found_problems:
                    problems.setdefault(uuid, problem)
            if problems:
                raise RollbackRefused([problems[u] for u in present if u in problems])
            await _delete_rows(conn, metadata, present, removal, dry_run=dry_run)
            if not dry_run:
                await forget_records(conn, present)
                folders, tags = await prune_created(conn)  # what projmig made for them and nothing uses now
                removal.rows.update({k: n for k, n in (("folders_v2", folders), ("tags", tags)) if n})
                await placed.commit()
            else:
                await placed.rollback()
    return removal


async def _refuse_same_database(conn: AsyncConnection, src: AsyncEngine) -> None:
    """uuid_policy=keep into the source deployment itself: the 'copy' is the original."""
    key = secrets.randbits(62)
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    async with src.connect() as other, other.begin():
        free = await other.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key})
    if not free:
        raise RollbackRefused(
            "the destination database is the source database: with uuid_policy=keep the destination projects are "
            "the source projects themselves"
        )


def _check_records(
    plan: MigrationPlan, found: dict[str, SqlRow[Any]], records: dict[str, InsertRecord], source: tuple[str, str]
) -> list[tuple[str, str]]:
    """Each present project must be recorded as inserted by projmig from this source project of this
    source database (:mod:`projmig.insert`), with the creation date it has, and still carry the last
    change date that insert wrote."""
    problems = []
    for project in plan.projects:
        row = found.get(project.dst_uuid)
        if row is None:
            continue
        label = f"destination project {project.dst_uuid} ({row.name!r})"
        record = records.get(project.dst_uuid)
        if record is None:
            problem = (
                f"{label} has no record of an insert by projmig (table {RECORD_TABLE}): inserted by a projmig older "
                "than that record, restored from a dump, or not migrated at all; rollback removes only projects "
                "projmig recorded inserting: remove it with osparc's own project deletion if it must go"
            )
        elif record.source_project_uuid != project.src_uuid or record.source_database != source:
            problem = (
                f"{label} was inserted by projmig from source project {record.source_project_uuid} of database "
                f"{record.source_database[1]!r} (system {record.source_database[0]}), not by this migration from "
                f"{project.src_uuid} of {source[1]!r} (system {source[0]})"
            )
        elif row.creation_date != record.creation_date:
            problem = (
                f"{label} was not inserted by this migration: created {row.creation_date}, the project projmig "
                f"inserted under that uuid was created {record.creation_date}"
            )
        elif row.last_change_date != record.last_change_date:
            problem = (
                f"{label} was modified after the migration: last changed {row.last_change_date}, the migration wrote "
                f"{record.last_change_date}"
            )
        else:
            continue
        problems.append((project.dst_uuid, problem))
    return problems


_CHANGES: dict[str, tuple[str, str, str]] = {
    # table: (project column, changed since the insert, example)
    "projects_nodes": ("project_uuid", "r.modified > s.at", "'node ' || min(r.node_id)"),
    "projects_metadata": ("project_uuid", "r.modified > s.at", "'its metadata'"),
    "project_to_groups": ("project_uuid", "r.created > s.at OR r.modified > s.at", "'access of group ' || min(r.gid)"),
    "file_meta_data": ("project_id", "r.created_at > s.at OR r.last_modified > s.at", "'file ' || min(r.file_id)"),
}


async def _changed_since_insert(
    conn: AsyncConnection, metadata: MetaData, inserted: dict[str, datetime]
) -> list[tuple[str, str]]:
    if not inserted:
        return []
    parts = [
        f"SELECT '{table}', r.{column}, count(*), {example} FROM {table} r "
        f"JOIN stamps s ON s.u = r.{column} WHERE {changed} GROUP BY r.{column}"
        for table, (column, changed, example) in _CHANGES.items()
        if table in metadata.tables
    ]
    rows = await conn.execute(
        text(
            "WITH stamps(u, at) AS (SELECT * FROM unnest(CAST(:u AS varchar[]), CAST(:at AS timestamptz[]))) "
            + " UNION ALL ".join(parts) + " ORDER BY 2, 1"
        ),
        {"u": list(inserted), "at": list(inserted.values())},
    )
    return [
        (uuid, f"destination project {uuid} was modified after the migration: {table} has {n} rows changed since it "
               f"was inserted (e.g. {example})")
        for table, uuid, n, example in rows
    ]


async def _foreign_references(conn: AsyncConnection, uuids: list[str]) -> list[tuple[str, str]]:
    """Rows the migration does not write that point at these projects or their nodes (any foreign key)."""
    fks = await conn.execute(text(
        "SELECT n.nspname, c.relname, t.relname, "
        "array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(num, i) "
        "      JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.i), "
        "array(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY AS u(num, i) "
        "      JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num ORDER BY u.i) "
        "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_class t ON t.oid = k.confrelid "
        "WHERE k.contype = 'f' AND k.confrelid IN (to_regclass('projects'), to_regclass('projects_nodes')) "
        "ORDER BY c.relname, k.conname"
    ))
    q = conn.dialect.identifier_preparer.quote
    found: dict[str, list[str]] = {}
    jobs: set[str] = set()
    for schema, table, target, columns, target_columns in fks.all():
        target_key = "uuid" if target == "projects" else "project_uuid"
        on = " AND ".join(f"x.{q(tc)} = r.{q(c)}" for c, tc in zip(columns, target_columns))
        own = f" AND NOT r.{q(project_key(table))} = ANY(:u)" if table in PROJECT_TABLES else ""
        rows = await conn.execute(
            text(
                f"SELECT x.{target_key}, count(*) FROM {q(schema)}.{q(table)} r JOIN {q(target)} x ON {on} "
                f"WHERE x.{target_key} = ANY(:u){own} GROUP BY 1"
            ),
            {"u": uuids},
        )
        for uuid, n in rows:
            found.setdefault(uuid, []).append(f"{table}.{columns[0]} {n}")
            if table == "projects_metadata":
                jobs.add(uuid)
    hint = " (hidden job projects of it: give source.include_hidden if the migration moved them)"
    return [
        (uuid, f"destination project {uuid} is used by rows the migration did not write: {', '.join(refs)}"
               f"{hint if uuid in jobs else ''}")
        for uuid, refs in found.items()
    ]


async def _delete_rows(
    conn: AsyncConnection, metadata: MetaData, uuids: list[str], removal: RowRemoval, *, dry_run: bool
) -> None:
    """Every row of these projects, children first (file_meta_data ... projects). Dry run: the same
    rows, selected and counted."""
    for table in reversed(insert_order(metadata)):
        where = f"WHERE {project_key(table.name)} = ANY(:u)"
        if dry_run:
            n = await conn.scalar(text(f"SELECT count(*) FROM {table.name} {where}"), {"u": uuids})
        else:
            n = (await conn.execute(text(f"DELETE FROM {table.name} {where}"), {"u": uuids})).rowcount
        if n:
            removal.rows[table.name] = n
    removal.rows = {t: removal.rows[t] for t in PROJECT_TABLES if t in removal.rows}


# --- the objects ----------------------------------------------------------------------------------


async def find_objects(
    client: Any, bucket: str, plan: MigrationPlan, removal: RowRemoval, retry: Retrier, *, dry_run: bool
) -> RollbackResult:
    """What of the migration may be in the destination bucket, from one listing per project prefix,
    and the open uploads this migration started there (:mod:`projmig.marks`). A dry run reads each
    object's mark (one HEAD each) to say exactly what would go; a real run leaves that to
    :func:`remove_objects`, which reads each mark just before deleting."""
    objects: dict[str, int] = {}
    uploads: list[tuple[str, str]] = []
    left = 0
    slots = asyncio.Semaphore(MARK_READS_AT_ONCE)

    async def mark(key: str) -> str | None:
        async with slots:
            return await read_mark(client, bucket, key, retry)

    for project in plan.projects:
        prefix, ours = f"{project.dst_uuid}/", copy_mark(project.src_uuid, project.dst_uuid)
        listing: dict[str, ObjectState] = await list_prefix(client, bucket, prefix, retry)
        marks = dict(zip(listing, await asyncio.gather(*(mark(k) for k in listing)))) if dry_run else {}
        for key, state in listing.items():
            if not dry_run or marks[key] == ours:
                objects[key] = state.size
            else:
                left += 1
        records: dict[str, UploadRecord | None] = {}
        for upload in await list_uploads(client, bucket, prefix, retry):
            key = upload["Key"]
            if key not in records:
                records[key] = await read_record(client, bucket, key, retry)
            record = records[key]
            if record is not None and record.owns(upload, ours):
                uploads.append((key, upload["UploadId"]))
    present = set(removal.present)
    return RollbackResult(
        dry_run=dry_run,
        projects=[
            RollbackProject(src_uuid=p.src_uuid, dst_uuid=p.dst_uuid, name=p.name, hidden=p.hidden,
                            present=p.dst_uuid in present)
            for p in plan.projects
        ],
        rows=removal.rows,
        objects=dict(sorted(objects.items())),
        uploads=uploads,
        objects_left=left,
    )


async def remove_objects(client: Any, bucket: str, result: RollbackResult, retry: Retrier) -> RollbackResult:
    """Abort the migration's unfinished uploads :func:`find_objects` found (before the ledger objects
    that make them the migration's go), then delete each object it found that carries the migration's
    mark, read just before, the delete conditional on the ETag read
    (:func:`projmig.buckets.delete_marked`; batched where the server honours the condition). Returns
    ``result`` with the objects removed, and those kept counted."""
    aborted = sum([await abort_upload(client, bucket, key, upload_id, retry) for key, upload_id in result.uploads])
    marks = result.object_marks()
    deleted = MarkedDeletion(removed={}, kept=0)
    if marks:
        conditional = await conditional_deletes(client, bucket, retry)
        deleted = await delete_marked(client, bucket, marks, retry, conditional=conditional)
    return result.model_copy(update={
        "objects": deleted.removed, "objects_removed": len(deleted.removed),
        "objects_left": result.objects_left + deleted.kept, "uploads_aborted": aborted,
    })
