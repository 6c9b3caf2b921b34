"""The benchmark's smoke run (every scenario, tiny sizes, one run each) on the suite's servers, so
that ``python -m bench`` keeps working, in three parts that the suite's workers run side by side.
It asserts what was measured, never how fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cluster
from bench.__main__ import SCENARIOS, run
from bench.consolidation import CONSOLIDATION, DASK, SINGLE, ConsolidationSizes
from bench.releases import ACROSS, PHASES, SAME, ReleasesSizes, label
from bench.scale import STAGES, ScaleSizes
from bench.scenarios import Sizes
from projmig.sandbox import Sandbox


def smoke(selection: list[str], sandbox: Sandbox, tmp_path) -> tuple[dict, Path, str]:
    """``python -m bench smoke <selection>`` on the suite's servers and Prefect API: (results, the JSON
    written, what it printed)."""
    from prefect.settings import PREFECT_API_URL

    lines: list[str] = []
    results, path = run(["smoke", *selection], runs=1, sizes=Sizes.smoke(), sandbox=sandbox,
                        prefect_api_url=PREFECT_API_URL.value(), workdir=tmp_path / "work",
                        results_dir=tmp_path / "results", log=lines.append)
    assert set(results) == set(selection) and set(json.loads(path.read_text())["scenarios"]) == set(selection)
    for deployment in (sandbox.source, sandbox.destination):
        for secret in (deployment.s3_secret_key, deployment.pg_password):
            assert secret not in path.read_text()
    return results, path, "\n".join(lines)


@pytest.mark.timeout(900)  # ~1 min on a quiet machine; a guard against a hang, not a timing
def test_every_scenario_of_all_measures_every_tool_on_the_same_data(sandbox: Sandbox, prefect: None, tmp_path) -> None:
    sizes = Sizes.smoke()
    results, path, printed = smoke(SCENARIOS, sandbox, tmp_path)

    for name in ("large", "small", "mixed", "rerun"):
        tools = results[name].samples
        assert any(t.startswith("projmig") for t in tools) and any(t.startswith("rclone") for t in tools), name
        assert f"== {name}:" in printed
        for tool, samples in tools.items():
            assert samples and all(s.seconds > 0 for s in samples), (name, tool)
    assert {"s5cmd down+up", "raw aiobotocore"} <= set(results["large"].samples)

    def projmig_detail(name: str, tool: str) -> dict:
        return results[name].samples[tool][0].detail

    large = projmig_detail("large", "projmig (flow)")
    assert large["status"] == "migrated" and large["objects_copied"] == 1 and large["bytes_copied"] == sizes.large
    small = projmig_detail("small", "projmig (flow)")
    assert small["objects_copied"] == sizes.small_files and small["task_runs"] > 0
    library = projmig_detail("small", "projmig library, no Prefect (pipeline)")  # the same migration, no flow
    assert library["status"] == "migrated" and library["objects_copied"] == sizes.small_files and "task_runs" not in library
    assert "Prefect's cost (the same migration without it" in printed
    rerun = projmig_detail("rerun", "projmig rerun (flow)")
    assert rerun["objects_copied"] == 0 and rerun["bytes_copied"] == 0 and rerun["copy_task_runs"] == 0
    insert = projmig_detail("insert", "projmig insert (flow)")
    assert insert["rows_per_table"]["file_meta_data"] == sizes.rerun_files
    assert results["memory"].targets and "peak RSS" in printed
    assert "projmig time split" in printed and printed.splitlines()[-1].startswith("met: ")
    written = json.loads(path.read_text())
    assert written["meta"]["load_average"]["start"] and written["meta"]["selection"] == "+".join(["smoke", *SCENARIOS])
    picture = path.with_suffix(".png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (path.parent / "latest.png").exists()


@pytest.mark.timeout(900)
def test_scale_and_across_releases_measure_every_stage_at_every_size(sandbox: Sandbox, prefect: None, tmp_path) -> None:
    results, path, printed = smoke(["scale", "releases"], sandbox, tmp_path)

    # the scale scenario: every stage at every size, on projects of the sizes asked for
    curve = results["scale"].split["curve"]
    scale = ScaleSizes.smoke()
    assert curve["objects"] == list(scale.points) and curve["file_rows"][0] < curve["objects"][0]
    for stage in (*STAGES, "rclone copy", "s5cmd down+up", "rclone copy --checksum"):
        assert all(s > 0 for s in curve["stages"][stage]["seconds"]), stage
    for n in scale.points:
        first = results["scale"].samples[f"scale {n:,}: first migration"][0].detail
        assert first["objects_copied"] == n and first["status"] == "migrated"
        verify = results["scale"].samples[f"scale {n:,}: verify"][0].detail
        assert verify["equal"] and verify["objects_checked"] == n
    assert curve["file_rows_insert"]["file_rows"] == scale.points[-1]
    assert "objects:" in printed and "no-op rerun" in printed

    # across osparc releases: both kinds at every size, the staging's phases measured by the cross-release runs
    releases = results["releases"]
    if "skipped" in releases.split:  # (no osparc package here: said in one line)
        assert "skipped: osparc-simcore's packages/postgres-database not found" in printed
    else:
        points = ReleasesSizes.smoke().studies
        for n in points:
            across = releases.samples[f"{label(ACROSS, n)} (flow)"][0].detail
            same = releases.samples[f"{label(SAME, n)} (flow)"][0].detail
            assert across["status"] == same["status"] == "migrated"
            assert across["objects_copied"] == same["objects_copied"] > 0 and across["projects"] == same["projects"]
            assert across["release"]["path"].startswith("upgrade 447db39c5455 -> ") and same["release"] == {}
            assert set(PHASES) <= set(across["release"]["seconds"]) and across["release"]["seconds"]["total"] > 0
            assert releases.split["points"][str(n)]["staged_rows"]["projects"] == across["projects"]
        assert len(releases.targets) == len(points) and "extra (flow)" in printed and "staging: template" in printed
    assert json.loads(path.read_text())["meta"]["scale_sizes"]["points"] == list(scale.points)
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # (the scale curve)


@pytest.mark.timeout(900)
def test_consolidation_and_a_dask_cluster_migrate_every_study(sandbox: Sandbox, prefect: None, tmp_path) -> None:
    results, _, printed = smoke(["consolidation", "dask"], sandbox, tmp_path)

    # the consolidation: every user into their own account, beside one owner's as many studies, and on Dask
    consolidation = results["consolidation"]
    sizes_c = ConsolidationSizes.smoke()
    for tool in (CONSOLIDATION, SINGLE, DASK):
        detail = consolidation.samples[f"{tool} (flow)"][0].detail
        assert detail["status"] == "migrated" and detail["projects"] == sizes_c.studies, tool
        assert detail["objects_copied"] == consolidation.objects == sizes_c.studies * sizes_c.files, tool
    assert consolidation.samples[f"{CONSOLIDATION} (flow)"][0].detail["users"] == sizes_c.users
    assert set(consolidation.split["ratios"]) == {"consolidation / single user", "consolidation, dask / consolidation",
                                                  "consolidation, dask / single user"}
    assert "objects/s, consolidation / single user" in printed

    # copy task runs on a real Dask cluster (a scheduler and two worker processes) beside one process
    dask = results["dask"]
    for tool in (cluster.SINGLE, cluster.CLUSTER):
        detail = dask.samples[f"{tool} (flow)"][0].detail
        assert detail["status"] == "migrated" and detail["objects_copied"] == cluster.DaskSizes.smoke().files, tool
    assert "on the cluster:" in printed
