"""Can the destination take the rows, and what happens to the columns the two sides do not share?
Checked for every migration: between two schema revisions (``options.allow_schema_drift``), and at
one revision too, where a destination altered by hand would otherwise lose a column's data silently.

The rule, per table a project touches (compared column by column, from reflection):

- a column only the source has is left out, but only if it is empty in every row to move (NULL, or
  its default): data would otherwise be lost, and the migration is refused;
- a column only the destination has gets its default, or NULL; a NOT NULL column without a
  default cannot be filled, and the migration is refused;
- a column whose type differs is refused (no conversion is guessed);
- a table the destination lacks is refused if the source has rows of it to move.

Reads the source only (counting rows), writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Column, Table, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import GENERATED_COLUMNS, PROJECT_TABLES, ColumnDiff, Reflections, compare_tables, reflect


@dataclass
class DriftCheck:
    problems: list[str] = field(default_factory=list)  # why the destination cannot take the rows
    notes: list[str] = field(default_factory=list)  # what happens to each column the sides do not share
    diffs: list[ColumnDiff] = field(default_factory=list)


def project_column(table: Table) -> Column:
    name = {"projects": "uuid", "file_meta_data": "project_id"}.get(table.name, "project_uuid")
    return table.c[name]


def default_sql(column: Column) -> str | None:
    """The column's server default as SQL, when it is safe to evaluate (no sequence)."""
    default = column.server_default
    if default is None:
        return None
    text = str(getattr(default.arg, "text", default.arg))
    return None if "nextval(" in text else text


async def check_drift(
    src: AsyncConnection, dst: AsyncConnection, projects: list[str], *, revisions: tuple[str, str],
    known: Reflections | None = None,
) -> DriftCheck:
    source, destination = await reflect(src, PROJECT_TABLES, known), await reflect(dst, PROJECT_TABLES, known)
    check = DriftCheck(diffs=[d for d in compare_tables(source, destination) if not d.identical])
    for diff in check.diffs:
        table = source.tables[diff.table]
        if diff.table not in destination.tables:
            count = await _rows_with_data(src, table, None, projects)
            if count:
                check.problems.append(
                    f"schema drift: the destination has no table {diff.table}; {count} source rows of it would be lost"
                )
            else:
                check.notes.append(f"{diff.table}: not in the destination; no rows to move")
            continue
        target = destination.tables[diff.table]
        for name in diff.only_in_source:
            if name in GENERATED_COLUMNS.get(diff.table, ()):
                continue
            count = await _rows_with_data(src, table, table.c[name], projects)
            if count:
                check.problems.append(
                    f"schema drift: {diff.table}.{name} is not in the destination and holds data in {count} of "
                    "the rows to move (it would be lost)"
                )
            else:
                check.notes.append(f"{diff.table}.{name}: dropped (not in the destination; empty in every row moved)")
        for name in diff.only_in_destination:
            column = target.c[name]
            if name in diff.required_in_destination:
                check.problems.append(
                    f"schema drift: destination {diff.table}.{name} is NOT NULL without a default; "
                    "the source has no such column to fill it"
                )
            elif column.server_default is not None:
                check.notes.append(
                    f"{diff.table}.{name}: defaulted to {default_sql(column) or 'its sequence'} (only in the destination)"
                )
            else:
                check.notes.append(f"{diff.table}.{name}: defaulted to NULL (only in the destination)")
        for change in diff.type_changes:
            check.problems.append(f"schema drift: {diff.table}.{change.split(':')[0]} has another type ({change.split(': ', 1)[1]})")
    if not check.diffs and revisions[0] != revisions[1]:
        check.notes.append(
            f"revisions differ ({revisions[0]} -> {revisions[1]}) but every table a project touches has the same columns"
        )
    elif check.diffs and revisions[0] == revisions[1]:
        check.problems = [f"{p} (both databases at revision {revisions[0]}: one altered by hand?)" for p in check.problems]
    return check


async def _rows_with_data(src: AsyncConnection, table: Table, column: Column | None, projects: list[str]) -> int:
    """Rows of the projects whose ``column`` is neither NULL nor its default (every row if None)."""
    query = select(func.count()).select_from(table).where(project_column(table).in_(projects))
    if column is not None:
        query = query.where(column.is_not(None))
        default = default_sql(column)
        if default is not None:
            query = query.where(column.is_distinct_from(literal_column(f"({default})")))
    return int(await src.scalar(query) or 0)
