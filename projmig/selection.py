"""What a configuration means: which source projects it moves, and under which destination ids.

Decided in one place, by :func:`select_projects`, for every command: the preflight of a migration
(and so of ``projmig plan``, ``verify`` and ``cleanup``) and rollback, which is right only while it
finds exactly the projects and ids the migration wrote.

- **roots**: the projects the configuration names (``choices.project_uuid(s)``), then, with
  ``choices.source_owner_user_id``, every non-trashed, non-hidden project of that source user;
- **hidden children**: with ``choices.include_hidden``, every hidden job project whose
  ``projects_metadata`` parent or root parent is in the graph, recursively;
- **destination ids**: the source's (``uuid_policy=keep``), or under ``uuid_policy=new`` each root's
  copy namespace (:func:`copy_namespaces`: the destination's identity, the root, ``copy_label``) and
  in it a new uuid for the root and each of its hidden children.

The graph of a selection is read with :func:`read_selection` (exactly its projects) and its plan is
:func:`plan_selection` (the pure :func:`projmig.plan.build_plan` with the selection's namespaces).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .graph import (
    ProjectGraph,
    SourceState,
    database_identity,
    hidden_descendants,
    project_owners,
    projects_of_active_users,
    projects_of_user,
    read_graph,
)
from .plan import DestinationFacts, MigrationPlan, build_plan
from .remap import copy_namespace, destination_identity, legacy_destination_identity, new_project_uuid, root_of
from .schema import Reflections
from .settings import MigrationSettings, UuidPolicy

Lister = Callable[[str], Awaitable[dict[str, tuple[int, str]]]]  # prefix -> {key: (size, etag)} in the source


class Selection(BaseModel):
    """The source projects a configuration moves and the destination uuid of each."""

    roots: list[str]  # the projects asked for (owner_user_id expanded), that exist in the source
    children: list[tuple[str, str]] = Field(default_factory=list)  # (hidden child, its parent), parents first
    include_hidden: bool = False
    created: dict[str, datetime] = Field(default_factory=dict)  # source uuid -> its creation_date
    namespaces: dict[str, str] | None = None  # uuid_policy=new: root -> namespace of its copy's ids
    new_uuids: dict[str, str] = Field(default_factory=dict)  # uuid_policy=new: source -> destination uuid
    owners: dict[str, int | None] = Field(default_factory=dict)  # source uuid -> its owner (prj_owner)
    skipped: dict[str, str] = Field(default_factory=dict)  # roots left out (choices.skip_unmatched) -> why

    def without(self, skipped: dict[str, str]) -> Selection:
        """The selection without these roots (and their hidden children): root -> why, kept to be reported."""
        children = [(c, p) for c, p in self.children if self.root_of(c) not in skipped]
        kept = set(self.roots) - skipped.keys() | {c for c, _ in children}
        return self.model_copy(update={
            "roots": [r for r in self.roots if r not in skipped], "children": children,
            "skipped": {**self.skipped, **skipped},
            "new_uuids": {u: n for u, n in self.new_uuids.items() if u in kept},
            "namespaces": {r: n for r, n in self.namespaces.items() if r in kept} if self.namespaces is not None else None,
        })

    def root_of(self, uuid: str) -> str:
        return root_of(uuid, {**dict(self.children), **{r: None for r in self.roots}})

    @property
    def projects(self) -> list[str]:
        """Roots and hidden children (source uuids), parents before their children."""
        return self.roots + [child for child, _ in self.children]

    def destination_uuid(self, uuid: str) -> str:
        return self.new_uuids.get(uuid, uuid)

    @property
    def destination_uuids(self) -> list[str]:
        return [self.destination_uuid(u) for u in self.projects]

    @property
    def destination_prefixes(self) -> list[str]:
        """Where each project's objects are in the destination bucket."""
        return [f"{u}/" for u in self.destination_uuids]


async def select_projects(
    settings: MigrationSettings, src: AsyncConnection, dst: AsyncConnection, problems: list[str]
) -> Selection:
    """The selection of ``settings`` in these databases (read-only); a root that does not exist, or an
    owner without projects, is a line in ``problems`` and left out."""
    roots = [str(u) for u in settings.project_uuids]
    for owner in settings.choices.owners:
        owned = await projects_of_user(src, owner)
        if not owned:
            problems.append(f"source user {owner} owns no projects (choices.source_owner_user_ids, --owner)")
        roots += [u for u in owned if u not in roots]
    if settings.choices.all_users:
        listed = set(roots)
        roots += [u for u in await projects_of_active_users(src) if u not in listed]
    created = {u: at for u, (at, _) in (await creation_dates(src, roots)).items()}
    problems += [f"source project {u} does not exist (choices.project_uuid)" for u in roots if u not in created]
    roots = [u for u in roots if u in created]
    include_hidden = settings.choices.include_hidden
    children = await hidden_descendants(src, roots) if include_hidden and roots else []
    created.update({u: at for u, (at, _) in (await creation_dates(src, [c for c, _ in children])).items()})
    selection = Selection(roots=roots, children=children, include_hidden=include_hidden, created=created,
                          owners=await project_owners(src, roots + [c for c, _ in children]))
    if settings.choices.uuid_policy == UuidPolicy.NEW and roots:
        selection.namespaces = await copy_namespaces(dst, settings, roots)
        selection.new_uuids = _copy_ids(selection.namespaces, children)
    return selection


async def read_selection(
    conn: AsyncConnection, lister: Lister, selection: Selection, *, source: AsyncConnection | None = None,
    states: dict[str, SourceState] | None = None, known: Reflections | None = None,
) -> ProjectGraph:
    """The graph of exactly the selected projects (a hidden child made since is left for a rerun).
    ``source``/``states``: when ``conn`` holds staged rows (:func:`projmig.graph.read_graph`)."""
    return await read_graph(
        conn, lister, selection.roots, include_hidden=selection.include_hidden, only=selection.projects,
        source=source, states=states, known=known,
    )


def plan_selection(
    graph: ProjectGraph, selection: Selection, facts: DestinationFacts, drift_notes: Collection[str] = ()
) -> MigrationPlan:
    """The plan of a selection's graph: its projects under the selection's destination ids."""
    plan = build_plan(graph, facts, selection.namespaces)
    plan.schema_drift = list(drift_notes)
    return plan


async def copy_namespaces(dst: AsyncConnection, settings: MigrationSettings, roots: list[str]) -> dict[str, str]:
    """uuid_policy=new: each root's namespace, from the destination's identity (its PostgreSQL
    cluster, database and bucket: the same however the configuration names it). A root whose copy
    the destination holds under the namespace earlier versions derived from the configuration's
    spelling (host:port/database or the DSN's reference), and not under the new one, keeps that one:
    its copy is resumed (or rolled back), not made again."""
    bucket, label = settings.destination.s3.bucket, settings.choices.copy_label
    where = destination_identity(*await database_identity(dst), bucket)
    legacy = legacy_destination_identity(settings.destination.db.describe(), bucket)
    namespaces = {root: copy_namespace(where, root, label) for root in roots}
    earlier = {root: copy_namespace(legacy, root, label) for root in roots}
    ids = {new_project_uuid(ns, root): root for ns_of in (namespaces, earlier) for root, ns in ns_of.items()}
    there = {r[0] for r in await dst.execute(text("SELECT uuid FROM projects WHERE uuid = ANY(:u)"), {"u": list(ids)})}
    for root in roots:
        if new_project_uuid(namespaces[root], root) not in there and new_project_uuid(earlier[root], root) in there:
            namespaces[root] = earlier[root]
    return namespaces


def _copy_ids(namespaces: dict[str, str], children: list[tuple[str, str]]) -> dict[str, str]:
    """uuid_policy=new: every project's new uuid (a hidden child's from its root's namespace)."""
    parents: dict[str, str | None] = {root: None for root in namespaces}
    parents.update(dict(children))
    return {uuid: new_project_uuid(namespaces[root_of(uuid, parents)], uuid) for uuid in parents}


async def creation_dates(conn: AsyncConnection, uuids: list[str]) -> dict[str, tuple[datetime, str]]:
    """uuid -> (creation_date, name) of those of ``uuids`` that are projects in this database."""
    if not uuids:
        return {}
    rows = await conn.execute(
        text("SELECT uuid, creation_date, name FROM projects WHERE uuid = ANY(:u)"), {"u": uuids}
    )
    return {uuid: (created, name) for uuid, created, name in rows}
