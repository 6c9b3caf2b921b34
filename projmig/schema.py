"""What both databases look like: revision, the tables a project touches, their columns and FK order.

Also the one list of rules for every table that references a project: copied (with which
remaps) or left behind, and why: ``TABLE_RULES``, from which ``python -m projmig.docs`` generates
the table of rules in docs/table-rules.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import MetaData, Table, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

# Tables copied with a project, in the order rows must be inserted (parents before children).
PROJECT_TABLES: tuple[str, ...] = (
    "projects",
    "projects_nodes",
    "projects_metadata",
    "projects_to_jobs",
    "projects_extensions",
    "projects_networks",
    "project_to_groups",
    "file_meta_data",
)

# Columns filled by the destination, never copied.
GENERATED_COLUMNS: dict[str, frozenset[str]] = {
    "projects": frozenset({"id"}),
    "projects_nodes": frozenset({"project_node_id"}),
}

TABLE_RULES: dict[str, str] = {
    "projects": "copied; `id` from the destination's sequence; `prj_owner` -> destination owner; "
    "`product_name` -> destination product; `workspace_id` -> NULL (owner's private workspace); "
    "`trashed_by` -> destination owner when set; dates kept",
    "projects_nodes": "copied; `project_node_id` from the destination's sequence; `modified` set by the "
    "destination's trigger",
    "projects_metadata": "copied (parent links kept: parents are inserted first); `modified` set by trigger",
    "projects_to_jobs": "copied",
    "projects_extensions": "copied",
    "projects_networks": "copied",
    "project_to_groups": "mapped: owner's primary group -> destination owner's primary group (rwd, as the "
    "destination's trigger does); Everyone -> destination Everyone; product group -> destination product's "
    "group; another user's primary group -> that user's account's, when owners are matched and that user matches; "
    "a standard group -> the group `choices.group_map` names; any other group is dropped and reported",
    "file_meta_data": "copied; `user_id` -> destination owner; `bucket_name` -> destination bucket; "
    "`file_size`/`entity_tag` -> as verified in the destination; `upload_id`/`upload_expires_at` -> NULL; "
    "a row whose object is missing in the source (a directory without objects, a soft link whose target is "
    "neither migrated nor in the destination) stops the migration, one error line each, unless "
    "`options.allow_missing_objects`: then it moves without its object and the report lists it",
    "projects_to_folders": "left behind: folders belong to the source deployment's users; with "
    "`choices.into_folder` each root lands in a private folder of that name of its destination owner (made once, "
    "found again by a rerun), and with `choices.keep_folders` in the owner's own source folder tree re-created "
    "(under it, or at the root); a project of a shared workspace lands without its folder, and the report says so",
    "projects_to_wallet": "left behind: wallets and credits are deployment-bound",
    "projects_tags": "left behind, unless owners are matched to their own accounts (`choices.match_users`, "
    "`choices.user_map`): then each tag the owner holds that is linked to a root is re-created for their account "
    "(reused by name where the account has one) and linked to it",
    "projects_node_to_pricing_unit": "left behind: pricing plans are deployment-bound",
    "projects_to_products": "left behind: the project gets the destination product",
    "workspaces": "not copied: `projects.workspace_id` becomes NULL",
    "comp_pipeline": "left behind: computational state, rebuilt when the study runs again",
    "comp_tasks": "left behind: computational state, rebuilt when the study runs again",
    "comp_runs": "left behind: run history of the source deployment",
    "comp_run_snapshot_tasks": "left behind: run history of the source deployment",
    "conversations": "left behind: conversations reference source users and groups",
    "conversation_messages": "left behind: conversations reference source users and groups",
    "resource_tracker_service_runs": "left behind: billing history of the source deployment",
}

# Link tables whose rows are counted (and reported as left behind) when they exist in the source.
DEPLOYMENT_BOUND_TABLES: dict[str, str] = {
    "projects_to_folders": "project_uuid",
    "projects_to_wallet": "project_uuid",
    "projects_tags": "project_uuid_for_rut",
    "comp_pipeline": "project_id",
    "comp_tasks": "project_id",
    "comp_runs": "project_uuid",
    "conversations": "project_uuid",
}


# What SQLAlchemy's reflection of these tables reads, as one text per table element: columns (name,
# position, type, NOT NULL, default, identity, generated), constraints (keys, FKs, checks), indexes,
# and the labels of the enum types their columns use. Equal fingerprints: equal reflections.
SCHEMA_FINGERPRINT = text("""
WITH tables AS (
    SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = ANY(:tables) AND c.relkind IN ('r', 'p') AND n.nspname = current_schema()
), columns AS (
    SELECT t.relname, a.* FROM tables t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
)
SELECT current_setting('server_version_num') || ' ' || md5(coalesce(string_agg(part, E'\n' ORDER BY part), ''))
FROM (
    SELECT format('column %s %s %s %s %s %s %s %s', c.relname, c.attnum, c.attname, format_type(c.atttypid, c.atttypmod),
                  c.attnotnull, pg_get_expr(d.adbin, d.adrelid), c.attidentity, c.attgenerated)
    FROM columns c LEFT JOIN pg_attrdef d ON d.adrelid = c.attrelid AND d.adnum = c.attnum
    UNION ALL
    SELECT format('constraint %s %s %s', t.relname, k.conname, pg_get_constraintdef(k.oid))
    FROM tables t JOIN pg_constraint k ON k.conrelid = t.oid
    UNION ALL
    SELECT format('index %s %s', t.relname, pg_get_indexdef(i.indexrelid)) FROM tables t JOIN pg_index i ON i.indrelid = t.oid
    UNION ALL
    SELECT format('enum %s %s', e.enumtypid::regtype, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder))
    FROM pg_enum e
    WHERE e.enumtypid IN (SELECT coalesce(nullif(y.typelem, 0), y.oid) FROM columns c JOIN pg_type y ON y.oid = c.atttypid)
    GROUP BY e.enumtypid
) AS parts (part)
""")

async def reflect(
    conn: AsyncConnection, tables: tuple[str, ...] | list[str], known: Reflections | None = None
) -> MetaData:
    """Reflect the given tables (those that exist) with their columns, keys and FKs; ``known``: the
    run's reflections, reused for databases whose tables have the same shape."""
    if known is not None:
        return await known.reflect(conn, tables)

    def _reflect(sync_conn) -> MetaData:
        existing = set(inspect(sync_conn).get_table_names())
        metadata = MetaData()
        metadata.reflect(sync_conn, only=[t for t in tables if t in existing], resolve_fks=False)
        return metadata

    return await conn.run_sync(_reflect)


class Reflections:
    """One run's reflections, one per set of tables and shape of them (:data:`SCHEMA_FINGERPRINT`, one
    query). A run reflects both databases in its preflight, the source again for its graph and the
    destination for each root's insert, on engines of their own, where SQLAlchemy's reflection costs
    ~0.1 s of CPU each. The :class:`MetaData` handed out is shared: read it, never change it."""

    def __init__(self) -> None:
        self._known: dict[tuple[tuple[str, ...], str], MetaData] = {}
        self._reflecting: dict[tuple[tuple[str, ...], str], asyncio.Lock] = {}

    async def reflect(self, conn: AsyncConnection, tables: tuple[str, ...] | list[str]) -> MetaData:
        names = tuple(tables)
        key = (names, str(await conn.scalar(SCHEMA_FINGERPRINT, {"tables": list(names)})))
        # two steps at once (the preflight's checks and the graph's read) wait for one reflection
        async with self._reflecting.setdefault(key, asyncio.Lock()):
            if key not in self._known:
                self._known[key] = await reflect(conn, names)
        return self._known[key]


def insert_order(metadata: MetaData) -> list[Table]:
    """Project tables in FK order: every table after the tables it references."""
    present = [metadata.tables[name] for name in PROJECT_TABLES if name in metadata.tables]
    by_name = {t.name: t for t in present}
    ordered: list[Table] = []

    def visit(table: Table, stack: tuple[str, ...] = ()) -> None:
        if table in ordered or table.name in stack:
            return
        for fk in table.foreign_keys:
            # reflected without the tables it points to: the FK knows its target only by name
            parent = by_name.get(fk.target_fullname.split(".")[-2])
            if parent is not None and parent is not table:
                visit(parent, (*stack, table.name))
        ordered.append(table)

    for table in present:
        visit(table)
    return ordered


@dataclass
class ColumnDiff:
    table: str
    only_in_source: list[str] = field(default_factory=list)
    only_in_destination: list[str] = field(default_factory=list)
    # destination columns that are NOT NULL without default: rows cannot be inserted without them
    required_in_destination: list[str] = field(default_factory=list)
    type_changes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.only_in_source or self.only_in_destination or self.type_changes)


def compare_tables(source: MetaData, destination: MetaData) -> list[ColumnDiff]:
    """Column by column, for every project table present in the source."""
    diffs = []
    for name in PROJECT_TABLES:
        src = source.tables.get(name)
        if src is None:
            continue
        dst = destination.tables.get(name)
        diff = ColumnDiff(table=name)
        if dst is None:
            diff.only_in_source = [c.name for c in src.columns]
            diff.required_in_destination = []
            diffs.append(diff)
            continue
        src_cols = {c.name: c for c in src.columns}
        dst_cols = {c.name: c for c in dst.columns}
        diff.only_in_source = [c for c in src_cols if c not in dst_cols]
        diff.only_in_destination = [c for c in dst_cols if c not in src_cols]
        diff.required_in_destination = [
            c for c in diff.only_in_destination
            if not dst_cols[c].nullable and dst_cols[c].server_default is None and dst_cols[c].autoincrement is not True
        ]
        for col in src_cols.keys() & dst_cols.keys():
            a, b = str(src_cols[col].type), str(dst_cols[col].type)
            if a != b:
                diff.type_changes.append(f"{col}: {a} -> {b}")
        diffs.append(diff)
    return diffs
