"""The independent row check (``projmig.rowcheck``): its rules on hand-made rows, ``projmig verify``
on a destination written the way the old insert wrote it, and the check inside the insert
transaction stopping a wrong value before COMMIT (real servers, both schemas)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from projmig import commands
from projmig.errors import InsertError
from projmig.rowcheck import Expectations, ProjectFacts, RemapFacts, TextTables, compare
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings

from .conftest import Simcore
from .test_rollback import migrate, sql

PROJMIG = str(Path(sys.executable).parent / "projmig")
P, Q, N, M = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
              "33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444")
NEW_P, NEW_N = "aaaaaaaa-aaaa-5aaa-8aaa-aaaaaaaaaaaa", "bbbbbbbb-bbbb-5bbb-8bbb-bbbbbbbbbbbb"
JSON_COLUMNS = {"projects": ["ui"], "projects_nodes": ["boot_options", "inputs"]}


def facts(**changes) -> RemapFacts:
    project = ProjectFacts(destination_uuid=changes.pop("destination_uuid", P), owner_gid=3, product_gid=4,
                           destination_product="s4l", destination_product_gid=40)
    values = dict(projects={P: project}, owner_id=7, owner_gid=30, everyone_gid=1, destination_everyone_gid=10,
                  bucket="dst")
    return RemapFacts(**{**values, **changes})


def source() -> TextTables:
    return TextTables(json_columns=JSON_COLUMNS, rows={
        "projects": [{"id": "1", "uuid": P, "prj_owner": "2", "product_name": "osparc", "workspace_id": "5",
                      "trashed_by": None, "name": "study", "ui": '{"workbench": {"%s": {"x": 1.10}}}' % N}],
        "projects_nodes": [{"project_node_id": "9", "project_uuid": P, "node_id": N, "modified": "2020-01-01 00:00:00+00",
                            "boot_options": None, "inputs": '{"in": {"nodeUuid": "%s"}}' % N}],
        "project_to_groups": [
            {"project_uuid": P, "gid": "3", "read": "true", "write": "false", "delete": "false", "created": "x"},
            {"project_uuid": P, "gid": "1", "read": "true", "write": "false", "delete": "false", "created": "y"},
            {"project_uuid": P, "gid": "99", "read": "true", "write": "true", "delete": "false", "created": "z"},
        ],
        "file_meta_data": [
            {"file_id": f"{P}/{N}/a", "object_name": f"{P}/{N}/a", "project_id": P, "user_id": "2", "bucket_name": "src",
             "file_size": "5", "entity_tag": "e1", "upload_id": "u", "is_soft_link": "false", "is_directory": "false",
             "location_id": "0"},
        ],
    })


def destination(renamed: bool = False) -> TextTables:
    """What a correct migration writes (ids renamed to NEW_P/NEW_N when ``renamed``)."""
    p, n = (NEW_P, NEW_N) if renamed else (P, N)
    return TextTables(json_columns=JSON_COLUMNS, rows={
        "projects": [{"id": "77", "uuid": p, "prj_owner": "7", "product_name": "s4l", "workspace_id": None,
                      "trashed_by": None, "name": "study", "ui": '{"workbench": {"%s": {"x": 1.10}}}' % n}],
        "projects_nodes": [{"project_node_id": "1", "project_uuid": p, "node_id": n, "modified": "2031-01-01 00:00:00+00",
                            "boot_options": None, "inputs": '{"in": {"nodeUuid": "%s"}}' % n}],
        "project_to_groups": [
            {"project_uuid": p, "gid": "30", "read": "true", "write": "true", "delete": "true", "created": "now"},
            {"project_uuid": p, "gid": "10", "read": "true", "write": "false", "delete": "false", "created": "y"},
        ],
        "file_meta_data": [
            {"file_id": f"{p}/{n}/a", "object_name": f"{p}/{n}/a", "project_id": p, "user_id": "7", "bucket_name": "dst",
             "file_size": "6", "entity_tag": "e2", "upload_id": None, "is_soft_link": "false", "is_directory": "false",
             "location_id": "0"},
        ],
    })


class State:
    def __init__(self, size: int, etag: str):
        self.size, self.etag = size, etag


OBJECTS = {f"{P}/{N}/a": State(6, "e2")}


def test_a_correct_copy_is_equal_and_the_columns_the_destination_sets_are_named() -> None:
    check = compare(Expectations(source=source(), facts=facts()), destination(), OBJECTS)
    assert check.differences == [] and check.checked == 5
    assert "not compared: projects_nodes.modified, set by the destination's trigger (now)" in check.notes
    assert "not compared: projects.id, set by the destination's sequence" in check.notes
    assert f"not copied, as the table rules say: project_to_groups {P} gid 99 (no such group in the destination)" in check.notes


@pytest.mark.parametrize("column, value, expected", [
    ("boot_options", "null", f"projects_nodes {N}: boot_options: NULL in the source, JSON null in the destination"),
    ("inputs", '{"in": {"nodeUuid": "%s"}, "x": 1.1}' % N,
     f"projects_nodes {N}: inputs: '{{\"in\": {{\"nodeUuid\": \"{N}\"}}}}' in the source, "
     f"'{{\"in\": {{\"nodeUuid\": \"{N}\"}}, \"x\": 1.1}}' in the destination"),
    ("project_node_id", "12345", None),  # the destination's sequence
])
def test_each_column_is_compared_as_text(column: str, value: str, expected: str | None) -> None:
    there = destination()
    there.rows["projects_nodes"][0][column] = value
    check = compare(Expectations(source=source(), facts=facts()), there, OBJECTS)
    assert [str(d) for d in check.differences] == ([expected] if expected else [])


def test_json_numbers_are_compared_as_written() -> None:
    there = destination()
    there.rows["projects"][0]["ui"] = '{"workbench": {"%s": {"x": 1.1}}}' % N
    check = compare(Expectations(source=source(), facts=facts()), there, OBJECTS)
    assert [d.what for d in check.differences] == [
        f"ui: '{{\"workbench\": {{\"{N}\": {{\"x\": 1.10}}}}}}' in the source, "
        f"'{{\"workbench\": {{\"{N}\": {{\"x\": 1.1}}}}}}' in the destination"
    ]


def test_remapped_columns_follow_the_rules() -> None:
    there = destination()
    there.rows["projects"][0].update(prj_owner="2", workspace_id="5")
    there.rows["file_meta_data"][0].update(bucket_name="src", file_size="5", upload_id="u")
    there.rows["project_to_groups"][0]["delete"] = "false"
    there.rows["project_to_groups"].append(
        {"project_uuid": P, "gid": "99", "read": "true", "write": "true", "delete": "false", "created": "z"})
    check = compare(Expectations(source=source(), facts=facts()), there, OBJECTS)
    assert sorted(str(d) for d in check.differences) == sorted([
        f"projects {P}: prj_owner: '2' in the destination, expected '7' (the destination owner)",
        f"projects {P}: workspace_id: '5' in the destination, expected NULL (the owner's private workspace)",
        f"file_meta_data {P}/{N}/a: bucket_name: 'src' in the destination, expected 'dst' (the destination bucket)",
        f"file_meta_data {P}/{N}/a: file_size: '5' in the destination, expected '6' (the size of the object in the destination)",
        f"file_meta_data {P}/{N}/a: upload_id: 'u' in the destination, expected NULL (no unfinished upload)",
        f"project_to_groups {P} gid 30: delete: 'false' in the destination, expected 'true' (true in the owner's row)",
        f"project_to_groups {P} gid 99: in the destination but not in the source",
    ])


def test_new_ids_are_mapped_back_and_a_reference_to_the_original_is_a_difference() -> None:
    renamed = facts(destination_uuid=NEW_P, renamed={NEW_P: P, NEW_N: N})
    objects = {f"{NEW_P}/{NEW_N}/a": State(6, "e2")}
    # the workbench keys sort differently under the new ids: compared as JSON, not as text
    assert compare(Expectations(source=source(), facts=renamed), destination(renamed=True), objects).differences == []

    there = destination(renamed=True)
    there.rows["projects_nodes"][0]["inputs"] = '{"in": {"nodeUuid": "%s"}}' % N  # not rewritten: the original's node
    check = compare(Expectations(source=source(), facts=renamed), there, objects)
    assert [str(d) for d in check.differences] == [
        f"projects_nodes {N}: inputs refers to the source's id {N} (the copy must not point at its original)"
    ]


def test_a_missing_row_is_named() -> None:
    there = destination()
    del there.rows["file_meta_data"][0]
    check = compare(Expectations(source=source(), facts=facts()), there, OBJECTS)
    assert [str(d) for d in check.differences] == [f"file_meta_data {P}/{N}/a: missing in the destination"]


# -- real servers ---------------------------------------------------------------------------------


async def script(db: DatabaseSettings, statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


def verify(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROJMIG, "verify", "--config", str(cfg), "--quick"], capture_output=True, text=True, timeout=300)


async def test_verify_reports_sql_null_written_as_json_null(simcore: Simcore, tmp_path: Path) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                        spec=SampleSpec(files=3, multipart_size=0, directory_objects=2, hidden_children=1))
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    await migrate(settings)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(simcore.config(sample.uuid, source={"include_hidden": True})))

    result = verify(cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"equal: 2 projects, \d+ rows and \d+ objects checked", result.stdout), result.stdout
    assert "note: not compared: projects_nodes.modified, set by the destination's trigger (now)" in result.stdout

    # the destination as the old insert wrote it: SQL NULL in a jsonb column became JSON null
    # (written directly, triggers off, so that nothing else changes)
    nulls = await sql(simcore.source_db, "SELECT node_id FROM projects_nodes WHERE boot_options IS NULL ORDER BY node_id")
    assert len(nulls) == len(sample.node_ids) + 1
    await script(simcore.destination_db, "SET session_replication_role = replica; "
              "UPDATE projects_nodes SET boot_options = 'null' WHERE boot_options IS NULL")

    result = verify(cfg)
    assert result.returncode == 1, result.stdout + result.stderr
    differs = [line for line in result.stdout.splitlines() if line.startswith("differs:")]
    assert differs == [
        f"differs: projects_nodes {r['node_id']}: boot_options: NULL in the source, JSON null in the destination"
        for r in nulls
    ], result.stdout
    assert f"{len(nulls)} differences:" in result.stdout


@pytest.mark.parametrize("fault", ["a destination trigger", "asyncpg's infinity"])
async def test_a_wrong_value_written_is_found_before_commit_and_nothing_is_committed(simcore: Simcore, fault: str) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                        spec=SampleSpec(files=3, multipart_size=0, directory_objects=2, hidden_children=1))
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    if fault == "a destination trigger":  # the destination turns one NULL into JSON null as it is written
        await script(simcore.destination_db, """
            CREATE FUNCTION json_null_instead() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.boot_options IS NULL AND NEW.label = 'node 3' THEN NEW.boot_options := 'null'::jsonb; END IF;
                RETURN NEW;
            END; $$;
            CREATE TRIGGER json_null_instead BEFORE INSERT ON projects_nodes FOR EACH ROW EXECUTE FUNCTION json_null_instead();
        """)
        expected = f"projects_nodes {sample.node_ids[3]}: boot_options: NULL in the source, JSON null in the destination"
    else:  # asyncpg reads the last microsecond of year 9999 as the datetime it also uses for 'infinity'
        await script(simcore.source_db, f"UPDATE projects SET trashed = '9999-12-31 23:59:59.999999+00' WHERE uuid = '{sample.uuid}'")
        expected = f"projects {sample.uuid}: trashed: '9999-12-31 23:59:59.999999+00' in the source, 'infinity' in the destination"

    with pytest.raises(InsertError) as failed:
        await migrate(settings)
    assert expected in str(failed.value)
    assert str(failed.value).endswith("destination transaction rolled back, nothing was inserted")
    for table in ("projects", "projects_nodes", "projects_metadata", "project_to_groups", "file_meta_data",
                  "projects_to_jobs", "projects_extensions", "projects_networks"):
        assert (await sql(simcore.destination_db, f"SELECT count(*) AS n FROM {table}"))[0]["n"] == 0, table

    if fault == "a destination trigger":
        await script(simcore.destination_db, "DROP TRIGGER json_null_instead ON projects_nodes")
        await migrate(settings)
        verified = await commands.verify(settings, deep=False)
        assert verified.equal, [str(d) for d in verified.differences]
