"""Fresh ids for a copy (``choices.uuid_policy = "new"``): every project and node of the graph gets a
new uuid, and every reference to an old one is rewritten, so the copy can sit next to its original
(even in the same deployment) and never points back at it.

Deterministic: a new id is ``uuid5(namespace, old id)``, and the namespace of a root project is
derived from the destination, the root's source uuid and ``choices.copy_label``. Rerunning the same
migration computes the same ids and resumes (an earlier run's rows and objects are found again);
a second, deliberate copy into the same destination needs another ``copy_label``. The destination
is named by what it is, not by how a configuration spells it (:func:`destination_identity`: the
PostgreSQL cluster's ``system_identifier``, the database name, the bucket name); copies made when it
was named by the configuration's host:port/database (:func:`legacy_destination_identity`) are found
by the preflight and kept (``projmig.selection.copy_namespaces``).

What is rewritten: any uuid in any column of any row the plan inserts, and in the S3 keys (in a JSON
column, in each string of it, keys too; the JSON text is otherwise kept to the byte). The ids
are random uuid4s, so a string holding one of them is a reference to it, wherever it sits: the
``projects.uuid``/``project_uuid``/``project_id`` keys, ``projects_nodes.node_id``, node ``inputs``
(port links ``{"nodeUuid": ...}``, file links ``{"store": 0, "path": "P/N/..."}``), ``outputs``,
``input_nodes``, ``projects.ui`` (workbench keyed by node id), ``projects_metadata`` parent and
root-parent links, ``projects_to_jobs.job_parent_resource_name`` (ends with the job's uuid),
``projects_networks`` aliases keyed by node id, and ``file_meta_data.file_id/object_name/node_id``.
A node id is resolved in the project named just before it in the same string (``P/N/...``), else
in the row's own project, else in the one project of the graph that has it. A uuid that names
nothing in the graph is left as it is (a ``projects_metadata`` link to a project outside the graph
is reported in the plan's warnings).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid5

from .graph import ProjectGraph, Row

# projmig's own root namespace: fixed forever, or reruns would stop finding their earlier output
PROJMIG_NAMESPACE = UUID("5b0f3c7e-9d2a-5c41-8e6f-70726f6a6d69")

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')  # a string literal (key or value) in JSON text

_UNKNOWN = "?"  # context after a uuid that is not a project of the graph


def copy_namespace(destination: str, source_project: str, copy_label: str = "") -> str:
    """The namespace of the copy of one root project (and its hidden children).

    ``destination``: the destination deployment as :func:`destination_identity` names it."""
    text = f"projmig copy\ndestination={destination}\nsource-project={source_project.lower()}\nlabel={copy_label}"
    return str(uuid5(PROJMIG_NAMESPACE, text))


def destination_identity(system_identifier: str, database: str, bucket: str) -> str:
    """The destination as the namespace sees it: the PostgreSQL cluster (``pg_control_system()``'s
    ``system_identifier``, the same through any host name, address, port or DSN), the database in it,
    and the bucket."""
    return f"postgresql-system={system_identifier} database={database} s3://{bucket}"


def legacy_destination_identity(db: str, bucket: str) -> str:
    """The destination as earlier versions named it: as the configuration spelled the database
    (``DatabaseSettings.describe()``: host:port/name, or the DSN's reference) and the bucket."""
    return f"{db} s3://{bucket}"


def new_project_uuid(namespace: str, old: str) -> str:
    return str(uuid5(UUID(namespace), f"project {old.lower()}"))


def new_node_id(namespace: str, project: str, node: str) -> str:
    return str(uuid5(UUID(namespace), f"node {project.lower()}/{node.lower()}"))


@dataclass
class IdMap:
    """Old id -> new id for the projects and nodes of a graph."""

    projects: dict[str, str] = field(default_factory=dict)
    nodes: dict[tuple[str, str], str] = field(default_factory=dict)  # (old project, old node) -> new node
    _node_projects: dict[str, list[str]] = field(default_factory=dict)  # old node -> old projects having it

    @classmethod
    def for_graph(cls, graph: ProjectGraph, namespaces: dict[str, str]) -> IdMap:
        """``namespaces``: root project (source uuid) -> its copy namespace."""
        ids = cls()
        parents = {p.uuid: p.parent_uuid for p in graph.projects}
        for project in graph.projects:
            root = root_of(project.uuid, parents)
            namespace = namespaces[root]
            ids.projects[project.uuid.lower()] = new_project_uuid(namespace, project.uuid)
            for row in project.rows.get("projects_nodes", []):
                node = str(row["node_id"]).lower()
                ids.nodes[(project.uuid.lower(), node)] = new_node_id(namespace, project.uuid, node)
                ids._node_projects.setdefault(node, []).append(project.uuid.lower())
        return ids

    def project(self, old: str) -> str:
        return self.projects.get(old.lower(), old)

    def _node(self, project: str | None, node: str) -> str | None:
        if project is not None:
            return self.nodes.get((project, node))
        owners = self._node_projects.get(node, [])
        return self.nodes[(owners[0], node)] if len(owners) == 1 else None

    def text(self, value: str, project: str | None = None) -> str:
        """``value`` with every uuid of the graph replaced; ``project``: the row's own (old) project."""
        own = project.lower() if project else None
        context: str | None = None  # the project named last in this string

        def replace(match: re.Match[str]) -> str:
            nonlocal context
            old = match.group(0).lower()
            if old in self.projects:
                context = old
                return self.projects[old]
            if context is None:  # a bare node id: the row's project, else the one project that has it
                new = self._node(own, old) or self._node(None, old)
                if new is None:
                    context = _UNKNOWN  # e.g. "{project outside the graph}/{its node}/...": keep it all
            else:  # after a project: one of its nodes (a file name that is a uuid stays as it is)
                new = self._node(context, old) if context != _UNKNOWN else None
            return match.group(0) if new is None else new

        return UUID_RE.sub(replace, value)

    def value(self, value: Any, project: str | None = None) -> Any:
        """A column value rewritten: a string, or each string of an array."""
        if isinstance(value, str):
            return self.text(value, project)
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v, project) for v in value)
        return value

    def json_text(self, value: str, project: str | None = None) -> str:
        """JSON text (a json/jsonb column as PostgreSQL writes it) with each string literal, keys too,
        rewritten on its own (as :meth:`text` would rewrite it decoded); numbers and everything else
        keep their exact text."""

        def rewrite(match: re.Match[str]) -> str:
            literal = match.group(0)
            if not UUID_RE.search(literal):
                return literal
            old = json.loads(literal)
            new = self.text(old, project)
            return literal if new == old else json.dumps(new, ensure_ascii=False)

        return JSON_STRING_RE.sub(rewrite, value)

    def row(self, row: Row, project: str, json_columns: frozenset[str] | set[str] = frozenset()) -> Row:
        """``json_columns``: the row's columns that hold JSON text."""
        return {
            column: self.json_text(v, project) if column in json_columns and isinstance(v, str) else self.value(v, project)
            for column, v in row.items()
        }

    def key(self, key: str) -> str:
        """An S3 key or file id (``{project}/{node}/...``)."""
        return self.text(key)


def root_of(uuid: str, parents: dict[str, str | None]) -> str:
    seen = {uuid}
    while (parent := parents.get(uuid)) is not None and parent in parents and parent not in seen:
        seen.add(parent)
        uuid = parent
    return uuid


def outside_links(rows: dict[str, list[Row]], ids: IdMap) -> list[str]:
    """``projects_metadata`` links to projects the copy does not include (kept as they are)."""
    found = []
    for row in rows.get("projects_metadata", []):
        for column in ("parent_project_uuid", "root_parent_project_uuid"):
            target = row.get(column)
            if target and target.lower() not in ids.projects:
                found.append(
                    f"projects_metadata of {row['project_uuid']}: {column} {target} is not part of the copy; "
                    "the link still points at it"
                )
    return found
