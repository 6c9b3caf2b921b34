"""Every column as the source has it. A study is seeded with edge values of every column type the
real schema's project tables use (varchar, varchar[], jsonb, numeric, timestamp, timestamptz,
boolean, bigint, enums): SQL NULL next to JSON ``null``, empty containers, ``""`` next to NULL,
unicode and control characters, a very long text, big and finely scaled numbers, timestamps to the
microsecond in odd time zones. It is migrated through ``projmig migrate`` (a process of its own) and
through the flow, and both databases are then compared in PostgreSQL's own text form (``IS NULL``
and ``::text`` of every column, read here with plain SQL, never through projmig's code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands, insert
from projmig.errors import PreflightError
from projmig.sandbox.sample import SampleProject, SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings

from ..conftest import Simcore
from ..faults.conftest import REPO, prefect_env

pytestmark = pytest.mark.usefixtures("prefect")

LONG_TEXT = "ünï 😀\x01\t" * 40_000  # 320,000 characters, ~520 kB of UTF-8
CONTROL_TEXT = "tab\tnl\ncr\rbell\x07 esc\x1b del\x7f \u2028 \ufeff z\u200dw e\u0301 😀 ' \" \\ %s $1"
RICH_JSON = json.dumps({
    "text": "ü\u0001\t\"\\😀\u2028", "null": None, "empty": {}, "list": [], "blank": "",
    "deep": [[[[{"": ""}]]]], "bool": False,
})[:-1] + ', "big": 123456789012345678901234567890.123456789012345678901, "small": 1e-40, ' \
    '"scale": 1.10, "exp": 1E+3, "neg0": -0.0, "int": 98765432109876543210}'



class Bound(str):
    """A value bound as a query parameter (too long or too awkward for an SQL literal)."""


# table -> [(which row, {column: SQL expression, or a Bound text})]; rows named by what the sample builds
EDGES: dict[str, list[tuple[str, dict[str, str]]]] = {
    "projects": [
        ("root", {
            "type": "'TEMPLATE'", "template_type": "'HYPERTOOL'", "name": Bound(CONTROL_TEXT), "description": "''",
            "thumbnail": "NULL", "dev": "'null'", "quality": "'{\"score\": 1.000, \"tsr\": [1e-7, 2.50]}'",
            "classifiers": "ARRAY['', NULL, 'a,b', 'q\"uote', 'back\\slash', 'ü 😀', '{brace}', ' lead', 'NULL']::varchar[]",
            "published": "true", "trashed": "'2020-02-29 12:34:56.789012+05:45'", "trashed_explicitly": "true",
            "trashed_by": "prj_owner",
        }),
        ("child", {
            "description": Bound(LONG_TEXT), "thumbnail": "''", "classifiers": "'{}'", "ui": "'{\"workbench\": {}}'",
            "dev": "'{}'", "quality": "'[]'", "template_type": "NULL",
        }),
    ],
    "projects_nodes": [
        ("node 0", {c: "NULL" for c in ("input_access", "input_nodes", "inputs", "inputs_required", "inputs_units",
                                        "outputs", "state", "boot_options", "progress", "run_hash")}),
        ("node 1", {**{c: "'null'" for c in ("input_access", "input_nodes", "inputs", "inputs_required", "inputs_units",
                                            "outputs", "state", "boot_options", "ui", "required_resources")},
                    "progress": "'NaN'", "run_hash": "''"}),
        ("node 2", {"input_access": "'{}'", "input_nodes": "'[]'", "inputs": "'{}'", "inputs_required": "'[]'",
                    "inputs_units": "'{}'", "state": "'[]'", "boot_options": "'\"\"'", "progress": "'Infinity'",
                    "key": Bound(CONTROL_TEXT), "created": "'1970-01-01 00:00:00.000001+00'"}),
        ("node 3", {"input_access": "'0'", "input_nodes": "'false'", "inputs": "'\"\"'", "boot_options": "'-0'",
                    "inputs_units": "'\"\\u001f\"'", "progress": "1.10", "run_hash": "'ü x'",
                    "created": "'2024-02-29 23:59:59.999999-09:30'"}),
        ("node 4", {"boot_options": f"'{RICH_JSON}'", "state": "'{\"currentStatus\": \"ÜNKNOWN\"}'",
                    "progress": "123456789012345678901234567890.123456789012345678901234567890",
                    "version": "'1.0.0-ü+build.😀'", "run_hash": "'0123456789abcdef' || repeat('f', 48)"}),
    ],
    "projects_metadata": [
        ("root", {"custom": "'null'", "created": "'2022-06-30 23:59:59.999999-09:30'"}),
        ("child", {"custom": "'{\"n\": 0.1000, \"s\": \"\\u001f\", \"e\": {}}'", "created": "'infinity'"}),
    ],
    "projects_to_jobs": [("child", {"storage_assets_deleted": "true"})],
    "projects_extensions": [("root", {"allow_guests_to_push_states_and_output_ports": "false"})],
    "projects_networks": [("root", {"networks_with_aliases": "'{}'"}),
                          ("child", {"networks_with_aliases": "'{\"nét 😀\": {\"\": \"\"}}'"})],
    "project_to_groups": [("root everyone", {"created": "'2001-01-01 00:00:00.000001+14'",
                                             "modified": "'2001-01-01 00:00:00.5-12'", "delete": "false"})],
    "file_meta_data": [
        ("first file", {"sha256_checksum": "''", "created_at": "'2024-12-31 23:59:59.999999-12'",
                        "last_modified": "'2025-01-01 00:00:00.000001+13'", "location": "''"}),
        ("soft link", {"file_size": "9223372036854775807", "entity_tag": "''", "sha256_checksum": "'ü'"}),
        ("directory", {"file_size": "-1", "entity_tag": "NULL", "location_id": "'0'", "location": "NULL"}),
    ],
}

# what docs/table-rules.md's rules remap (and the destination sets): checked separately below
REMAPPED = {
    "projects": {"id", "prj_owner", "workspace_id", "trashed_by"},
    "projects_nodes": {"project_node_id", "modified"},
    "projects_metadata": {"modified"},
    "project_to_groups": {"gid"},
    "file_meta_data": {"user_id", "bucket_name", "upload_id", "upload_expires_at"},
}
# columns holding ids, rewritten under uuid_policy=new
ID_COLUMNS = {
    "projects": {"uuid", "ui"},
    "projects_nodes": {"node_id", "project_uuid", "inputs", "outputs", "input_nodes"},
    "projects_metadata": {"project_uuid", "parent_project_uuid", "parent_node_id", "root_parent_project_uuid",
                          "root_parent_node_id"},
    "projects_to_jobs": {"project_uuid", "job_parent_resource_name"},
    "projects_extensions": {"project_uuid"},
    "projects_networks": {"project_uuid", "networks_with_aliases"},
    "project_to_groups": {"project_uuid"},
    "file_meta_data": {"file_id", "object_name", "project_id", "node_id"},
}
# a name for each row that holds in both databases, whatever the ids
ROW_NAME = {
    "projects": "{project}",
    "projects_nodes": "{project} || ' / ' || t.label",
    "projects_metadata": "{project}",
    "projects_to_jobs": "{project}",
    "projects_extensions": "{project}",
    "projects_networks": "{project}",
    "project_to_groups": "{project} || ' / ' || (SELECT g.type::text FROM groups g WHERE g.gid = t.gid)",
    "file_meta_data": "{project} || ' / ' || regexp_replace(t.file_id, '^[^/]*/[^/]*/', '')",
}
ROLE = "CASE WHEN p.hidden THEN 'child' ELSE 'root' END"
PROJECT_KEY = {"projects": "uuid", "file_meta_data": "project_id"}


async def seed_edge_values(db: DatabaseSettings, sample: SampleProject) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        async with conn.transaction():
            dates = await conn.fetch("SELECT uuid, creation_date, last_change_date FROM projects")
            root, child = sample.uuid, sample.children[0]
            where = {
                "root": ("project_uuid", root), "child": ("project_uuid", child),
                "first file": ("file_id", sample.file_ids[0]),
                "soft link": ("file_id", next(f for f in sample.file_ids if f.endswith("link_to_first.txt"))),
                "directory": ("file_id", next(f for f in sample.file_ids if f.endswith("/workspace"))),
                **{f"node {i}": ("node_id", node) for i, node in enumerate(sample.node_ids)},
            }
            for table, edits in EDGES.items():
                for row, values in edits:
                    column, key = where[row.removesuffix(" everyone")]
                    column = "uuid" if table == "projects" else column
                    params: list[Any] = [key]
                    sets = []
                    for name, value in values.items():
                        if isinstance(value, Bound):
                            params.append(str(value))
                            value = f"${len(params)}"
                        sets.append(f'"{name}" = {value}')
                    condition = f"{column} = $1"
                    if row.endswith(" everyone"):
                        condition += " AND gid = (SELECT gid FROM groups WHERE type = 'EVERYONE')"
                    status = await conn.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE {condition}", *params)
                    assert status == "UPDATE 1", (table, row, status)
            # the node updates moved last_change_date (trigger): the seeded dates, to the microsecond
            for uuid, _, _ in dates:
                created, changed = (("2021-03-04 05:06:07.123456", "1999-12-31 23:59:59.999999") if uuid == root
                                    else ("2000-02-29 00:00:00.000001", "2000-02-29 00:00:00.000002"))
                await conn.execute(
                    "UPDATE projects SET creation_date = $2::text::timestamp, last_change_date = $3::text::timestamp WHERE uuid = $1",
                    uuid, created, changed,
                )
    finally:
        await conn.close()


async def text_rows(db: DatabaseSettings, uuids: list[str]) -> dict[str, dict[str, dict[str, tuple[bool, str | None]]]]:
    """table -> row name -> column -> (IS NULL, ::text), every column of every project table."""
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1")
        out: dict[str, dict[str, dict[str, tuple[bool, str | None]]]] = {}
        for table, name in ROW_NAME.items():
            columns = [r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = $1 ORDER BY ordinal_position", table)]
            select = ", ".join(f't."{c}" IS NULL AS "{c}?", t."{c}"::text AS "{c}"' for c in columns)
            rows = await conn.fetch(
                f"SELECT {name.format(project=ROLE)} AS row_name, {select} FROM {table} t "
                f"JOIN projects p ON p.uuid = t.{PROJECT_KEY.get(table, 'project_uuid')} WHERE p.uuid = ANY($1::varchar[])",
                uuids,
            )
            out[table] = {r["row_name"]: {c: (r[f"{c}?"], r[c]) for c in columns} for r in rows}
            assert len(out[table]) == len(rows), f"{table}: row names are not unique"
        return out
    finally:
        await conn.close()


async def run_cli(config: dict[str, Any], tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "migrate", "--config", str(cfg)],
        cwd=REPO, env=prefect_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("how, uuid_policy", [
    ("projmig migrate", "keep"), ("flow", "keep"), ("flow", "new"),
    # every table's rows through the insert's binary COPY (taken from COPY_FROM_ROWS rows of one shape on)
    ("flow with COPY", "keep"),
])
async def test_every_column_arrives_as_the_source_has_it(
    simcore: Simcore, tmp_path: Path, how: str, uuid_policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied_tables: list[str] = []
    if how == "flow with COPY":
        monkeypatch.setattr(insert, "COPY_FROM_ROWS", 1)
        real_copy = insert._copy_rows

        async def copy_rows(conn, table, columns, rows):  # the real COPY, noting which tables took it
            copied_tables.append(table.name)
            await real_copy(conn, table, columns, rows)

        monkeypatch.setattr(insert, "_copy_rows", copy_rows)
    sample = await build_sample_project(
        simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
        spec=SampleSpec(nodes=5, files=3, multipart_size=0, directory_objects=2, hidden_children=1,
                        deployment_bound_rows=False, share_with_gids=[simcore.source_ids.everyone_gid]),
    )
    await seed_edge_values(simcore.source_db, sample)
    source = await text_rows(simcore.source_db, sample.all_projects)
    # the seeding did what it says (else the comparison below proves little)
    nodes = source["projects_nodes"]
    assert nodes["root / node 0"]["boot_options"] == (True, None)
    assert nodes["root / node 1"]["boot_options"] == (False, "null")
    assert nodes["root / node 1"]["progress"] == (False, "NaN")
    assert source["projects"]["root"]["description"] == (False, "")
    assert source["projects"]["root"]["thumbnail"] == (True, None)
    assert source["projects"]["root"]["trashed"] == (False, "2020-02-29 06:49:56.789012+00")
    assert source["projects"]["child"]["description"] == (False, LONG_TEXT)
    assert "123456789012345678901234567890.123456789012345678901" in nodes["root / node 4"]["boot_options"][1]

    options = {"uuid_policy": uuid_policy}
    if how.startswith("flow"):
        report = await migrate_project(simcore.settings(sample.uuid, source={"include_hidden": True}, options=options))
        assert report.status == "migrated"
    else:
        await run_cli(simcore.config(sample.uuid, source={"include_hidden": True}, options=options), tmp_path)

    if how == "flow with COPY":
        assert {"projects", "projects_nodes", "projects_metadata", "file_meta_data"} <= set(copied_tables), copied_tables
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        migrated = [r[0] for r in await conn.fetch("SELECT uuid FROM projects")]
    finally:
        await conn.close()
    assert len(migrated) == 2
    destination = await text_rows(simcore.destination_db, migrated)

    differences = []
    for table, rows in source.items():
        assert set(destination[table]) == set(rows), table
        skip = REMAPPED.get(table, set()) | (ID_COLUMNS.get(table, set()) if uuid_policy == "new" else set())
        for name, columns in rows.items():
            for column, value in columns.items():
                if column in skip:
                    continue
                if table == "project_to_groups" and name.endswith("PRIMARY") and column in ("created", "modified"):
                    continue  # the owner's row: written by the destination's owner-group trigger
                got = destination[table][name][column]
                if got != value:
                    differences.append(f"{table} {name!r} {column}: source {_show(value)}, destination {_show(got)}")
    assert not differences, "\n".join(differences)

    # the remapped columns, as docs/table-rules.md's rules say
    carol = simcore.destination_ids.users["carol"]
    root = destination["projects"]["root"]
    assert root["prj_owner"] == root["trashed_by"] == (False, str(carol.id))
    assert root["workspace_id"] == (True, None)
    for row in destination["file_meta_data"].values():
        assert row["user_id"] == (False, str(carol.id)) and row["bucket_name"] == (False, simcore.destination_s3.bucket)
        assert row["upload_id"] == row["upload_expires_at"] == (True, None)


def _show(value: tuple[bool, str | None]) -> str:
    is_null, text = value
    return "NULL" if is_null else repr(text if len(text or "") < 80 else text[:80] + "...")  # type: ignore[index]


async def test_a_value_python_cannot_hold_stops_the_plan_naming_it(fixture_simcore: Simcore) -> None:
    sample = await build_sample_project(fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
                                        spec=SampleSpec(files=1, multipart_size=0, directory_objects=0, hidden_children=0))
    conn = await asyncpg.connect(asyncpg_dsn(fixture_simcore.source_db))
    try:
        await conn.execute("UPDATE projects_metadata SET created = '0044-03-15 12:00:00+00 BC' WHERE project_uuid = $1", sample.uuid)
    finally:
        await conn.close()
    settings = fixture_simcore.settings(sample.uuid)
    with pytest.raises(PreflightError) as failed:
        await commands.plan(settings)
    assert failed.value.problems == [
        f"source projects_metadata.created of project {sample.uuid} is 0044-03-15 12:00:00+00 BC: outside the years "
        "1 to 9999 that projmig can carry; correct it in the source"
    ]
