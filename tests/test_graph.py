"""The source graph is complete, or the migration says what is missing before anything is written:
a file row without its object, a directory entry without objects under its prefix, a soft link whose
target is neither migrated nor in the destination (real servers, ``projmig`` as a process)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project

from .conftest import Simcore
from .faults.conftest import REPO, prefect_env
from .test_cli import destination_state
from .test_rollback import sql


def projmig(*args: str) -> subprocess.CompletedProcess[str]:
    """``projmig`` in a process of its own, on this session's Prefect API (``prefect`` fixture) when it runs a flow."""
    env = prefect_env() if args[0] == "migrate" else None
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


async def test_missing_source_data_stops_the_migration_one_line_per_file(
    fixture_simcore: Simcore, tmp_path: Path, prefect: None
) -> None:
    simcore = fixture_simcore
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
                                        spec=SampleSpec(files=3, multipart_size=0, directory_objects=2, hidden_children=0))
    lost = next(f for f in sample.file_ids if "/outputs/output_1/" in f)
    directory = next(f for f in sample.file_ids if f.endswith("/workspace"))
    node = sample.node_ids[1]
    elsewhere = f"{uuid.uuid4()}/{uuid.uuid4()}/shared.dat"  # another project's object, already in the destination
    nowhere = f"{uuid.uuid4()}/{uuid.uuid4()}/gone.dat"
    ghost = str(uuid.uuid4())
    async with s3_client(simcore.source_s3) as client:
        bucket = simcore.source_s3.bucket
        await client.delete_object(Bucket=bucket, Key=lost)
        for key in [k for k in sample.objects if k.startswith(f"{directory}/")]:
            await client.delete_object(Bucket=bucket, Key=key)
    async with s3_client(simcore.destination_s3) as client:
        await client.put_object(Bucket=simcore.destination_s3.bucket, Key=elsewhere, Body=b"shared")
    for name, target in (("link to elsewhere", elsewhere), ("link to nowhere", nowhere)):
        await sql(simcore.source_db, """
            INSERT INTO file_meta_data (location_id, location, bucket_name, object_name, project_id, node_id, user_id,
                created_at, file_id, file_size, last_modified, is_soft_link, is_directory)
            VALUES ('0', 'simcore.s3', $1, $2, $3, $4, $5, now(), $6, 6, now(), true, false)""",
            simcore.source_s3.bucket, target, sample.uuid, node, simcore.alice, f"{sample.uuid}/{node}/{name}")
    await sql(simcore.source_db, "UPDATE projects_nodes SET input_nodes = $2::jsonb WHERE node_id = $1",
              node, json.dumps([sample.node_ids[0], ghost]))
    config = simcore.config(sample.uuid)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    before = await destination_state(simcore)
    expected = [
        f"error: file {lost}: its object is not in the source bucket",
        f"error: directory {directory}: no object under {directory}/ in the source bucket",
        f"error: soft link {sample.uuid}/{node}/link to nowhere: its target {nowhere} is neither copied with these "
        "projects nor in the destination bucket",
    ]

    for command in ("plan", "migrate"):
        result = projmig(command, "--config", str(cfg))
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert sorted(lines) == sorted(f"{e} (options.allow_missing_objects moves such rows without it)" for e in expected), result.stderr
        assert await destination_state(simcore) == before

    config["options"] = {"allow_missing_objects": True}
    cfg.write_text(json.dumps(config))
    result = projmig("migrate", "--config", str(cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    for line in expected:
        assert f"warning: {line.removeprefix('error: ')}: its row moves without it (options.allow_missing_objects)" in warnings
    assert f"warning: project {sample.uuid}: node {ghost} is named by input_nodes of node {node} but is not in projects_nodes" in warnings
    source_rows = await sql(simcore.source_db, "SELECT file_id FROM file_meta_data ORDER BY file_id")
    destination_rows = await sql(simcore.destination_db, "SELECT file_id FROM file_meta_data ORDER BY file_id")
    assert destination_rows == source_rows  # every row moved, those without objects too
    async with s3_client(simcore.destination_s3) as client:
        listed = await client.list_objects_v2(Bucket=simcore.destination_s3.bucket)
    keys = {o["Key"] for o in listed.get("Contents", [])}
    assert lost not in keys and not any(k.startswith(f"{directory}/") for k in keys) and nowhere not in keys

    verified = projmig("verify", "--config", str(cfg))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "equal:" in verified.stdout


@pytest.mark.parametrize("reference", ["inputs", "projects.ui workbench"])
async def test_a_node_named_but_absent_is_a_plan_warning(fixture_simcore: Simcore, tmp_path: Path, reference: str) -> None:
    sample = await build_sample_project(fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
                                        spec=SampleSpec(files=1, multipart_size=0, directory_objects=0, hidden_children=0))
    ghost = str(uuid.uuid4())
    if reference == "inputs":
        await sql(fixture_simcore.source_db, "UPDATE projects_nodes SET inputs = $2::jsonb WHERE node_id = $1",
                  sample.node_ids[2], json.dumps({"in_1": {"nodeUuid": ghost, "output": "out_1"}}))
        where = f"inputs of node {sample.node_ids[2]}"
    else:
        await sql(fixture_simcore.source_db, "UPDATE projects SET ui = jsonb_set(ui, ARRAY['workbench', $2], '{}') "
                  "WHERE uuid = $1", sample.uuid, ghost)
        where = "projects.ui workbench"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))
    result = projmig("plan", "--config", str(cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: project {sample.uuid}: node {ghost} is named by {where} but is not in projects_nodes" in result.stdout
