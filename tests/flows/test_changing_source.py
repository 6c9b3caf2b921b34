"""A source that changes under a running migration (both schemas): a node and a file (its object and
its row) change while `projmig migrate` is held between its copy and its insert. Nothing is
committed and the run says so in one line; the copied objects stay; the rerun migrates the source's
current state, as `projmig verify` and the test's own SQL and digests say."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from projmig.s3 import s3_client
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings

from ..conftest import Simcore, hold_inserts, insert_is_held, object_digests, wait_until
from ..faults.conftest import REPO, MigrationProcess, prefect_env

pytestmark = pytest.mark.usefixtures("prefect")


async def query(db: DatabaseSettings, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_a_source_changed_between_copy_and_insert_commits_nothing_and_the_rerun_takes_its_state(
    simcore: Simcore, tmp_path: Path
) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=4, file_size=8 * 1024, directory_objects=2, multipart_size=0, hidden_children=1, child_files=1,
        deployment_bound_rows=False, special_names=False))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(simcore.config(sample.uuid, source={"include_hidden": True})))
    src, dst = simcore.source_db, simcore.destination_db
    node = sample.node_ids[0]
    changed_file = sorted(k for k in sample.objects if k.startswith(f"{sample.uuid}/") and "/outputs/" in k)[0]
    new_bytes = b"uploaded again in the source while the migration ran\n" * 50

    holder, held = await hold_inserts(dst)
    try:
        run = MigrationProcess(config)
        await wait_until(lambda: insert_is_held(dst), "the run at its insert")
        # osparc at work in the source: a node edited (its trigger moves the project's last change),
        # a file uploaded again (a new object, and its row says so)
        await query(src, "UPDATE projects_nodes SET label = 'edited in the source' WHERE project_uuid = $1 AND node_id = $2",
                    sample.uuid, node)
        async with s3_client(simcore.source_s3) as client:
            put = await client.put_object(Bucket=simcore.source_s3.bucket, Key=changed_file, Body=new_bytes)
        await query(src, "UPDATE file_meta_data SET file_size = $1, entity_tag = $2, last_modified = now() "
                         "WHERE file_id = $3", len(new_bytes), put["ETag"].strip('"'), changed_file)
    finally:
        await held.rollback()
        await holder.close()
    code, out = await run.wait()

    assert code == 1, out
    [line] = [line for line in out.strip().splitlines() if line.strip()]
    assert line.startswith(f"error: source project {sample.uuid} changed during the migration (last change "), line
    assert "rerun to migrate its current state" in line and "nothing was inserted" in line, line
    assert await query(dst, "SELECT uuid FROM projects") == []  # nothing committed
    kept = await object_digests(simcore.destination_s3)
    assert set(kept) == set(sample.objects)  # the copies stay for the rerun

    again = subprocess.run([sys.executable, "-m", "flows.cli", "migrate", "--config", str(config)], cwd=REPO,
                           env=prefect_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1].startswith("migrated 2 projects: 1 objects copied"), again.stdout
    verified = subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--config", str(config)], cwd=REPO,
                              env=prefect_env(), capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0 and "equal:" in verified.stdout, verified.stdout + verified.stderr
    # and by the test's own reading of both sides
    [label] = await query(dst, "SELECT label FROM projects_nodes WHERE project_uuid = $1 AND node_id = $2", sample.uuid, node)
    assert label["label"] == "edited in the source"
    [row] = await query(dst, "SELECT file_size, entity_tag FROM file_meta_data WHERE file_id = $1", changed_file)
    assert (row["file_size"], row["entity_tag"]) == (len(new_bytes), hashlib.md5(new_bytes).hexdigest())
    assert (await object_digests(simcore.destination_s3))[changed_file] == hashlib.sha256(new_bytes).hexdigest()
    for column in ("last_change_date", "name"):
        [[a], [b]] = [await query(db, f"SELECT {column}::text FROM projects WHERE uuid = $1", sample.uuid) for db in (src, dst)]
        assert a == b, column


async def test_a_new_object_under_a_directory_entry_during_the_run_commits_nothing(simcore: Simcore, tmp_path: Path) -> None:
    """osparc writes a file into a directory entry's prefix without touching any row (the entry stands
    for whatever is under its prefix): the insert lists each directory prefix again before COMMIT."""
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=2, file_size=4 * 1024, directory_objects=3, multipart_size=0, hidden_children=0,
        deployment_bound_rows=False, special_names=False))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(simcore.config(sample.uuid)))
    dst = simcore.destination_db
    [directory] = [r["file_id"] for r in await query(
        simcore.source_db, "SELECT file_id FROM file_meta_data WHERE project_id = $1 AND is_directory", sample.uuid)]
    new_key, new_bytes = f"{directory}/sub9/written during the run.dat", b"a new result\n" * 100
    rows_before = await query(simcore.source_db, "SELECT file_id, file_size, last_modified FROM file_meta_data ORDER BY 1")

    holder, held = await hold_inserts(dst)
    try:
        run = MigrationProcess(config)
        await wait_until(lambda: insert_is_held(dst), "the run at its insert")
        async with s3_client(simcore.source_s3) as client:
            await client.put_object(Bucket=simcore.source_s3.bucket, Key=new_key, Body=new_bytes)
    finally:
        await held.rollback()
        await holder.close()
    code, out = await run.wait()

    assert await query(simcore.source_db, "SELECT file_id, file_size, last_modified FROM file_meta_data ORDER BY 1") == rows_before
    assert code == 1, out
    [line] = [line for line in out.strip().splitlines() if line.strip()]
    assert line.startswith(f"error: source project {sample.uuid} changed during the migration (objects changed under "
                           f"directory {directory}/)"), line
    assert "nothing was inserted" in line, line
    assert await query(dst, "SELECT uuid FROM projects") == []

    again = subprocess.run([sys.executable, "-m", "flows.cli", "migrate", "--config", str(config)], cwd=REPO,
                           env=prefect_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1].startswith("migrated 1 project: 1 objects copied"), again.stdout
    assert (await object_digests(simcore.destination_s3))[new_key] == hashlib.sha256(new_bytes).hexdigest()
