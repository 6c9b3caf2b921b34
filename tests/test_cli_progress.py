"""`projmig migrate` as a person sees it: in a terminal, a progress bar of bytes with speed and time
left while objects are copied; in the end (terminal or not), the report whose headline is the one
the flow run published as its Prefect artifact."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.settings import get_current_settings

from projmig.sandbox.sample import SampleSpec, build_sample_project

from .conftest import Simcore

PROJMIG = str(Path(sys.executable).parent / "projmig")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_with_terminal_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (where the bar goes) and stdout on a pipe."""
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=300)
    reader.join(10)
    os.close(master)
    return process.returncode, stdout.decode(), ANSI.sub("", b"".join(chunks).decode(errors="replace"))


async def test_progress_bar_in_a_terminal_and_the_same_summary_as_the_artifact(
    fixture_simcore: Simcore, tmp_path: Path, prefect: None
) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=4, directory_objects=2, multipart_size=12 * 1024 * 1024,
                        multipart_part_size=5 * 1024 * 1024, hidden_children=0),
    )
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(fixture_simcore.config(sample.uuid)))
    api = str(get_current_settings().api.url)
    env = {**os.environ, "PREFECT_API_URL": api, "COLUMNS": "150", "TERM": "xterm"}

    code, stdout, terminal = run_with_terminal_stderr([PROJMIG, "migrate", "--config", str(cfg)], env)

    assert code == 0, stdout + terminal
    # the bar: objects to copy, bytes done of the total, speed, time left
    assert f"copying {len(sample.objects)} objects" in terminal, terminal
    assert re.search(r"\d+(\.\d+)?/\d+(\.\d+)? MB", terminal), terminal
    assert re.search(r"(\d+(\.\d+)? [kMG]?B/s)", terminal), terminal
    assert re.search(r"\d:\d\d:\d\d|-:--:--", terminal), terminal
    # the report (no terminal needed): its last line is the headline the flow run published
    headline = stdout.strip().splitlines()[-1]
    assert headline.startswith("migrated 1 project: ") and f"{len(sample.objects)} objects copied" in headline
    async with get_client() as client:
        # the newest first: the session's server holds every earlier test's reports (a page holds 200)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["projmig-report"])),
            sort=ArtifactSort.CREATED_DESC, limit=20,
        )
    assert any(a.description == headline for a in artifacts), (headline, [a.description for a in artifacts])

    # without a terminal: no bar, the same kind of summary (a rerun: nothing to do)
    again = subprocess.run([PROJMIG, "migrate", "--config", str(cfg)], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert "copying" not in again.stderr
    assert again.stdout.strip().splitlines()[-1].startswith("nothing to do: 1 project already migrated")
