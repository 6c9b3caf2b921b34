"""Project names are untrusted text: every `projmig` command prints them literally (no rich markup,
no terminal escape, no line break of their own), and the migration's markdown report escapes them.

One project named with rich markup, markdown table and HTML syntax, a newline and an ANSI escape goes
through plan, migrate (terminal and Prefect artifacts), verify (a difference naming it) and rollback
(a refusal naming it, then the removal), each as an operator runs it (a real process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import get_current_settings

from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.text import markdown_text, printable

from .conftest import Simcore

PROJMIG = str(Path(sys.executable).parent / "projmig")
NAME = "Study [bold]x[/] [v2] [link=http://x]y[/link] | `code` <b>bold</b> :smile:\nsecond line \x1b[31mred\x1b[0m"
RENAMED = "[red]renamed[/] | <i>it</i>\n\x1b[2J"


def projmig(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    return subprocess.run([PROJMIG, *args], capture_output=True, text=True, timeout=300, env=env)


def assert_literal(output: str, name: str) -> None:
    """``name`` appears as its repr (how plan and rollback quote names) or as itself, one line, no escape."""
    assert "\x1b" not in output, output
    assert printable(repr(name)) in output or printable(name) in output, output


async def set_name(simcore: Simcore, uuid: str, name: str, *, touch: bool = False) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        change = ", last_change_date = last_change_date + interval '1 day'" if touch else ""
        await conn.execute(f"UPDATE projects SET name = $1{change} WHERE uuid = $2", name, uuid)
    finally:
        await conn.close()


def markdown_rows(markdown: str) -> list[list[str]]:
    """The cells of every table row, split at unescaped ``|`` only."""
    return [re.split(r"(?<!\\)\|", line)[1:-1] for line in markdown.splitlines() if line.startswith("|")]


async def test_names_are_printed_literally_by_every_command(fixture_simcore: Simcore, tmp_path: Path, prefect: None) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=2, multipart_size=0, directory_objects=0, hidden_children=0, name=NAME),
    )
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))

    planned = projmig("plan", "--config", str(cfg))
    assert planned.returncode == 0, planned.stderr
    assert_literal(planned.stdout, NAME)
    (line,) = [line for line in planned.stdout.splitlines() if sample.uuid in line]  # the name did not split it
    assert line.startswith(f"  {sample.uuid}  {printable(repr(NAME))} (study)"), line

    migrated = projmig("migrate", "--config", str(cfg))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert_literal(migrated.stdout + migrated.stderr, NAME)
    (row,) = [line for line in migrated.stdout.splitlines() if sample.uuid in line]
    assert printable(NAME) in row
    async with get_client() as client:
        (report,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["projmig-report"])), limit=1, sort="CREATED_DESC"
        )
        (table,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["projmig-projects"])), limit=1, sort="CREATED_DESC"
        )
    markdown = str(report.data)
    assert markdown_text(NAME) in markdown
    for raw in ("\x1b", "<b>", "`code`", "[bold]", "\nsecond line"):
        assert raw not in markdown, raw
    projects = [cells for cells in markdown_rows(markdown) if sample.uuid in cells[0]]
    assert len(projects) == 1 and len(projects[0]) == 7, markdown  # the name's | and newline split no cell
    assert [r["name"] for r in json.loads(str(table.data))] == [NAME]  # a table artifact is data, shown as text

    # verify: equal, then a difference naming both names
    verified = projmig("verify", "--config", str(cfg))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    await set_name(fixture_simcore, sample.uuid, RENAMED)
    verified = projmig("verify", "--config", str(cfg))
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "\x1b" not in verified.stdout
    differs = [line for line in verified.stdout.splitlines() if line.startswith("differs:")]
    assert any(printable(repr(RENAMED)) in d and printable(repr(NAME)) in d for d in differs), verified.stdout

    # rollback: refused naming the changed project (one error line), then removed
    await set_name(fixture_simcore, sample.uuid, RENAMED, touch=True)
    refused = projmig("rollback", "--config", str(cfg))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (error,) = refused.stderr.strip().splitlines()
    assert error.startswith("error: ") and printable(repr(RENAMED)) in error and "\x1b" not in error, error
    await set_name(fixture_simcore, sample.uuid, NAME, touch=False)
    conn = await asyncpg.connect(asyncpg_dsn(fixture_simcore.destination_db))
    await conn.execute("UPDATE projects SET last_change_date = last_change_date - interval '1 day' WHERE uuid = $1", sample.uuid)
    await conn.close()
    dry = projmig("rollback", "--config", str(cfg), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert_literal(dry.stdout, NAME)
    (line,) = [line for line in dry.stdout.splitlines() if sample.uuid in line]
    assert printable(repr(NAME)) in line and line.endswith("would remove"), line
    removed = projmig("rollback", "--config", str(cfg))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "rolled back 1 project" in removed.stdout and "\x1b" not in removed.stdout
