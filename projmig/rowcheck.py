"""The independent row check: does the destination hold, row for row and column for column, what the
source holds, up to the documented remaps?

It shares nothing with the path that writes. Both databases are read with SQL of its own, each
column as PostgreSQL's own text of it (``col::text``, with ``col IS NULL`` alongside), in one fixed
session setting (UTC, ISO dates), never decoded into Python values. The remaps (owner, groups,
product, bucket, verified object sizes, new ids) are applied by its own rule table, :data:`REMAPPED`,
from facts (who the destination owner is, which group is whose), not from the rows the plan wrote.
Columns the destination fills itself (sequences, triggers) are named in :data:`SET_BY_DESTINATION`
and reported as such, never silently skipped.

The insert runs it on the rows it wrote, before COMMIT; ``projmig verify`` runs it on both databases.
The same text form, hashed per project and table (:func:`table_digests`), is what tells whether a
source project changed between the graph's snapshot and the insert's COMMIT
(:class:`projmig.graph.SourceState`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from sys import intern
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

TextRow = dict[str, str | None]  # column -> PostgreSQL's text of its value; None: SQL NULL

TABLES: dict[str, tuple[str, ...]] = {  # every project table and the columns that name one of its rows
    "projects": ("uuid",),
    "projects_nodes": ("project_uuid", "node_id"),
    "projects_metadata": ("project_uuid",),
    "projects_to_jobs": ("project_uuid", "job_parent_resource_name"),
    "projects_extensions": ("project_uuid",),
    "projects_networks": ("project_uuid",),
    "project_to_groups": ("project_uuid", "gid"),
    "file_meta_data": ("file_id",),
}
PROJECT_COLUMN = {"projects": "uuid", "file_meta_data": "project_id"}  # else project_uuid

SET_BY_DESTINATION: dict[tuple[str, str], str] = {
    ("projects", "id"): "the destination's sequence",
    ("projects_nodes", "project_node_id"): "the destination's sequence",
    ("projects_nodes", "modified"): "the destination's trigger (now)",
    ("projects_metadata", "modified"): "the destination's trigger (now)",
    ("project_to_groups", "created"): "the destination's owner-group trigger, in the owner's row",
    ("project_to_groups", "modified"): "the destination's owner-group trigger, in the owner's row",
}

REMAPPED: dict[tuple[str, str], str] = {
    ("projects", "prj_owner"): "the destination owner",
    ("projects", "product_name"): "the destination product",
    ("projects", "workspace_id"): "the owner's private workspace",
    ("projects", "trashed_by"): "the destination owner when set",
    ("project_to_groups", "gid"): "owner's group -> destination owner's, Everyone -> Everyone, product's -> product's",
    ("project_to_groups", "read"): "true in the owner's row",
    ("project_to_groups", "write"): "true in the owner's row",
    ("project_to_groups", "delete"): "true in the owner's row",
    ("file_meta_data", "user_id"): "the destination owner",
    ("file_meta_data", "bucket_name"): "the destination bucket",
    ("file_meta_data", "upload_id"): "no unfinished upload",
    ("file_meta_data", "upload_expires_at"): "no unfinished upload",
    ("file_meta_data", "file_size"): "the size of the object in the destination",
    ("file_meta_data", "entity_tag"): "the ETag of the object in the destination",
}

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SHOWN = 100  # characters of a value shown in a difference
READ_CHUNK = 1000  # rows fetched at a time when a table's rows are read back


class TextTables(BaseModel):
    """Rows of the project tables as PostgreSQL writes them as text."""

    rows: dict[str, list[TextRow]] = Field(default_factory=dict)
    json_columns: dict[str, list[str]] = Field(default_factory=dict)

    def of_projects(self, uuids: set[str]) -> TextTables:
        # (constructed, not validated: validating would copy every row, ~90 MB at 100,000 file rows)
        return TextTables.model_construct(
            rows={t: [r for r in rows if r.get(PROJECT_COLUMN.get(t, "project_uuid")) in uuids] for t, rows in self.rows.items()},
            json_columns=self.json_columns,
        )


class ProjectFacts(BaseModel):
    destination_uuid: str
    owner_gid: int | None  # the source owner's primary group
    product_gid: int | None  # the source product's group
    destination_product: str
    destination_product_gid: int | None
    # the project's destination owner when owners are matched one by one (else RemapFacts.owner_*)
    destination_owner_id: int | None = None
    destination_owner_gid: int | None = None


class RemapFacts(BaseModel):
    """What the documented remaps need to know, from the preflight and the source's identity rows."""

    projects: dict[str, ProjectFacts]  # source uuid ->
    renamed: dict[str, str] = Field(default_factory=dict)  # uuid_policy=new: destination id -> source id
    owner_id: int
    owner_gid: int
    everyone_gid: int | None  # the source's Everyone group
    destination_everyone_gid: int | None
    bucket: str
    groups: dict[int, int] = Field(default_factory=dict)  # source group -> destination group (matched people, mapped groups)


class Expectations(BaseModel):
    """The source's rows in text form and the facts to compare a destination with them."""

    source: TextTables
    facts: RemapFacts

    def subset(self, source_uuids: set[str]) -> Expectations:
        facts = self.facts.model_copy(update={"projects": {u: f for u, f in self.facts.projects.items() if u in source_uuids}})
        return Expectations.model_construct(source=self.source.of_projects(source_uuids), facts=facts)


class Difference(BaseModel):
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class RowCheck(BaseModel):
    checked: int = 0  # rows compared
    differences: list[Difference] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # what was not compared, and why


async def use_text_form(conn: AsyncConnection) -> None:
    """Make this transaction write every value as the row check reads it: TimeZone, DateStyle and
    float output fixed (``set_config(..., true)``), so that both databases, and one database at two
    moments, write the same value as the same text."""
    await conn.execute(text(
        "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), "
        "set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true)"
    ))


async def _columns(conn: AsyncConnection, table: str) -> list[tuple[str, str]]:
    """(name, type name) of the table's columns in order; none when the table does not exist."""
    return [tuple(r) for r in (await conn.execute(text(  # type: ignore[misc]
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    ), {"t": table})).all()]


NO_ROWS = ""  # the digest of a table where a project has no row


async def table_digests(conn: AsyncConnection, project_uuids: list[str]) -> dict[str, dict[str, str]]:
    """project -> table -> one digest of all its rows in that project table, in the row check's text
    form (every column's ``::text``, NULL apart from any text, :func:`use_text_form`): equal digests,
    equal rows. Each row is hashed, the row hashes are hashed in the order of the row's key (then
    its own hash), so the server returns 32 bytes a row to aggregate, not the rows."""
    await use_text_form(conn)
    found: dict[str, dict[str, str]] = {u: {} for u in project_uuids}
    for table in TABLES:
        columns = await _columns(conn, table)
        if not columns:
            continue
        row = "md5(concat_ws(',', " + ", ".join(f"quote_nullable({_quote(n)}::text)" for n, _ in columns) + "))"
        keys = ", ".join(f'{_quote(k)}::text COLLATE "C"' for k in TABLES[table])
        project = _quote(PROJECT_COLUMN.get(table, "project_uuid"))
        digests = await conn.execute(
            text(f"SELECT {project}, md5(string_agg({row}, '' ORDER BY {keys}, {row} COLLATE \"C\")) "
                 f"FROM {_quote(table)} WHERE {project} = ANY(:u) GROUP BY {project}"),
            {"u": project_uuids},
        )
        got = dict(digests.all())
        for uuid in project_uuids:
            found[uuid][table] = got.get(uuid, NO_ROWS)
    return found


async def read_text_rows(conn: AsyncConnection, project_uuids: list[str]) -> TextTables:
    """Every row of these projects in every project table, each column as ``::text`` (NULL as None),
    in the text form of :func:`use_text_form`."""
    await use_text_form(conn)
    found = TextTables()
    for table in TABLES:
        columns = await _columns(conn, table)
        if not columns:
            continue
        names = [name for name, _ in columns]
        found.json_columns[table] = [name for name, kind in columns if kind in ("json", "jsonb")]
        shown = ", ".join(f"{_quote(n)} IS NULL, {_quote(n)}::text" for n in names)
        # through a server-side cursor, READ_CHUNK rows at a time: the driver's records of all the rows
        # at once were ~130 MB at 100,000 file rows, beside the dicts kept (a chunk's size is given:
        # without it SQLAlchemy's asyncpg cursor fetches everything; a row at a time, an await each)
        rows = await conn.stream(
            text(f"SELECT {shown} FROM {_quote(table)} WHERE {_quote(PROJECT_COLUMN.get(table, 'project_uuid'))} = ANY(:u)"),
            {"u": project_uuids},
        )
        found.rows[table] = [
            # one str object per distinct text (ids, buckets, booleans repeat in every row)
            {name: None if row[2 * i] else intern(row[2 * i + 1]) for i, name in enumerate(names)}
            async for chunk in rows.partitions(READ_CHUNK) for row in chunk
        ]
    return found


def compare(
    expected: Expectations, destination: TextTables, objects: Mapping[str, Any] | None = None
) -> RowCheck:
    """The destination's rows of ``expected``'s projects against the source's, column by column.

    ``objects``: destination key -> its state (``.size``, ``.etag``) as verified, for the file rows."""
    check = RowCheck()
    for table in TABLES:
        if table in expected.source.rows:
            _compare_table(table, expected, destination, objects, check)
    check.notes[:0] = [
        f"not compared: {table}.{column}, set by {why}"
        for (table, column), why in SET_BY_DESTINATION.items() if table in expected.source.rows
    ]
    return check


def _compare_table(
    table: str, expected: Expectations, destination: TextTables, objects: Mapping[str, Any] | None, check: RowCheck
) -> None:
    facts = expected.facts
    json_columns = set(expected.source.json_columns.get(table, ())) | set(destination.json_columns.get(table, ()))
    want = _source_rows(table, expected.source.rows[table], facts, check)
    got = _destination_rows(table, destination.rows.get(table, []), facts, check)
    for key in sorted(want.keys() - got.keys(), key=str):
        check.differences.append(Difference(where=f"{table} {_name(table, want[key])}", what="missing in the destination"))
    for key in sorted(got.keys() - want.keys(), key=str):
        row = got[key][0]
        where = f"{table} {_name(table, row)}"
        owner = facts.projects.get(row.get("project_uuid") or "")
        if table != "project_to_groups" or owner is None or row.get("gid") != str(_owner(owner, facts)[1]):
            check.differences.append(Difference(where=where, what="in the destination but not in the source"))
            continue
        # the owner's group always gets its row (the destination's trigger), with every right
        for column in ("read", "write", "delete"):
            if row.get(column) != "true":
                what = f"{column}: {row.get(column)!r} in the destination, expected 'true' ({REMAPPED[table, column]})"
                check.differences.append(Difference(where=where, what=what))
    for key in sorted(want.keys() & got.keys(), key=str):
        check.checked += 1
        source, (there, raw) = want[key], got[key]
        project = facts.projects[source.get(PROJECT_COLUMN.get(table, "project_uuid")) or ""]
        for column in source.keys() & there.keys():
            if (table, column) in SET_BY_DESTINATION and _set_by_destination(table, source, facts):
                continue
            difference = _compare_value(table, column, source, there, raw, project, facts, objects, column in json_columns)
            if difference is not None:
                check.differences.append(Difference(where=f"{table} {_name(table, there)}", what=difference))
    columns_here = {c for r in expected.source.rows[table][:1] for c in r}
    columns_there = {c for r in destination.rows.get(table, [])[:1] for c in r}
    if columns_here and columns_there:
        check.notes += [f"not compared: {table}.{c}, only in the source" for c in sorted(columns_here - columns_there)]
        check.notes += [f"not compared: {table}.{c}, only in the destination" for c in sorted(columns_there - columns_here)]


def _source_rows(table: str, rows: list[TextRow], facts: RemapFacts, check: RowCheck) -> dict[tuple, TextRow]:
    """key (as the destination should have it) -> the source's row, for the projects of ``facts``."""
    want: dict[tuple, TextRow] = {}
    for row in rows:
        project = facts.projects.get(row.get(PROJECT_COLUMN.get(table, "project_uuid")) or "")
        if project is None:
            continue
        key = _source_key(table, row, project, facts)
        if key is None:
            check.notes.append(
                f"not copied, as the table rules say: {table} {_name(table, row)} (no such group in the destination)"
            )
        else:
            want.setdefault(key, row)
    return want


def _destination_rows(
    table: str, rows: list[TextRow], facts: RemapFacts, check: RowCheck
) -> dict[tuple, tuple[TextRow, TextRow]]:
    """key -> (the destination's row with the source's ids, the row as it is), for the projects of ``facts``;
    an id of the original left in a copy is a difference."""
    ours = {f.destination_uuid for f in facts.projects.values()}
    originals = set(facts.renamed.values())
    got: dict[tuple, tuple[TextRow, TextRow]] = {}
    for raw in rows:
        if raw.get(PROJECT_COLUMN.get(table, "project_uuid")) not in ours:
            continue
        row = {c: _back_to_source_ids(v, facts.renamed) for c, v in raw.items()} if facts.renamed else raw
        for column, value in raw.items() if originals else ():
            for old in sorted({u.lower() for u in _UUID.findall(value or "")} & originals):
                check.differences.append(Difference(
                    where=f"{table} {_name(table, row)}",
                    what=f"{column} refers to the source's id {old} (the copy must not point at its original)",
                ))
        got[tuple(row.get(k) for k in TABLES[table])] = (row, raw)
    return got


def _source_key(table: str, row: TextRow, project: ProjectFacts, facts: RemapFacts) -> tuple | None:
    """The row's key as the destination should have it (ids stay the source's); None: not copied."""
    if table != "project_to_groups":
        return tuple(row.get(k) for k in TABLES[table])
    gid = _group_in_destination(int(row["gid"] or 0), project, facts)
    return None if gid is None else (row.get("project_uuid"), str(gid))


def _owner(project: ProjectFacts, facts: RemapFacts) -> tuple[int, int]:
    """(user id, primary group) of the project's destination owner."""
    if project.destination_owner_id is not None and project.destination_owner_gid is not None:
        return project.destination_owner_id, project.destination_owner_gid
    return facts.owner_id, facts.owner_gid


def _group_in_destination(gid: int, project: ProjectFacts, facts: RemapFacts) -> int | None:
    if gid == project.owner_gid:
        return _owner(project, facts)[1]
    if facts.everyone_gid is not None and gid == facts.everyone_gid:
        return facts.destination_everyone_gid
    if project.product_gid is not None and gid == project.product_gid:
        return project.destination_product_gid
    return facts.groups.get(gid)


def _set_by_destination(table: str, source: TextRow, facts: RemapFacts) -> bool:
    if table == "project_to_groups":  # the trigger writes the owner's row; the others keep their dates
        project = facts.projects[source.get("project_uuid") or ""]
        return _group_in_destination(int(source["gid"] or 0), project, facts) == _owner(project, facts)[1]
    return True


def _compare_value(
    table: str, column: str, source: TextRow, there: TextRow, raw: TextRow, project: ProjectFacts, facts: RemapFacts,
    objects: Mapping[str, Any] | None, is_json: bool,
) -> str | None:
    """None when the destination's value is the one the rules expect, else the difference in words."""
    got = there[column]
    if (table, column) in REMAPPED:
        expected = _remapped(table, column, source, raw, project, facts, objects)
        if expected is not _COPIED:
            if got == expected:
                return None
            shown_got, shown_expected = _show(got, expected, is_json)
            return f"{column}: {shown_got} in the destination, expected {shown_expected} ({REMAPPED[table, column]})"
    want = source[column]
    if got == want or (is_json and got is not None and want is not None and _json_equal(got, want)):
        return None
    shown_want, shown_got = _show(want, got, is_json)
    return f"{column}: {shown_want} in the source, {shown_got} in the destination"


_COPIED: Any = object()  # a remapped column that, in this row, keeps the source's value


def _remapped(
    table: str, column: str, source: TextRow, raw: TextRow, project: ProjectFacts, facts: RemapFacts,
    objects: Mapping[str, Any] | None,
) -> Any:
    """What the rules make of the source's value; ``raw``: the destination's row as it is (its own ids)."""
    value = source[column]
    owner_id, owner_gid = _owner(project, facts)
    if table == "projects":
        return {
            "prj_owner": str(owner_id),
            "product_name": project.destination_product,
            "workspace_id": None,
            "trashed_by": None if value is None else str(owner_id),
        }[column]
    if table == "project_to_groups":
        gid = _group_in_destination(int(source["gid"] or 0), project, facts)
        if column == "gid":
            return str(gid)
        return "true" if gid == owner_gid else _COPIED
    # file_meta_data
    link = source.get("is_soft_link") == "true"
    external = not link and (source.get("location_id") or "0") != "0"
    if column == "user_id":
        return str(owner_id)
    if column == "bucket_name":
        return value if external else facts.bucket
    if column in ("upload_id", "upload_expires_at"):
        return None
    # file_size, entity_tag: as verified in the destination, for a file with its own object there
    state = (objects or {}).get(raw.get("object_name") or raw.get("file_id") or "")
    if state is None or link or external or source.get("is_directory") == "true":
        return _COPIED
    return str(state.size) if column == "file_size" else state.etag


def _back_to_source_ids(value: str | None, renamed: dict[str, str]) -> str | None:
    if value is None:
        return None
    return _UUID.sub(lambda m: renamed.get(m.group(0).lower(), m.group(0)), value)


def _json_equal(a: str, b: str) -> bool:
    """Equal JSON documents, numbers compared as written (``1.10`` is not ``1.1``); object keys in any
    order (a copy's new ids sort its keys differently)."""
    try:
        return json.loads(a, parse_float=_number, parse_int=_number) == json.loads(b, parse_float=_number, parse_int=_number)
    except ValueError:
        return False


def _number(literal: str) -> tuple[str, str]:
    return ("number", literal)  # a tuple never equals a parsed JSON value (arrays parse as lists)


def _show(a: str | None, b: str | None, is_json: bool) -> tuple[str, str]:
    """Two differing values in words; long texts as the part around their first difference."""
    if a is None or b is None or (len(a) <= _SHOWN and len(b) <= _SHOWN):
        return _word(a, is_json), _word(b, is_json)
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, start - _SHOWN // 4)

    def part(value: str) -> str:
        shown = value[start:start + _SHOWN]
        return f"{'...' if start else ''}{shown!r}{'...' if start + _SHOWN < len(value) else ''} ({len(value)} characters)"

    return part(a), part(b)


def _word(value: str | None, is_json: bool) -> str:
    if value is None:
        return "NULL"
    return "JSON null" if is_json and value == "null" else repr(value)


def _name(table: str, row: TextRow) -> str:
    if table == "projects_nodes":
        return str(row.get("node_id"))
    if table == "project_to_groups":
        return f"{row.get('project_uuid')} gid {row.get('gid')}"
    return " ".join(str(row.get(k)) for k in TABLES[table])


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
