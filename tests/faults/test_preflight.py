"""A destination database connection lost while the preflight queries it: one error line naming that
database (not a traceback), nothing written, and the rerun migrates."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.migrate import migrate_project
from projmig.errors import PreflightError

from .conftest import REPO, Faulty, destination_keys, open_uploads, prefect_env, row_counts

pytestmark = pytest.mark.usefixtures("prefect")

FIRST_QUERY = b"alembic_version LIMIT"  # the schema revision, first thing asked once connected
LATER_QUERY = b"SELECT uuid, creation_date, name FROM projects WHERE"  # is any project already there?


async def assert_nothing_written(faulty: Faulty, uuid: str, projects: list[str]) -> None:
    direct = faulty.direct(uuid)
    assert sum((await row_counts(direct, projects)).values()) == 0
    assert await destination_keys(direct) == {}
    assert await open_uploads(direct) == []


async def test_in_the_flow_it_is_a_preflight_error_naming_the_destination_database(faulty: Faulty) -> None:
    sample = await faulty.sample(files=2, directory_objects=0, multipart_size=0)
    settings = faulty.settings(sample.uuid)
    db = faulty.proxies.dst_db
    db.after(match=LATER_QUERY, do="cut")

    with pytest.raises(PreflightError) as failed:
        await migrate_project(settings)
    assert db.faults, "the cut must have happened"
    [problem] = failed.value.problems
    assert problem.startswith(f"destination database {settings.destination.db.describe()}: connection lost"), problem
    await assert_nothing_written(faulty, sample.uuid, sample.all_projects)

    db.heal()
    assert (await migrate_project(settings)).status == "migrated"


async def test_the_cli_prints_one_error_line_and_no_traceback(faulty: Faulty, tmp_path) -> None:
    sample = await faulty.sample(files=2, directory_objects=0, multipart_size=0)
    config = faulty.config_file(tmp_path / "cfg.json", sample.uuid)
    db = faulty.proxies.dst_db
    db.after(match=FIRST_QUERY, do="cut")

    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "migrate", "--config", str(config)],
        cwd=REPO, env=prefect_env(), capture_output=True, text=True, timeout=300,
    )
    assert db.faults, "the cut must have happened"
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "destination database" in errors[0] and "connection lost" in errors[0], done.stderr
    await assert_nothing_written(faulty, sample.uuid, sample.all_projects)
