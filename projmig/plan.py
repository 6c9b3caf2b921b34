"""Decide what goes where: the objects to copy and the rows to insert, with owner, group, product
and bucket remapped for the destination. Pure: no I/O, so a dry run and a real run agree."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, Field

from .graph import FileEntry, ProjectGraph, ProjectRecord, Row, SourceState
from .placement import Placement
from .remap import IdMap, outside_links, root_of
from .rowcheck import Expectations, ProjectFacts, RemapFacts
from .schema import GENERATED_COLUMNS, PROJECT_TABLES


class DestinationFacts(BaseModel):
    """What the destination deployment gives the migrated projects."""

    owner_id: int
    owner_gid: int
    everyone_gid: int | None
    product_name: str | None = None  # None: each project keeps its source product
    product_gids: dict[str, int | None] = Field(default_factory=dict)  # destination product -> its group
    bucket: str
    # owners matched one by one (choices.match_users): source project -> (its owner's account, its primary group)
    recipients: dict[str, tuple[int, int]] = Field(default_factory=dict)
    groups: dict[int, int] = Field(default_factory=dict)  # source group -> destination group (matched people, mapped groups)
    into_folder: str | None = None  # choices.into_folder

    def product_for(self, project: ProjectRecord) -> str:
        return self.product_name or project.product_name

    def owner_of(self, project: str) -> tuple[int, int]:
        """(user id, primary group) of the destination owner of this source project."""
        return self.recipients.get(project, (self.owner_id, self.owner_gid))


@dataclass(frozen=True, slots=True)  # one per object: see graph.SourceObject
class ObjectCopy:
    src_key: str
    dst_key: str
    size: int
    etag: str  # the source's, unquoted
    file_id: str


class PlannedProject(BaseModel):
    src_uuid: str
    dst_uuid: str
    name: str
    hidden: bool
    parent_uuid: str | None  # source uuid of the project whose node created this job project
    root_uuid: str | None = None  # source uuid of the root project asked for (its graph moves as one)
    nodes: int
    files: int
    objects: int
    bytes: int
    source_state: SourceState | None = None  # as read: the insert checks it is still so before COMMIT
    owner_id: int = 0  # the destination owner
    owner_gid: int = 0  # ... and their primary group
    product: str = ""  # the destination product
    placement: Placement | None = None  # the folder and tags it lands in (projmig/placement.py)


class MigrationPlan(BaseModel):
    projects: list[PlannedProject]
    rows: dict[str, list[Row]]  # destination rows per table, parents before children within a table
    copies: list[ObjectCopy]
    left_behind: dict[str, int] = Field(default_factory=dict)
    dropped_groups: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    schema_drift: list[str] = Field(default_factory=list)  # columns dropped or defaulted between revisions
    expected: Expectations | None = None  # the source's rows as text, for the row check before COMMIT
    into_folder: str | None = None  # choices.into_folder: the folder the roots land in (projmig/placement.py)

    @property
    def total_bytes(self) -> int:
        return sum(c.size for c in self.copies)

    def rows_per_table(self) -> dict[str, int]:
        return {table: len(self.rows.get(table, [])) for table in PROJECT_TABLES if self.rows.get(table)}

    def rows_of(self, project_uuid: str) -> dict[str, list[Row]]:
        out: dict[str, list[Row]] = {}
        for table, rows in self.rows.items():
            key = "uuid" if table == "projects" else ("project_id" if table == "file_meta_data" else "project_uuid")
            mine = [r for r in rows if r.get(key) == project_uuid]
            if mine:
                out[table] = mine
        return out

    def roots(self) -> dict[str, list[PlannedProject]]:
        """Source root uuid -> the projects of its graph (root first)."""
        groups: dict[str, list[PlannedProject]] = {}
        for p in self.projects:
            groups.setdefault(p.root_uuid or p.src_uuid, []).append(p)
        return groups

    def subset(self, dst_uuids: list[str] | set[str]) -> MigrationPlan:
        """The part of the plan that concerns these (destination) projects."""
        keep = set(dst_uuids)
        rows = {t: rs for t, rs in ((t, [r for r in rs if r.get(_project_key(t)) in keep]) for t, rs in self.rows.items()) if rs}
        projects = [p for p in self.projects if p.dst_uuid in keep]
        return self.model_copy(update={
            "projects": projects,
            "rows": rows,
            "copies": [c for c in self.copies if c.dst_key.split("/", 1)[0] in keep],
            "expected": self.expected.subset({p.src_uuid for p in projects}) if self.expected else None,
        })

    def summary_lines(self) -> list[str]:
        lines = [f"{len(self.projects)} project(s):"]
        for p in self.projects:
            kind = "hidden job of " + (p.parent_uuid or "?") if p.hidden else "study"
            target = "" if p.src_uuid == p.dst_uuid else f" -> {p.dst_uuid}"
            lines.append(
                f"  {p.src_uuid}{target}  {p.name!r} ({kind}): {p.nodes} nodes, {p.files} files, "
                f"{p.objects} objects, {p.bytes} bytes"
            )
        lines.append("rows to insert: " + ", ".join(f"{t} {n}" for t, n in self.rows_per_table().items()))
        lines.append(f"objects to copy: {len(self.copies)} ({self.total_bytes} bytes)")
        if self.left_behind:
            lines.append("left behind (deployment-bound): " + ", ".join(f"{t} {n}" for t, n in self.left_behind.items()))
        lines += [f"dropped group: {g}" for g in self.dropped_groups]
        lines += [f"schema drift: {d}" for d in self.schema_drift]
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


def build_plan(
    graph: ProjectGraph, dest: DestinationFacts, namespaces: dict[str, str] | None = None
) -> MigrationPlan:
    """``namespaces`` (root -> copy namespace; uuid_policy=new): give every project and node a new id
    and rewrite every reference (:mod:`projmig.remap`). None: the destination keeps the source's ids."""
    rows: dict[str, list[Row]] = {}
    copies: dict[str, ObjectCopy] = {}
    planned: list[PlannedProject] = []
    dropped: list[str] = []
    parents = {p.uuid: p.parent_uuid for p in graph.projects}
    warnings = list(graph.warnings)

    for project in graph.projects:
        warnings += _unknown_nodes(project)
        owner = dest.owner_of(project.uuid)
        for table, table_rows in project.rows.items():
            if table == "file_meta_data":
                continue  # from the file entries: rows without a source object stay behind
            for row in table_rows:
                mapped = _map_row(table, row, project, graph, dest, owner, dropped)
                if mapped is not None:
                    rows.setdefault(table, []).append(mapped)
        _ensure_owner_access(rows, project.uuid, owner[1])
        sources = {r["file_id"]: r for r in project.rows.get("file_meta_data", [])}
        rows.setdefault("file_meta_data", []).extend(
            _file_row(sources[entry.file_id], entry, dest, owner[0]) for entry in project.files)
        placement = graph.placements.get(project.uuid)
        if placement is not None and placement.note:
            warnings.append(placement.note)
        for entry in project.files:
            for obj in entry.objects:
                copies.setdefault(
                    obj.key,
                    ObjectCopy(src_key=obj.key, dst_key=obj.key, size=obj.size, etag=obj.etag, file_id=entry.file_id),
                )
        planned.append(
            PlannedProject(
                src_uuid=project.uuid,
                dst_uuid=project.uuid,
                name=project.name,
                hidden=project.hidden,
                parent_uuid=project.parent_uuid,
                root_uuid=root_of(project.uuid, parents),
                nodes=len(project.rows.get("projects_nodes", [])),
                files=len(project.files),
                objects=sum(len(e.objects) for e in project.files),
                bytes=sum(e.size for e in project.files),
                source_state=graph.source_states.get(project.uuid),
                owner_id=owner[0],
                owner_gid=owner[1],
                product=dest.product_for(project),
                placement=placement,
            )
        )
    plan = MigrationPlan(
        into_folder=dest.into_folder,
        projects=planned,
        rows={t: rows[t] for t in PROJECT_TABLES if rows.get(t)},
        copies=list(copies.values()),
        left_behind=dict(graph.left_behind),
        dropped_groups=list(dict.fromkeys(dropped)),
        warnings=warnings,
    )
    if namespaces is not None:
        ids = IdMap.for_graph(graph, namespaces)
        plan = _with_new_ids(plan, ids, graph.json_columns)
        renamed = {new: old for old, new in ids.projects.items()} | {new: old for (_, old), new in ids.nodes.items()}
    else:
        renamed = {}
    plan.expected = _expectations(graph, plan, dest, renamed)
    return plan


def _expectations(graph: ProjectGraph, plan: MigrationPlan, dest: DestinationFacts, renamed: dict[str, str]) -> Expectations:
    """The source's rows as text and the facts of the remaps, for :mod:`projmig.rowcheck` (not the plan's rows)."""
    destination_uuids = {p.src_uuid: p.dst_uuid for p in plan.projects}
    facts = RemapFacts(
        projects={
            p.uuid: ProjectFacts(
                destination_uuid=destination_uuids[p.uuid],
                owner_gid=p.owner_gid,
                product_gid=graph.product_gids.get(p.product_name),
                destination_product=dest.product_for(p),
                destination_product_gid=dest.product_gids.get(dest.product_for(p)),
                destination_owner_id=dest.recipients[p.uuid][0] if p.uuid in dest.recipients else None,
                destination_owner_gid=dest.recipients[p.uuid][1] if p.uuid in dest.recipients else None,
            )
            for p in graph.projects
        },
        groups=dest.groups,
        renamed=renamed,
        owner_id=dest.owner_id,
        owner_gid=dest.owner_gid,
        everyone_gid=graph.everyone_gid,
        destination_everyone_gid=dest.everyone_gid,
        bucket=dest.bucket,
    )
    return Expectations(source=graph.text_rows, facts=facts)


def _unknown_nodes(project: ProjectRecord) -> list[str]:
    """Nodes that ``input_nodes``, ``inputs`` or ``projects.ui`` name but ``projects_nodes`` lacks."""
    nodes = project.rows.get("projects_nodes", [])
    known = {str(n["node_id"]) for n in nodes}
    named: dict[str, list[str]] = {}  # node id -> where it is named
    for node in nodes:
        for node_id in _json(node.get("input_nodes"), list):
            named.setdefault(str(node_id), []).append(f"input_nodes of node {node['node_id']}")
        for port in _json(node.get("inputs"), dict).values():
            if isinstance(port, dict) and "nodeUuid" in port:
                named.setdefault(str(port["nodeUuid"]), []).append(f"inputs of node {node['node_id']}")
    ui = _json((project.rows.get("projects") or [{}])[0].get("ui"), dict)
    for part in ("workbench", "slideshow"):
        for node_id in _json_value(ui.get(part), dict):
            named.setdefault(str(node_id), []).append(f"projects.ui {part}")
    return [
        f"project {project.uuid}: node {node_id} is named by {', '.join(dict.fromkeys(where))} but is not in projects_nodes"
        for node_id, where in named.items() if node_id not in known
    ]


def _json(text: Any, kind: type) -> Any:
    """A JSON column's text decoded, or an empty ``kind`` (NULL, JSON null, or another shape)."""
    return _json_value(json.loads(text) if isinstance(text, str) else None, kind)


def _json_value(value: Any, kind: type) -> Any:
    return value if isinstance(value, kind) else kind()


def _project_key(table: str) -> str:
    return {"projects": "uuid", "file_meta_data": "project_id"}.get(table, "project_uuid")


def _with_new_ids(plan: MigrationPlan, ids: IdMap, json_columns: dict[str, list[str]]) -> MigrationPlan:
    """The same plan under the new ids: rows, object keys and project names all rewritten."""
    warnings = plan.warnings + outside_links(plan.rows, ids)
    rows = {
        table: [ids.row(r, r[_project_key(table)], set(json_columns.get(table, ()))) for r in table_rows]
        for table, table_rows in plan.rows.items()
    }
    copies = [replace(c, dst_key=ids.key(c.src_key), file_id=ids.key(c.file_id)) for c in plan.copies]
    projects = [p.model_copy(update={"dst_uuid": ids.project(p.src_uuid)}) for p in plan.projects]
    return plan.model_copy(update={"rows": rows, "copies": copies, "projects": projects, "warnings": warnings})


def _map_row(
    table: str, row: Row, project: ProjectRecord, graph: ProjectGraph, dest: DestinationFacts, owner: tuple[int, int],
    dropped: list[str],
) -> Row | None:
    row = {k: v for k, v in row.items() if k not in GENERATED_COLUMNS.get(table, ())}
    if table == "projects":
        row["prj_owner"] = owner[0]
        row["product_name"] = dest.product_for(project)
        row["workspace_id"] = None
        if row.get("trashed_by") is not None:
            row["trashed_by"] = owner[0]
    elif table == "project_to_groups":
        gid = _map_group(row["gid"], project, graph, dest, owner[1])
        if gid is None:
            dropped.append(f"{row['gid']} (project {project.uuid}): no such group in the destination")
            return None
        row["gid"] = gid
        if gid == owner[1]:
            row.update(read=True, write=True, delete=True)
    return row


def _map_group(gid: int, project: ProjectRecord, graph: ProjectGraph, dest: DestinationFacts, owner_gid: int) -> int | None:
    if gid == project.owner_gid:
        return owner_gid
    if graph.everyone_gid is not None and gid == graph.everyone_gid:
        return dest.everyone_gid
    if graph.product_gids.get(project.product_name) == gid:
        return dest.product_gids.get(dest.product_for(project))
    return dest.groups.get(gid)


def _ensure_owner_access(rows: dict[str, list[Row]], project_uuid: str, owner_gid: int) -> None:
    """Several source groups may map to the owner's group: keep one row, and always one."""
    access = rows.setdefault("project_to_groups", [])
    seen: set[int] = set()
    kept = []
    for row in access:
        if row["project_uuid"] == project_uuid:
            if row["gid"] in seen:
                continue
            seen.add(row["gid"])
        kept.append(row)
    if owner_gid not in seen:
        kept.append({"project_uuid": project_uuid, "gid": owner_gid, "read": True, "write": True, "delete": True})
    access[:] = kept


def _file_row(source: Row, entry: FileEntry, dest: DestinationFacts, owner_id: int) -> Row:
    row: dict[str, Any] = dict(source)
    row["user_id"] = owner_id
    row["upload_id"] = None
    row["upload_expires_at"] = None
    if entry.kind in ("file", "directory", "soft_link"):
        row["bucket_name"] = dest.bucket
    return row
