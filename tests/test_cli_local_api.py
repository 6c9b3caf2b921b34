"""`projmig migrate` on a machine with no Prefect API configured: by default the migration runs in
the command's own process, Prefect not even imported; with `--prefect` the first command starts a
local Prefect server in the background (flows/local_api.py), the next ones reuse it (with or without
`--prefect`), and Prefect's own `prefect server stop` stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.local_api import RECORD, healthy
from projmig.sandbox.sample import SampleSpec, build_sample_project

from .conftest import Simcore, object_digests, table_rows

BIN = Path(sys.executable).parent


def without_prefect(home: Path, **extra: str) -> dict[str, str]:
    """This environment less any Prefect or projmig setting (no API configured), ``home`` as PREFECT_HOME."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PROJMIG_"))}
    return {**kept, "PREFECT_HOME": str(home), **extra}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.prefect_api  # the command starts a Prefect server of its own
async def test_the_first_command_starts_a_local_server_and_the_next_reuse_it(fixture_simcore: Simcore, tmp_path: Path) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=2, multipart_size=0, directory_objects=0, hidden_children=0),
    )
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))
    home = tmp_path / "prefect-home"
    # the command's own environment holds secrets (a credential reference's variable) and projmig settings
    secret = "a password only the command may see"
    env = without_prefect(home, PREFECT_SERVER_ANALYTICS_ENABLED="false", SOURCE_DB_PASSWORD=secret,
                          PROJMIG_OPTIONS__COPY_CONCURRENCY="3", HTTPS_PROXY="http://127.0.0.1:9")
    pid = None
    try:
        first = subprocess.run([str(BIN / "projmig"), "migrate", "--prefect", "--config", str(cfg)], capture_output=True,
                               text=True, timeout=400, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Starting a local Prefect server in the background" in first.stderr
        record = json.loads((home / RECORD).read_text())
        pid = record["pid"]
        assert healthy(record["api_url"]) and (home / "server.pid").read_text() == str(pid)
        # the server outlives the command, and any local user may ask its API: it took none of that
        server_env = dict(line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in line)
        assert secret not in server_env.values()
        assert not {name for name in server_env if name.startswith("PROJMIG_") or name.endswith("_PROXY")}, sorted(server_env)
        assert server_env["PREFECT_HOME"] == str(home)

        again = subprocess.run([str(BIN / "projmig"), "migrate", "--config", str(cfg)], capture_output=True, text=True,
                               timeout=400, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing to do" in again.stdout and "Starting" not in again.stderr  # (no --prefect: it runs, so used)
        assert "not recorded in Prefect" not in again.stderr
        assert json.loads((home / RECORD).read_text())["pid"] == pid and alive(pid)

        stopped = subprocess.run([str(BIN / "prefect"), "server", "stop"], capture_output=True, text=True, timeout=120, env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        deadline = time.monotonic() + 30
        while healthy(record["api_url"], timeout=0.5):
            assert time.monotonic() < deadline, "prefect server stop did not stop the local server"
            time.sleep(0.2)
    finally:
        if pid is not None and alive(pid):
            os.killpg(pid, 15)


async def test_with_no_server_the_command_migrates_in_its_own_process(fixture_simcore: Simcore, tmp_path: Path) -> None:
    """No Prefect API configured or running: the migration runs in the command's process (no server
    started, Prefect not imported) and ends as a flow run would: every row and object there, and a
    rerun that finds nothing to do."""
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=3, directory_objects=2, multipart_size=6 * 1024 * 1024,
                        multipart_part_size=5 * 1024 * 1024, hidden_children=0),
    )
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))
    home = tmp_path / "prefect-home"
    env = without_prefect(home)
    before = await table_rows(fixture_simcore.destination_db)

    first = subprocess.run([sys.executable, "-X", "importtime", str(BIN / "projmig"), "migrate", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=300, env=env)

    assert first.returncode == 0, first.stdout + first.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in first.stderr.splitlines() if line.startswith("import time:")}
    assert "flows.cli" in imported and not {m for m in imported if m.split(".")[0] == "prefect"}, \
        sorted(m for m in imported if m.startswith("prefect"))
    assert "No Prefect server running: migrated in this process, not recorded in Prefect" in first.stderr
    assert not (home / RECORD).exists()
    headline = first.stdout.strip().splitlines()[-1]
    assert headline.startswith("migrated 1 project: ") and f"{len(sample.objects)} objects copied" in headline, headline
    # what arrived, seen with the servers' own eyes: the same bytes under the same keys, the project's rows
    assert await object_digests(fixture_simcore.destination_s3, sample.uuid) == \
        await object_digests(fixture_simcore.source_s3, sample.uuid)
    after = await table_rows(fixture_simcore.destination_db)
    added = {t: len(after[t]) - len(before.get(t, [])) for t in after if len(after[t]) != len(before.get(t, []))}
    assert added.get("projects") == 1 and added.get("file_meta_data") == len(sample.file_ids), added
    assert any(sample.uuid in row for row in after["projects"])

    again = subprocess.run([str(BIN / "projmig"), "migrate", "--no-prefect", "--verbose", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1].startswith("nothing to do: 1 project already migrated")
    assert "not recorded in Prefect" not in again.stderr  # asked for: not said
    # --verbose: the run's own log lines, as the flow logs them to Prefect
    assert any(" INFO projmig: nothing to do: 1 project already migrated" in line for line in again.stderr.splitlines()), again.stderr
    assert await table_rows(fixture_simcore.destination_db) == after


async def test_dask_without_prefect_is_refused_in_one_line(fixture_simcore: Simcore, tmp_path: Path) -> None:
    config = fixture_simcore.config("00000000-0000-0000-0000-000000000001")
    config["options"] = {**config.get("options", {}), "task_runner": "dask"}
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    env = without_prefect(tmp_path / "prefect-home")
    refused = subprocess.run([str(BIN / "projmig"), "migrate", "--no-prefect", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: options.task_runner: 'dask' runs the copies as Prefect task runs: drop --no-prefect"]
