"""Where a migrated project lands in its owner's account: a folder (``choices.into_folder``, and with
``choices.keep_folders`` the owner's own folder tree of the source under it) and the owner's tags
(when owners are matched to their own accounts: ``choices.match_users``/``user_map``).

- **Read from the source** (:func:`read_placements`): a project's private folder chain (the folder its
  owner put it in, up to the top; a project in a shared workspace has none: it lands in
  ``into_folder``, and the plan says so) and the tags its owner's primary group holds that are
  linked to it.
- **Made in the destination** (:func:`place`), inside the project's insert transaction: each folder
  of the path found (same owner, product, parent and name, not trashed) or created, each tag found
  (same name, held by the owner's primary group) or created with the owner's full rights, then the
  project linked to both. Each find-or-create holds an advisory lock of its own for the transaction,
  so two projects of one owner inserted at once make one folder, never two; a folder or tag made by
  projmig is recorded in ``projmig.created_folders``/``projmig.created_tags`` (with the insert's
  record: :mod:`projmig.insert`), so that rollback removes only what projmig made.
- **Read back** (:func:`read_placed`) for ``projmig verify``; **undone** (:func:`unplace`) by rollback.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .choices import RunChoices

FOLDERS_TABLE = "projmig.created_folders"
TAGS_TABLE = "projmig.created_tags"
PLACEMENT_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {FOLDERS_TABLE} (
        folder_id bigint PRIMARY KEY, name text NOT NULL, parent_folder_id bigint, user_id bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""",
    f"""CREATE TABLE IF NOT EXISTS {TAGS_TABLE} (
        tag_id bigint PRIMARY KEY, name text NOT NULL, group_id bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""",
)
LOCK_SPACE = 0x706D6970  # two-key advisory locks of the find-or-creates: apart from the others of projmig


class TagSpec(BaseModel):
    name: str
    description: str | None = None
    color: str
    priority: int | None = None


class Placement(BaseModel):
    """Where one project lands in its owner's account."""

    folder: list[str] = Field(default_factory=list)  # folder names from the top ([]: the account's root, or into_folder)
    tags: list[TagSpec] = Field(default_factory=list)
    note: str | None = None  # what the report says of it (e.g. from a shared workspace)

    def path(self, into_folder: str | None) -> list[str]:
        return ([into_folder] if into_folder else []) + self.folder


async def placements_of(
    conn: AsyncConnection, roots: dict[str, tuple[int | None, int | None]], choices: RunChoices,
) -> dict[str, Placement]:
    """Where each root lands (``roots``: root -> (its source owner, their primary group)), as the
    choices ask: a folder (``into_folder``, ``keep_folders``), its owner's tags (owners matched)."""
    if not (choices.into_folder or choices.keep_folders or choices.matches_users):
        return {}
    owners = {root: (owner, gid) for root, (owner, gid) in roots.items() if owner is not None}
    return await read_placements(conn, owners, keep_folders=choices.keep_folders, tags=choices.matches_users)


async def read_placements(
    conn: AsyncConnection, owners: dict[str, tuple[int, int | None]], *, keep_folders: bool, tags: bool,
) -> dict[str, Placement]:
    """project uuid -> its placement as its source owner has it (``owners``: project -> (owner id,
    owner's primary group))."""
    placements: dict[str, Placement] = {}
    for project, (owner, owner_gid) in owners.items():
        placement = Placement()
        if keep_folders:
            workspace = await conn.scalar(text("SELECT workspace_id FROM projects WHERE uuid = :p"), {"p": project})
            if workspace is not None:
                placement.note = f"project {project} is in a shared workspace of the source: placed without its folder"
            else:
                chain = await conn.execute(text(
                    "WITH RECURSIVE chain AS ("
                    "  SELECT f.folder_id, f.name, f.parent_folder_id, 0 AS depth FROM projects_to_folders l "
                    "  JOIN folders_v2 f ON f.folder_id = l.folder_id "
                    "  WHERE l.project_uuid = :p AND l.user_id = :u AND f.workspace_id IS NULL AND f.trashed IS NULL"
                    "  UNION ALL SELECT f.folder_id, f.name, f.parent_folder_id, c.depth + 1 FROM folders_v2 f "
                    "  JOIN chain c ON f.folder_id = c.parent_folder_id WHERE c.depth < 64"
                    ") SELECT name FROM chain ORDER BY depth DESC"), {"p": project, "u": owner})
                placement.folder = [r[0] for r in chain]
        if tags and owner_gid is not None:
            found = await conn.execute(text(
                "SELECT t.name, t.description, t.color, t.priority FROM projects_tags pt JOIN tags t ON t.id = pt.tag_id "
                "JOIN tags_access_rights a ON a.tag_id = t.id AND a.group_id = :g "
                "WHERE pt.project_uuid_for_rut = :p ORDER BY t.name, t.id"), {"p": project, "g": owner_gid})
            placement.tags = [TagSpec(name=r[0], description=r[1], color=r[2], priority=r[3]) for r in found]
        placements[project] = placement
    return placements


async def place(
    conn: AsyncConnection, project: str, placement: Placement, *, into_folder: str | None, owner: int, owner_gid: int,
    product: str,
) -> None:
    """Link the (just inserted) ``project`` to its folder and tags in its owner's account, finding or
    making each (see the module), inside the caller's transaction."""
    parent: int | None = None
    for name in placement.path(into_folder):
        parent = await _folder(conn, name, parent, owner, owner_gid, product)
    if parent is not None:
        await conn.execute(text(
            "INSERT INTO projects_to_folders (project_uuid, folder_id, user_id) VALUES (:p, :f, :u) ON CONFLICT DO NOTHING"),
            {"p": project, "f": parent, "u": owner})
    for tag in sorted(placement.tags, key=lambda t: t.name):  # (locks in one order: no deadlock between projects)
        tag_id = await _tag(conn, tag, owner_gid)
        await conn.execute(text(
            "INSERT INTO projects_tags (project_id, tag_id, project_uuid_for_rut) "
            "SELECT id, :t, uuid FROM projects WHERE uuid = :p ON CONFLICT DO NOTHING"), {"p": project, "t": tag_id})


async def _lock(conn: AsyncConnection, key: str) -> None:
    await conn.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))"), {"space": LOCK_SPACE, "key": key})


async def _folder(conn: AsyncConnection, name: str, parent: int | None, owner: int, owner_gid: int, product: str) -> int:
    await _lock(conn, f"folder\x1f{owner}\x1f{product}\x1f{parent}\x1f{name}")
    found = await conn.scalar(text(
        "SELECT folder_id FROM folders_v2 WHERE user_id = :u AND product_name = :p AND workspace_id IS NULL "
        "AND trashed IS NULL AND name = :n AND parent_folder_id IS NOT DISTINCT FROM CAST(:parent AS bigint) "
        "ORDER BY folder_id LIMIT 1"), {"u": owner, "p": product, "n": name, "parent": parent})
    if found is not None:
        return int(found)
    made = int(await conn.scalar(text(
        "INSERT INTO folders_v2 (name, parent_folder_id, product_name, user_id, created_by_gid) "
        "VALUES (:n, :parent, :p, :u, :g) RETURNING folder_id"),
        {"n": name, "parent": parent, "p": product, "u": owner, "g": owner_gid}))
    await conn.execute(text(f"INSERT INTO {FOLDERS_TABLE} (folder_id, name, parent_folder_id, user_id) "
                            "VALUES (:f, :n, :parent, :u)"), {"f": made, "n": name, "parent": parent, "u": owner})
    return made


async def _tag(conn: AsyncConnection, tag: TagSpec, owner_gid: int) -> int:
    await _lock(conn, f"tag\x1f{owner_gid}\x1f{tag.name}")
    found = await conn.scalar(text(
        "SELECT t.id FROM tags t JOIN tags_access_rights a ON a.tag_id = t.id AND a.group_id = :g "
        "WHERE t.name = :n ORDER BY t.id LIMIT 1"), {"g": owner_gid, "n": tag.name})
    if found is not None:
        return int(found)
    made = int(await conn.scalar(text(
        "INSERT INTO tags (name, description, color, priority) VALUES (:n, :d, :c, :p) RETURNING id"),
        {"n": tag.name, "d": tag.description, "c": tag.color, "p": tag.priority}))
    await conn.execute(text(
        "INSERT INTO tags_access_rights (tag_id, group_id, read, write, delete) VALUES (:t, :g, true, true, true)"),
        {"t": made, "g": owner_gid})
    await conn.execute(text(f"INSERT INTO {TAGS_TABLE} (tag_id, name, group_id) VALUES (:t, :n, :g)"),
                       {"t": made, "n": tag.name, "g": owner_gid})
    return made


class Placed(BaseModel):
    """A project's placement as the destination has it (for ``projmig verify``)."""

    folders: list[list[str]] = Field(default_factory=list)  # each folder it is in (of its owner), as a path from the top
    tags: list[str] = Field(default_factory=list)  # the names of the tags linked to it


async def read_placed(conn: AsyncConnection, projects: list[str]) -> dict[str, Placed]:
    """destination project -> its folders (each as the names from the top) and its tags' names."""
    placed = {p: Placed() for p in projects}
    links = await conn.execute(text(
        "WITH RECURSIVE chain AS ("
        "  SELECT l.project_uuid, l.folder_id AS leaf, f.folder_id, f.name, f.parent_folder_id, 0 AS depth "
        "  FROM projects_to_folders l JOIN folders_v2 f ON f.folder_id = l.folder_id WHERE l.project_uuid = ANY(:p)"
        "  UNION ALL SELECT c.project_uuid, c.leaf, f.folder_id, f.name, f.parent_folder_id, c.depth + 1 "
        "  FROM folders_v2 f JOIN chain c ON f.folder_id = c.parent_folder_id WHERE c.depth < 64"
        ") SELECT project_uuid, leaf, name FROM chain ORDER BY project_uuid, leaf, depth DESC"), {"p": projects})
    paths: dict[tuple[str, int], list[str]] = {}
    for project, leaf, name in links:
        paths.setdefault((project, leaf), []).append(name)
    for (project, _), path in paths.items():
        placed[project].folders.append(path)
    tags = await conn.execute(text(
        "SELECT pt.project_uuid_for_rut, t.name FROM projects_tags pt JOIN tags t ON t.id = pt.tag_id "
        "WHERE pt.project_uuid_for_rut = ANY(:p) ORDER BY t.name"), {"p": projects})
    for project, name in tags:
        placed[project].tags.append(name)
    return placed


async def unplace(conn: AsyncConnection, projects: list[str], folders: dict[str, list[str]], tags: dict[str, list[str]]) -> None:
    """Rollback, in its transaction, before the projects go: their links to the folders and tags the
    migration placed them in (``folders``: project -> the path; ``tags``: project -> the names)."""
    for project in projects:
        placed = (await read_placed(conn, [project]))[project]
        if folders.get(project) and folders[project] in placed.folders:
            await conn.execute(text(
                "DELETE FROM projects_to_folders WHERE project_uuid = :p AND folder_id IN ("
                "  SELECT l.folder_id FROM projects_to_folders l WHERE l.project_uuid = :p)"), {"p": project})
        if tags.get(project):
            await conn.execute(text(
                "DELETE FROM projects_tags pt USING tags t WHERE pt.tag_id = t.id AND pt.project_uuid_for_rut = :p "
                "AND t.name = ANY(:n)"), {"p": project, "n": tags[project]})


async def prune_created(conn: AsyncConnection) -> tuple[int, int]:
    """Rollback, in its transaction, after the projects went: the folders and tags projmig made that
    nothing uses any more (no project, no subfolder; no project linked) and that are as made (name,
    parent), removed with their records. Returns (folders, tags) removed."""
    if not await conn.scalar(text(f"SELECT to_regclass('{FOLDERS_TABLE}') IS NOT NULL")):
        return 0, 0
    removed_folders = 0
    while True:  # leaves first, up the tree
        gone = await conn.execute(text(
            f"DELETE FROM folders_v2 f USING {FOLDERS_TABLE} r WHERE f.folder_id = r.folder_id AND f.name = r.name "
            "AND f.parent_folder_id IS NOT DISTINCT FROM r.parent_folder_id "
            "AND NOT EXISTS (SELECT 1 FROM projects_to_folders l WHERE l.folder_id = f.folder_id) "
            "AND NOT EXISTS (SELECT 1 FROM folders_v2 c WHERE c.parent_folder_id = f.folder_id) RETURNING f.folder_id"))
        ids = [r[0] for r in gone]
        if not ids:
            break
        removed_folders += len(ids)
        await conn.execute(text(f"DELETE FROM {FOLDERS_TABLE} WHERE folder_id = ANY(:f)"), {"f": ids})
    gone_tags = await conn.execute(text(
        f"DELETE FROM tags t USING {TAGS_TABLE} r WHERE t.id = r.tag_id AND t.name = r.name "
        "AND NOT EXISTS (SELECT 1 FROM projects_tags pt WHERE pt.tag_id = t.id) RETURNING t.id"))
    tag_ids = [r[0] for r in gone_tags]
    if tag_ids:
        await conn.execute(text(f"DELETE FROM {TAGS_TABLE} WHERE tag_id = ANY(:t)"), {"t": tag_ids})
    # records of folders and tags deleted in the destination since
    await conn.execute(text(f"DELETE FROM {FOLDERS_TABLE} r WHERE NOT EXISTS (SELECT 1 FROM folders_v2 f WHERE f.folder_id = r.folder_id)"))
    await conn.execute(text(f"DELETE FROM {TAGS_TABLE} r WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.id = r.tag_id)"))
    return removed_folders, len(tag_ids)
