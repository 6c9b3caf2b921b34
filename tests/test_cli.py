"""The `projmig` command as an operator runs it (a real process): bad input is one clear error line
and exit code 2, and writes nothing to the destination."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import asyncpg
import pytest

from projmig.s3 import s3_client
from projmig.sandbox import free_port
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import Simcore

PROJMIG = str(Path(sys.executable).parent / "projmig")


def projmig(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROJMIG, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_config_template_is_valid_json_without_secrets() -> None:
    result = projmig("config-template")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"]["db"]["password"] == {"env": "SOURCE_DB_PASSWORD"}
    assert data["destination"]["db"]["password"] == {"prefect_secret": "destination-db-password"}


def test_malformed_config_gives_one_line_per_field(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({
        "source": {"db": {"host": "h", "user": "u", "database": "d", "port": "five"},
                   "s3": {"access_key": "a", "secret_key": "b", "bucket": "x"}, "project_uuid": "not-a-uuid"},
        "destination": {"db": {"host": "h", "user": "u", "database": "d"},
                        "s3": {"access_key": "a", "secret_key": "b", "bucket": "bucket"}},
    }))
    result = projmig("migrate", "--config", str(cfg))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(f"error: {cfg}: ") for line in lines), result.stderr
    fields = {line.removeprefix(f"error: {cfg}: ").split(":")[0] for line in lines}
    # (named where the file has them: source.project_uuid is the old place of choices.project_uuid)
    assert fields == {"source.db.port", "source.s3.bucket", "source.project_uuid"}
    assert "Traceback" not in result.stderr

    # the destination owner is a run's choice: a configuration without one is refused by the commands that need it
    cfg.write_text(json.dumps({
        "source": {"db": {"host": "h", "user": "u", "database": "d"}, "s3": {"access_key": "a", "secret_key": "b", "bucket": "src"}},
        "destination": {"db": {"host": "h", "user": "u", "database": "d"}, "s3": {"access_key": "a", "secret_key": "b", "bucket": "dst"}},
        "choices": {"project_uuid": str(uuid.uuid4())},
    }))
    for command in ("plan", "migrate", "verify"):
        result = projmig(command, "--config", str(cfg))
        assert (result.returncode, result.stderr) == (2, f"error: {cfg}: choices.destination_user_id: give the destination "
                                                          "user who will own the projects (--to-user)\n")


async def destination_state(simcore: Simcore) -> tuple[int, int, int]:
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        rows = sum([await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("projects", "projects_nodes", "file_meta_data", "project_to_groups")])
    finally:
        await conn.close()
    async with s3_client(simcore.destination_s3) as client:
        bucket = simcore.destination_s3.bucket
        objects = len((await client.list_objects_v2(Bucket=bucket)).get("Contents", []))
        uploads = len((await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", []))
    return rows, objects, uploads


async def set_revision(simcore: Simcore, revision: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
    await conn.close()


async def add_colliding_project(simcore: Simcore, project_uuid: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    await conn.execute(
        "INSERT INTO projects (type, uuid, name, prj_owner, published, hidden, product_name, creation_date) "
        "VALUES ('STANDARD', $1, 'somebody else''s study', $2, false, false, 'osparc', '2020-01-01')",
        project_uuid, simcore.carol,
    )
    await conn.close()


def edit(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        config = config[key]
    config[leaf] = value


BAD_INPUTS: dict[str, tuple[Callable[[dict[str, Any], Simcore], Any], str]] = {
    "unknown project": (lambda c, s: edit(c, "choices.project_uuid", str(uuid.uuid4())), r"source project .* does not exist"),
    "unknown destination owner": (lambda c, s: edit(c, "choices.destination_user_id", 4242), "destination user 4242 does not exist"),
    "unknown product": (lambda c, s: edit(c, "choices.product_name", "s4l"), "destination product 's4l' does not exist"),
    "wrong S3 credentials": (lambda c, s: edit(c, "destination.s3.secret_key", "wrong-secret"), "destination bucket .*: cannot read: access denied"),
    "missing bucket": (lambda c, s: edit(c, "destination.s3.bucket", "no-such-bucket"), "destination bucket s3://no-such-bucket .*: bucket does not exist"),
    "unreachable DB": (lambda c, s: edit(c, "destination.db.port", free_port()), "destination database .*: connection refused"),
    "wrong DB password": (lambda c, s: edit(c, "source.db.password", "nope"), "source database .*: password authentication failed"),
}


@pytest.mark.parametrize("case", [*BAD_INPUTS, "revision mismatch", "collision with a different project"])
async def test_bad_input_is_one_clear_line_and_writes_nothing(case: str, fixture_simcore: Simcore, tmp_path: Path) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=3, multipart_size=0, directory_objects=0, hidden_children=0),
    )
    config = fixture_simcore.config(sample.uuid)
    if case == "revision mismatch":
        await set_revision(fixture_simcore, "0123abcd4567")
        expected = "schema revision mismatch: source is at 3f8c0e8d11a4, destination at 0123abcd4567"
    elif case == "collision with a different project":
        await add_colliding_project(fixture_simcore, sample.uuid)
        expected = f"collision: the destination already has a different project {sample.uuid}"
    else:
        mutate, expected = BAD_INPUTS[case]
        mutate(config, fixture_simcore)
    before = await destination_state(fixture_simcore)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))

    result = projmig("migrate", "--config", str(cfg))

    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert re.search(expected, lines[0]), lines[0]
    assert await destination_state(fixture_simcore) == before


async def test_plan_and_verify_commands(fixture_simcore: Simcore, tmp_path: Path, prefect: None) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=4, multipart_size=6 * 1024 * 1024, multipart_part_size=5 * 1024 * 1024, hidden_children=1),
    )
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid, source={"include_hidden": True})))

    planned = projmig("plan", "--config", str(cfg))
    assert planned.returncode == 0, planned.stderr
    assert "2 project(s):" in planned.stdout and f"objects to copy: {len(sample.objects)}" in planned.stdout
    assert (await destination_state(fixture_simcore))[0] == 0

    from flows.migrate import migrate_project
    from projmig.settings import MigrationSettings

    await migrate_project(MigrationSettings.load(cfg))
    verified = projmig("verify", "--config", str(cfg))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "equal: 2 projects" in verified.stdout and "SHA-256" in verified.stdout

    # one byte different, same size: only the SHA-256 comparison and the ETag can tell
    key = next(k for k, size in sample.objects.items() if size > 0 and "workspace" not in k)
    async with s3_client(fixture_simcore.destination_s3) as client:
        obj = await client.get_object(Bucket=fixture_simcore.destination_s3.bucket, Key=key)
        data = bytearray(await obj["Body"].read())
        data[0] ^= 0xFF
        await client.put_object(Bucket=fixture_simcore.destination_s3.bucket, Key=key, Body=bytes(data))
    verified = projmig("verify", "--config", str(cfg))
    assert verified.returncode == 1
    assert f"differs: {key}" in verified.stdout


async def test_an_unexpected_database_error_and_a_malformed_environment_value_are_one_line_each(
    fixture_simcore: Simcore, tmp_path: Path
) -> None:
    """Not every failure is one projmig foresaw: a source whose schema is not what its revision says
    (a column renamed by hand) fails the plan with one line naming the database's error, no traceback;
    a PROJMIG_ variable holding a section that is not JSON is one line naming the variable, not its value."""
    sample = await build_sample_project(fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
                                        spec=SampleSpec(files=2, multipart_size=0, directory_objects=0, hidden_children=0))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))
    conn = await asyncpg.connect(asyncpg_dsn(fixture_simcore.source_db))
    try:
        await conn.execute("ALTER TABLE projects RENAME COLUMN creation_date TO created_on")
    finally:
        await conn.close()

    broken = projmig("plan", "--config", str(cfg))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    (line,) = broken.stderr.strip().splitlines()
    assert line.startswith("error: unexpected ") and 'column "creation_date" does not exist' in line, line

    secretish = '{"bucket": "b", "secret_key": "do-not-print-me'
    malformed = subprocess.run([PROJMIG, "plan", "--config", str(cfg)], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PROJMIG_DESTINATION__S3": secretish})
    assert malformed.returncode == 2
    assert malformed.stderr == ("error: environment: PROJMIG_DESTINATION__S3: not valid JSON (a section given as one "
                                "variable is a JSON object, or set its fields one by one: PROJMIG_DESTINATION__S3__<FIELD>)\n")
