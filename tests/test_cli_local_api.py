"""`projmig migrate` on a machine with no Prefect API configured: the first command starts a local
Prefect server in the background (flows/local_api.py), the next ones reuse it, and Prefect's own
`prefect server stop` stops it."""

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

from .conftest import Simcore

pytestmark = pytest.mark.prefect_api  # the command starts a Prefect server of its own

BIN = Path(sys.executable).parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PROJMIG_"))},
           "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "SOURCE_DB_PASSWORD": secret, "PROJMIG_OPTIONS__COPY_CONCURRENCY": "3", "HTTPS_PROXY": "http://127.0.0.1:9"}
    pid = None
    try:
        first = subprocess.run([str(BIN / "projmig"), "migrate", "--config", str(cfg)], capture_output=True, text=True,
                               timeout=400, env=env)
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
        assert "nothing to do" in again.stdout and "Starting" not in again.stderr
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
