"""osparc databases at older releases, for the tests and bench of migrating across releases: made
by osparc's own migrations (empty -> a revision), and seeded with studies in the shape that
revision's webserver wrote them.

The shape follows the columns the database has, so one seeding serves every revision:

- ``447db39c5455`` (:data:`WORKBENCH_REVISION`, mid-2026): nodes in ``projects.workbench`` (camelCase
  JSON, every key revision ``201aa37f4d9a`` maps, plus ``position`` that it ignores) and, as that
  webserver kept them in step, in ``projects_nodes``; access rights in ``projects.access_rights``
  (and ``project_to_groups``); node positions in ``projects.ui.workbench``; file dates as text
  (ISO, some with an offset, some without, as 4ec498d70da6 says both occur).
- ``a85557c02d71`` (:data:`OLDER_REVISION`): older still, before ``ce69cc44246a`` (which moves
  ``projects_to_products`` into ``projects.product_name``, a second data migration of project rows)
  and ``47dc5c0a138e`` (``file_meta_data.user_id`` from text to a bigint referencing ``users``):
  the product in ``projects_to_products``, ``file_meta_data.user_id`` text, ``projects_nodes`` with
  ``output_nodes`` and ``parent`` (the workbench's ``outputNodes``/``parent``).
- head: ``projects_nodes`` only (with ``ui``), ``project_to_groups`` only, file dates ``timestamptz``.

Rows only: S3 objects are the pipeline's business; file rows name keys ``{project}/{node}/{name}``.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from ..releases import MigrationRunner, OsparcMigrations, connect
from ..settings import DatabaseSettings
from .simcore import Identities, User, seed

WORKBENCH_REVISION = "447db39c5455"
OLDER_REVISION = "a85557c02d71"
SERVICE = ("simcore/services/comp/itis/sleeper", "2.1.6")
BASE_TIME = datetime(2026, 5, 4, 8, 30, 0, 123456, tzinfo=timezone.utc)


async def create_osparc_database(
    db: DatabaseSettings, migrations: OsparcMigrations, revision: str, runner: MigrationRunner | None = None,
) -> None:
    """Bring the empty database ``db`` to ``revision`` with osparc's migrations."""
    if runner is not None:
        await runner.migrate(db, revision)
    else:
        await migrations.migrate(db, revision)


async def seed_identities(db: DatabaseSettings, *, users: list[str], groups: list[str] = (), product: str = "osparc") -> Identities:  # type: ignore[assignment]
    """The Everyone group and a product (osparc's migrations made them), named users (the users
    trigger gives each a primary group) and standard groups."""
    return await seed(db, users=users, groups=list(groups), product=product)


@dataclass
class Study:
    uuid: str
    owner: User
    nodes: list[str]
    children: list[str] = field(default_factory=list)  # hidden job projects, depth first
    files: list[str] = field(default_factory=list)

    @property
    def projects(self) -> list[str]:
        return [self.uuid, *self.children]


class Shape:
    """Which tables and columns the database has (so: which revision's webserver to imitate)."""

    def __init__(self, columns: dict[str, set[str]], types: dict[tuple[str, str], str]):
        self.columns = columns
        self.types = types

    @classmethod
    async def of(cls, conn: asyncpg.Connection) -> Shape:
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public'"
        )
        columns: dict[str, set[str]] = {}
        types: dict[tuple[str, str], str] = {}
        for table, column, data_type in rows:
            columns.setdefault(table, set()).add(column)
            types[(table, column)] = data_type
        return cls(columns, types)

    def has(self, table: str, column: str | None = None) -> bool:
        return table in self.columns and (column is None or column in self.columns[table])


async def insert(conn: asyncpg.Connection, shape: Shape, table: str, row: dict[str, Any]) -> None:
    """Insert the columns of ``row`` the table has (the others belong to other revisions): dicts and
    lists as JSON text for json/jsonb columns, datetimes as the column's kind (with or without a
    zone), the rest as asyncpg takes them for the column's type."""
    names = [c for c in row if shape.has(table, c)]
    params = [_value(shape.types[(table, name)], row[name]) for name in names]
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    await conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})", *params)


def _value(data_type: str, value: Any) -> Any:
    if value is None:
        return None
    if data_type in ("json", "jsonb"):
        return json.dumps(value)
    if data_type == "timestamp without time zone" and isinstance(value, datetime) and value.tzinfo:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    if data_type == "timestamp with time zone" and isinstance(value, datetime) and not value.tzinfo:
        return value.replace(tzinfo=timezone.utc)
    return value


def _node_ids(count: int) -> list[str]:
    return [str(uuidlib.uuid4()) for _ in range(count)]


def workbench_node(study: str, node: str, index: int, previous: str | None, *, older: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """One node as the webserver of 447db39c5455 (or older) wrote it into ``projects.workbench``."""
    data: dict[str, Any] = {
        "key": SERVICE[0],
        "version": SERVICE[1],
        "label": f"sleeper {index} «ü» | [b]",
        "progress": [100, 33.30, 0][index % 3],
        "thumbnail": "",
        "inputs": {"input_2": index + 1, "input_3": index % 2 == 0, "input_4": None},
        "inputsRequired": ["input_2"],
        "inputsUnits": {"input_2": "s"} if index % 2 else {},
        "inputAccess": {"input_2": "ReadAndWrite"},
        "inputNodes": [previous] if previous else [],
        "outputs": {
            "output_1": {"store": 0, "path": f"{study}/{node}/single_number.txt", "eTag": f"{index:032x}"},
            "output_2": 1.10 + index,
        },
        "runHash": f"{index:064x}",
        "state": {"currentStatus": ["SUCCESS", "FAILED", "NOT_STARTED"][index % 3], "modified": index % 2 == 1,
                  "dependencies": [previous] if previous else []},
        "bootOptions": {"boot_mode": "default"} if index == 0 else None,
    }
    if previous:
        data["inputs"]["input_1"] = {"nodeUuid": previous, "output": "output_1"}
    if index == 1:
        data["position"] = {"x": 150, "y": 75}  # older webservers kept it in the node; 201aa37f4d9a ignores it
    if older:
        data["outputNodes"] = []
        data["parent"] = None
    data.update(extra)
    return data


def node_row(study: str, node: str, data: dict[str, Any], ui: dict[str, Any], created: datetime) -> dict[str, Any]:
    """The same node as a ``projects_nodes`` row."""
    return {
        "project_uuid": study, "node_id": node, "key": data["key"], "version": data["version"],
        "label": data["label"], "progress": data.get("progress"), "thumbnail": data.get("thumbnail"),
        "input_access": data.get("inputAccess"), "input_nodes": data.get("inputNodes"), "inputs": data.get("inputs"),
        "inputs_required": data.get("inputsRequired"), "inputs_units": data.get("inputsUnits"),
        "outputs": data.get("outputs"), "run_hash": data.get("runHash"), "state": data.get("state"),
        "boot_options": data.get("bootOptions"), "output_nodes": data.get("outputNodes"), "parent": data.get("parent"),
        "required_resources": {"cpu": {"limit": 0.1, "reservation": 0.1}}, "ui": ui,
        "created": created, "modified": created,
    }


async def seed_study(
    db: DatabaseSettings | asyncpg.Connection,
    identities: Identities,
    owner: str,
    *,
    name: str = "a study",
    nodes: int = 3,
    children: int = 0,
    collaborator: str | None = None,
    shared_group: str | None = None,
    workspace: bool = False,
    trashed_by: str | None = None,
    bucket: str = "simcore",
    workbench_extra: dict[str, Any] | None = None,
    offset: int = 0,
    nodes_table: bool = True,
) -> Study:
    """A study with ``nodes`` nodes, files (one file per node, a directory entry, a soft link), and
    ``children`` hidden job projects in a chain below its first node (each with one node and a
    file). ``collaborator``: a user who uploaded one of the files and shares the study;
    ``shared_group``: a standard group with read access; ``workspace``: the study is in a shared
    workspace of its owner; ``trashed_by``: the study was trashed by that user;
    ``workbench_extra``: keys added to the first node (e.g. one a revision does not accept);
    ``nodes_table``: at a revision with ``projects.workbench``, also write the nodes into
    ``projects_nodes`` (as the webserver of 447db39c5455 did; off: a study whose nodes are only in
    the workbench JSON, for 201aa37f4d9a to insert)."""
    conn = db if isinstance(db, asyncpg.Connection) else await connect(db)
    try:
        async with conn.transaction():
            shape = await Shape.of(conn)
            when = BASE_TIME + timedelta(minutes=offset)
            study = await _project(
                conn, shape, identities, identities.users[owner], name=name, nodes=nodes, when=when, bucket=bucket,
                collaborator=identities.users[collaborator] if collaborator else None,
                shared_gid=identities.groups[shared_group] if shared_group else None,
                workspace=workspace, trashed_by=identities.users[trashed_by] if trashed_by else None,
                workbench_extra=workbench_extra or {}, nodes_table=nodes_table,
            )
            await insert(conn, shape, "projects_metadata", {
                "project_uuid": study.uuid, "custom": {"origin": "seed", "offset": offset},
                "created": when, "modified": when,
            })
            await insert(conn, shape, "projects_extensions", {
                "project_uuid": study.uuid, "allow_guests_to_push_states_and_output_ports": True})
            await insert(conn, shape, "projects_networks", {
                "project_uuid": study.uuid, "networks_with_aliases": {"net-1": {study.nodes[0]: "sleeper-0"}}})
            parent, parent_node = study.uuid, study.nodes[0]
            for depth in range(children):
                child = await _project(
                    conn, shape, identities, identities.users[owner], name=f"solvers/sleeper/releases/2.1.6/jobs/{depth}",
                    nodes=1, when=when + timedelta(seconds=depth + 1), bucket=bucket, hidden=True,
                )
                await insert(conn, shape, "projects_metadata", {
                    "project_uuid": child.uuid, "custom": {"job": depth},
                    "parent_project_uuid": parent, "parent_node_id": parent_node,
                    "root_parent_project_uuid": study.uuid, "root_parent_node_id": study.nodes[0],
                    "created": when, "modified": when,
                })
                await insert(conn, shape, "projects_to_jobs", {
                    "project_uuid": child.uuid, "storage_assets_deleted": False,
                    "job_parent_resource_name": "solvers/simcore%2Fservices%2Fcomp%2Fitis%2Fsleeper/releases/2.1.6",
                })
                study.children.append(child.uuid)
                study.files += child.files
                parent, parent_node = child.uuid, child.nodes[0]
            return study
    finally:
        if not isinstance(db, asyncpg.Connection):
            await conn.close()


async def _project(
    conn: asyncpg.Connection, shape: Shape, identities: Identities, owner: User, *, name: str, nodes: int,
    when: datetime, bucket: str, hidden: bool = False, collaborator: User | None = None, shared_gid: int | None = None,
    workspace: bool = False, trashed_by: User | None = None, workbench_extra: dict[str, Any] | None = None,
    nodes_table: bool = True,
) -> Study:
    project = str(uuidlib.uuid4())
    node_ids = _node_ids(nodes)
    older = shape.has("projects_nodes", "output_nodes")
    workbench = {
        node: workbench_node(project, node, i, node_ids[i - 1] if i else None, older=older,
                             extra=(workbench_extra or {}) if i == 0 else {})
        for i, node in enumerate(node_ids)
    }
    positions = {node: {"position": {"x": 100 * i, "y": 40 + i}} for i, node in enumerate(node_ids)}
    access = {str(owner.primary_gid): {"read": True, "write": True, "delete": True}}
    if collaborator:
        access[str(collaborator.primary_gid)] = {"read": True, "write": True, "delete": False}
    if shared_gid:
        access[str(shared_gid)] = {"read": True, "write": False, "delete": False}
    ui: dict[str, Any] = {"mode": "workbench", "slideshow": {}, "currentNodeId": node_ids[0],
                          "annotations": {"a1": {"type": "note", "color": "#FFFF01", "attributes": {"text": "x"}}}}
    if not shape.has("projects_nodes", "ui"):
        ui["workbench"] = positions
    workspace_id = None
    if workspace:
        workspace_id = await conn.fetchval(
            "INSERT INTO workspaces (name, description, owner_primary_gid, product_name) VALUES ($1, 'shared', $2, $3) "
            "RETURNING workspace_id", f"ws of {owner.name}", owner.primary_gid, identities.product,
        )
    await insert(conn, shape, "projects", {
        "uuid": project, "name": name, "description": f"{name}: seeded | <b>not markup</b>", "thumbnail": "",
        "type": "STANDARD", "prj_owner": owner.id, "creation_date": when.replace(tzinfo=None),
        "last_change_date": (when + timedelta(hours=1)).replace(tzinfo=None), "workbench": workbench,
        "published": False, "access_rights": access, "dev": {}, "classifiers": [], "ui": ui,
        "quality": {"enabled": True, "tsr_target": {}}, "hidden": hidden, "workspace_id": workspace_id,
        "trashed": when + timedelta(days=1) if trashed_by else None, "trashed_explicitly": bool(trashed_by),
        "trashed_by": trashed_by.id if trashed_by else None, "product_name": identities.product,
    })
    if not shape.has("projects", "product_name") and shape.has("projects_to_products"):
        await insert(conn, shape, "projects_to_products", {"project_uuid": project, "product_name": identities.product})
    if shape.has("projects_nodes") and (nodes_table or not shape.has("projects", "workbench")):
        for node, data in workbench.items():
            await insert(conn, shape, "projects_nodes", node_row(project, node, data, positions[node], when))
    # the projects trigger gave the owner's group its row; the webserver added the others
    for gid, rights in access.items():
        if int(gid) != owner.primary_gid:
            await insert(conn, shape, "project_to_groups", {"project_uuid": project, "gid": int(gid), **rights})
    files = await _files(conn, shape, project, node_ids, owner, collaborator, bucket, when)
    return Study(uuid=project, owner=owner, nodes=node_ids, files=files)


async def _files(
    conn: asyncpg.Connection, shape: Shape, project: str, nodes: list[str], owner: User, collaborator: User | None,
    bucket: str, when: datetime,
) -> list[str]:
    text_dates = shape.types.get(("file_meta_data", "created_at")) == "character varying"
    text_user = shape.types.get(("file_meta_data", "user_id")) == "character varying"
    made: list[str] = []

    def date(moment: datetime, naive: bool) -> Any:
        if not text_dates:
            return moment
        return moment.replace(tzinfo=None).isoformat() if naive else moment.isoformat()

    async def file_row(file_id: str, node: str, uploader: User, size: int | None, **extra: Any) -> None:
        i = len(made)
        await insert(conn, shape, "file_meta_data", {
            "file_id": file_id, "location_id": "0", "location": "simcore.s3", "bucket_name": bucket,
            "object_name": extra.pop("object_name", file_id), "project_id": project, "node_id": node,
            "user_id": str(uploader.id) if text_user else uploader.id,
            "created_at": date(when + timedelta(seconds=i), naive=i % 2 == 1),
            "last_modified": date(when + timedelta(seconds=i, microseconds=1), naive=i % 2 == 0),
            "file_size": size, "entity_tag": None if size is None else f'"{i:032x}"',
            "is_soft_link": False, "is_directory": False, "upload_expires_at": None, "upload_id": None,
            "sha256_checksum": None if size is None else f"{i:064x}", **extra,
        })
        made.append(file_id)

    for i, node in enumerate(nodes):
        uploader = collaborator if collaborator and i == 1 else owner
        await file_row(f"{project}/{node}/single_number.txt", node, uploader, 10 + i)
    await file_row(f"{project}/{nodes[0]}/outputs", nodes[0], owner, None, is_directory=True)
    target = made[0]
    await file_row(f"{project}/{nodes[-1]}/link_to_number.txt", nodes[-1], owner, 10, is_soft_link=True,
                   object_name=target)
    return made


DIRECTORY_PARTS = 2  # objects a seeded directory entry's prefix holds in storage


async def stored_keys(db: DatabaseSettings, projects: list[str]) -> list[str]:
    """The S3 keys the file rows of ``projects`` stand for, as a deployment's storage holds them: a
    file's object name, :data:`DIRECTORY_PARTS` objects under a directory entry's prefix, nothing for a
    soft link (its target is another row's object)."""
    conn = await connect(db)
    try:
        rows = await conn.fetch("SELECT object_name, is_directory, is_soft_link FROM file_meta_data "
                                "WHERE project_id = ANY($1::text[]) ORDER BY object_name", projects)
    finally:
        await conn.close()
    keys: list[str] = []
    for row in rows:
        if row["is_directory"]:
            keys += [f"{row['object_name']}/part-{i}.dat" for i in range(DIRECTORY_PARTS)]
        elif not row["is_soft_link"]:
            keys.append(row["object_name"])
    return keys
