"""The same migration started twice at once (both schemas): `projmig migrate` processes of one
cfg.json. One migrates; the other waits for it and then finds the project migrated (or, told to wait
less, refuses with one line, having written nothing; so does `projmig cleanup` meanwhile). The
destination ends as one uninterrupted run leaves it: every object's bytes, rows once, no upload or
upload record left, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from projmig import commands
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings

from ..conftest import Simcore, held_at_insert_and_one_waiting, hold_inserts, object_digests, wait_until
from ..faults.conftest import REPO, MigrationProcess, duplicate_rows, open_uploads, prefect_env

pytestmark = pytest.mark.usefixtures("prefect")
MiB = 1024 * 1024


async def fetchval(db: DatabaseSettings, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_two_migrate_processes_of_one_config_migrate_it_once(simcore: Simcore, tmp_path: Path) -> None:
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=4, file_size=8 * 1024, directory_objects=2, multipart_size=12 * MiB, multipart_part_size=5 * MiB,
        hidden_children=1, child_files=1, deployment_bound_rows=False))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(simcore.config(sample.uuid, source={"include_hidden": True})))
    dst = simcore.destination_db

    holder, held = await hold_inserts(dst)
    try:
        runs = [MigrationProcess(config), MigrationProcess(config)]  # started at once
        await wait_until(lambda: held_at_insert_and_one_waiting(dst), "one run at its insert, the other waiting")
        # a third one, told to wait a second at most, refuses with one line and writes nothing
        impatient, cleanup = (subprocess.run(
            [sys.executable, "-m", "flows.cli", *command, "--config", str(config)], cwd=REPO, capture_output=True,
            text=True, timeout=300, env={**prefect_env(), "PROJMIG_OPTIONS__LOCK_WAIT": "1"},
        ) for command in (["migrate"], ["cleanup", "--older-than", "0s"]))
    finally:
        await held.rollback()
        await holder.close()
    outputs = [await run.wait() for run in runs]

    assert impatient.returncode == 1, impatient.stdout + impatient.stderr
    [line] = impatient.stderr.strip().splitlines()
    assert line.startswith(f"error: another migration of {sample.uuid} is running (or its rollback; waited 1 s"), line
    assert "Traceback" not in impatient.stdout + impatient.stderr
    # nor does cleanup abort anything under a running migration: the same line, nothing aborted
    assert cleanup.returncode == 1 and cleanup.stderr.strip().splitlines() == [line], cleanup.stdout + cleanup.stderr
    assert "aborted" not in cleanup.stdout, cleanup.stdout
    for code, out in outputs:
        assert code == 0 and "Traceback" not in out, out
    last = sorted(out.strip().splitlines()[-1] for _, out in outputs)
    assert last[0].startswith("migrated 2 projects: ") and last[1].startswith(
        "nothing to do: 2 projects already migrated, left as they are"), last

    # as one uninterrupted run leaves it
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    verified = await commands.verify(settings, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    assert await duplicate_rows(settings) == {}
    assert await fetchval(dst, "SELECT count(*) FROM projects") == 2
    source = await object_digests(simcore.source_s3)
    assert await object_digests(simcore.destination_s3) == {k: source[k] for k in sample.objects}  # no upload record either
    assert await open_uploads(settings) == []
