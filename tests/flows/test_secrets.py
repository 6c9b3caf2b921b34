"""No secret reaches logs, the report, Prefect parameters, artifacts or persisted results."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

from flows.migrate import migrate_project
from projmig.sandbox.sample import SampleSpec, build_sample_project

from ..conftest import Simcore

pytestmark = pytest.mark.usefixtures("prefect")


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


async def test_secrets_never_leave_the_settings(
    fixture_simcore: Simcore, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    box = fixture_simcore.sandbox
    secrets = [box.source.pg_password, box.destination.pg_password, box.source.s3_secret_key, box.destination.s3_secret_key]
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=3, multipart_size=6 * 1024 * 1024, multipart_part_size=5 * 1024 * 1024, hidden_children=1),
    )
    settings = fixture_simcore.settings(sample.uuid, source={"include_hidden": True})

    caplog.set_level(logging.DEBUG)
    report = await migrate_project(settings)

    # and once as an operator runs it, with every Prefect log line shown
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))
    api = get_current_settings().api.url
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "projmig"), "migrate", "--config", str(cfg), "--verbose"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PREFECT_API_URL": str(api)},
    )
    assert cli.returncode == 0, cli.stderr
    assert "nothing to do" in cli.stdout

    seen: dict[str, str] = {
        "logs": caplog.text,
        "console": "".join(capfd.readouterr()),
        "cli": cli.stdout + cli.stderr,
        "report": report.model_dump_json() + report.to_markdown(),
    }
    async with get_client() as client:
        runs = await client.read_flow_runs()
        assert runs
        seen["flow run parameters"] = json.dumps([r.parameters for r in runs], default=str)
        assert any("**********" in json.dumps(r.parameters, default=str) for r in runs)  # masked, yet there
        seen["artifacts"] = json.dumps([a.data for a in await client.read_artifacts()], default=str)
        task_runs = await client.read_task_runs()
        seen["task runs"] = json.dumps([tr.model_dump(mode="json") for tr in task_runs], default=str)
    current = get_current_settings()
    stores = [Path(current.results.local_storage_path), Path(os.environ["PREFECT_HOME"])]
    database = current.server.database.connection_url
    if database and "sqlite" in database.get_secret_value():
        stores.append(Path(database.get_secret_value().split("///", 1)[1]))
    persisted = [p for store in stores for p in (files_under(store) if store.is_dir() else [store])]
    assert any(p.stat().st_size for p in persisted), "expected persisted results and the API database"
    for path in persisted:
        seen[str(path)] = path.read_bytes().decode("latin-1")

    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"
