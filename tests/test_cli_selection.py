"""One way to name projects: plan, migrate, verify, rollback and cleanup take the same selection
options, so that each names what another did (``projmig`` as a process, real servers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from projmig.sandbox.sample import SampleSpec, build_sample_project

from .conftest import Simcore
from .faults.conftest import REPO, prefect_env
from .test_cli import destination_state

SELECTION = {"--project", "-p", "--owner", "--include-hidden", "--no-hidden", "--uuid-policy", "--copy-label",
             "--schema-migrations", "--all-users", "--match-users", "--user-map", "--skip-unmatched", "--into-folder",
             "--keep-folders", "--group-map"}
RECIPIENT = {"--to-user", "--product"}


def projmig(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**(prefect_env() if args[0] == "migrate" else os.environ), "COLUMNS": "200"}
    return subprocess.run([str(Path(sys.executable).parent / "projmig"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def options_of(command: str) -> set[str]:
    result = projmig(command, "--help")
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", result.stdout)) - {"--help", "--config", "-c"}


@pytest.mark.parametrize("command, expected", [
    ("plan", SELECTION | RECIPIENT),
    ("migrate", SELECTION | RECIPIENT | {"--dry-run", "--verbose", "-v", "--prefect", "--no-prefect"}),
    ("verify", SELECTION | RECIPIENT | {"--quick"}),
    ("rollback", SELECTION | {"--dry-run"}),
    ("cleanup", SELECTION | {"--older-than"}),
])
def test_every_command_takes_the_same_selection_options(command: str, expected: set[str]) -> None:
    assert options_of(command) == expected


async def test_verify_rollback_and_cleanup_name_what_migrate_moved(fixture_simcore: Simcore, tmp_path: Path, prefect: None) -> None:
    sample = await build_sample_project(fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
                                        spec=SampleSpec(files=2, multipart_size=0, directory_objects=1, hidden_children=1))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))  # no hidden projects, same ids: the flags decide
    before = await destination_state(fixture_simcore)
    flags = ["--include-hidden", "--uuid-policy", "new", "--copy-label", "review"]

    planned = projmig("plan", "--config", str(cfg), *flags)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "2 project(s):" in planned.stdout and f"{sample.uuid} -> " in planned.stdout
    migrated = projmig("migrate", "--config", str(cfg), *flags)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    verified = projmig("verify", "--config", str(cfg), "--quick", *flags)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "equal: 2 projects" in verified.stdout
    unflagged = projmig("verify", "--config", str(cfg), "--quick")  # the cfg.json alone names the original ids
    assert unflagged.returncode == 1 and f"differs: projects {sample.uuid}: missing in the destination" in unflagged.stdout
    other_copy = projmig("verify", "--config", str(cfg), "--quick", *flags[:-1], "another")
    assert other_copy.returncode == 1, other_copy.stdout

    cleaned = projmig("cleanup", "--config", str(cfg), "--older-than", "0s", *flags)
    assert cleaned.returncode == 0 and "0 unfinished uploads aborted" in cleaned.stdout, cleaned.stdout + cleaned.stderr
    rolled = projmig("rollback", "--config", str(cfg), *flags)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "rolled back 2 projects" in rolled.stdout
    assert await destination_state(fixture_simcore) == before
