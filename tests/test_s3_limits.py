"""S3's limits bound what projmig sends: parts of 5 MiB to 5 GiB, at most 10,000 parts (the part size
grows with the object), objects of at most 5 TiB or what the destination takes (refused before any
byte moves, naming the object). Options outside these bounds are refused when the cfg.json is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import get_current_settings

from projmig.errors import ConfigError, PreflightError
from projmig.graph import SourceObject
from projmig.copier import refuse_oversized
from projmig.multipart import own_part_sizes
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.limits import MAX_OBJECT_SIZE
from projmig.settings import MigrationSettings

from .conftest import Simcore
from .test_cli import destination_state

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
PROJMIG = str(Path(sys.executable).parent / "projmig")


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 16 * MiB + 1, 160 * GiB, 161 * GiB, 1 * TiB, 5 * TiB - 1, 5 * TiB])
@pytest.mark.parametrize("chunksize", [5 * MiB, 16 * MiB, 5 * GiB])
def test_own_part_layout_stays_within_s3_limits(size: int, chunksize: int) -> None:
    parts = own_part_sizes(size, chunksize)
    assert sum(parts) == size
    assert len(parts) <= 10_000
    assert all(5 * MiB <= p <= 5 * GiB for p in parts[:-1])
    assert parts[-1] <= 5 * GiB
    assert parts[0] == chunksize or len(parts) == 1 or len(parts) > 9_000  # grown only when 10,000 would not do


def test_objects_larger_than_the_destination_takes_are_named() -> None:
    objects = [SourceObject(key="p/n/ok.bin", size=MAX_OBJECT_SIZE, etag="a"),
               SourceObject(key="p/n/huge.bin", size=MAX_OBJECT_SIZE + 1, etag="b")]
    with pytest.raises(PreflightError) as refused:
        refuse_oversized(objects, MAX_OBJECT_SIZE, "dst")
    (problem,) = refused.value.problems
    assert problem.startswith("source object p/n/huge.bin is 5.0 TiB (5497558138881 bytes): the destination bucket dst")
    many = [SourceObject(key=f"k{i}", size=2, etag="e") for i in range(25)]
    with pytest.raises(PreflightError) as refused:
        refuse_oversized(many, 1, "dst")
    assert len(refused.value.problems) == 11 and refused.value.problems[-1].startswith("and 15 more")


@pytest.mark.parametrize(("option", "value"), [
    ("multipart_chunksize", 5 * MiB - 1), ("multipart_chunksize", 5 * GiB + 1),
    ("multipart_threshold", 5 * MiB - 1), ("multipart_threshold", 5 * GiB + 1),
])
def test_options_outside_the_limits_are_refused(fixture_simcore: Simcore, option: str, value: int) -> None:
    data = fixture_simcore.config("00000000-0000-0000-0000-000000000001")
    data["options"][option] = value
    with pytest.raises(ConfigError) as refused:
        MigrationSettings.parse(data, origin="cfg.json")
    (problem,) = refused.value.problems
    assert problem.startswith(f"cfg.json: options.{option}: Input should be")
    data["destination"]["s3"]["max_object_size"] = 6 * TiB
    data["options"][option] = 16 * MiB
    with pytest.raises(ConfigError, match="destination.s3.max_object_size"):
        MigrationSettings.parse(data, origin="cfg.json")


async def test_an_object_over_the_destinations_limit_is_refused_before_anything_moves(
    fixture_simcore: Simcore, tmp_path: Path, prefect: None
) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=2, multipart_size=6 * MiB, multipart_part_size=5 * MiB, directory_objects=0, hidden_children=0),
    )
    (large,) = [key for key, size in sample.objects.items() if size == 6 * MiB]
    config = fixture_simcore.config(sample.uuid)
    config["destination"]["s3"]["max_object_size"] = 5 * MiB
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    before = await destination_state(fixture_simcore)
    result = subprocess.run([PROJMIG, "migrate", "--config", str(cfg)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (f"error: source object {large} is 6.0 MiB (6291456 bytes): the destination bucket "
                    f"{fixture_simcore.destination_s3.bucket} takes objects of at most 5.0 MiB (destination.s3.max_object_size)")
    assert await destination_state(fixture_simcore) == before
