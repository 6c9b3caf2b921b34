"""``python -m bench all | smoke | scale | releases | consolidation | large small mixed rerun insert memory [--runs N] [--set option=value]``
(``python -m bench datapaths``: the data paths compared, bench/datapaths.py)

Starts its own servers (two SeaweedFS, two PostgreSQL on 127.0.0.1) and a Prefect server, seeds
the source with the sample builder, measures projmig against rclone / s5cmd / a raw aiobotocore
loop on the same data in the same run, prints one table per scenario and writes
``bench/results/bench-<selection>-<time>.json`` (and ``latest.json``). ``scale`` (not part of
``all``: over an hour here) measures every stage of one project at 1,000 / 10,000 / 100,000 objects
(``--scale-points``); ``releases`` (not part of ``all``) a migration across osparc releases next to
the same one between equal releases at 1, 5 and 20 studies (``--release-studies``; needs osparc's
package: bench/releases.py); ``consolidation`` (not part of ``all``) 50 users × 10 studies into their
own accounts against one owner's 500 studies, and on a Dask cluster (``--consolidation USERSxSTUDIES``:
bench/consolidation.py); ``dask`` (not part of ``all``) the many-small-files migration at 10,000 objects on
a Dask cluster of two worker processes next to one process (``--dask-files N``: bench/cluster.py);
``smoke`` runs everything at tiny sizes (``smoke scale``: only that scenario, at tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster import DaskSizes, run_dask
from .consolidation import ConsolidationSizes, run_consolidation
from .env import BenchEnv
from .releases import ReleasesSizes, run_releases
from .report import table, write_json
from .scale import ScaleSizes, run_scale
from .scenarios import (
    GiB,
    MiB,
    ScenarioResult,
    Sizes,
    SampleSpec,
    memory,
    run_insert,
    run_large,
    run_mixed,
    run_rerun,
    run_small,
)

SCENARIOS = ["large", "small", "mixed", "rerun", "insert", "memory"]  # "all"
EXTRA = ["scale", "releases", "consolidation", "dask"]  # only when named (and in smoke)
RESULTS = Path(__file__).resolve().parent / "results"


def run(
    selection: list[str],
    *,
    runs: int = 3,
    sizes: Sizes | None = None,
    options: dict[str, Any] | None = None,
    workdir: Path | None = None,
    sandbox: Any = None,
    prefect_api_url: str | None = None,
    results_dir: Path = RESULTS,
    log: Callable[[str], None] = print,
    profile: bool = False,
    scale: ScaleSizes | None = None,
    releases: ReleasesSizes | None = None,
    consolidation: ConsolidationSizes | None = None,
    dask: DaskSizes | None = None,
) -> tuple[dict[str, ScenarioResult], Path]:
    """Run the chosen scenarios; returns their results and the JSON file written."""
    began = time.perf_counter()
    load_at_start = _load()
    smoke = "smoke" in selection
    if smoke:  # every scenario at tiny sizes, or those named beside it
        selection = [s for s in selection if s != "smoke"] or [*SCENARIOS, *EXTRA]
    elif "all" in selection:
        selection = list(dict.fromkeys([*SCENARIOS, *(s for s in selection if s in EXTRA)]))
    if "memory" in selection:
        selection = list(dict.fromkeys([*selection, "large", "rerun"]))  # memory is measured in these
    sizes = sizes or (Sizes.smoke() if smoke else Sizes())
    scale = scale or (ScaleSizes.smoke() if smoke else ScaleSizes())
    releases = releases or (ReleasesSizes.smoke() if smoke else ReleasesSizes())
    consolidation = consolidation or (ConsolidationSizes.smoke() if smoke else ConsolidationSizes())
    dask = dask or (DaskSizes.smoke() if smoke else DaskSizes())
    options = options or {}
    root = Path(workdir or tempfile.mkdtemp(prefix="projmig-bench-"))
    if not smoke and sizes.large >= GiB and shutil.disk_usage(root).free < 8 * GiB:
        log("less than 8 GiB free: the large scenario uses 512 MiB")
        sizes.large = 512 * MiB
    env = BenchEnv(root, sandbox=sandbox, prefect_api_url=prefect_api_url)
    if profile:
        env.profile_dir = results_dir / "profiles"
    results: dict[str, ScenarioResult] = {}
    try:
        log(f"starting servers in {root} ...")
        env.start()
        log(f"  servers and Prefect API up in {env.startup_seconds:.1f} s ({env.prefect_api_url})")
        if not smoke:
            _warm_up(env, log)
        rerun_sample = None
        for name in [s for s in [*SCENARIOS, *EXTRA] if s in selection and s != "memory"]:
            log(f"-- {name}")
            started = time.perf_counter()
            if name == "large":
                res = run_large(env, runs, sizes, options, log)
            elif name == "small":
                res = run_small(env, runs, sizes, options, log)
            elif name == "mixed":
                res = run_mixed(env, runs, sizes, options, log)
            elif name == "rerun":
                res, rerun_sample = run_rerun(env, runs, sizes, options, log)
            elif name == "scale":
                res = run_scale(env, runs, scale, options, log)
            elif name == "releases":
                res = run_releases(env, runs, releases, options, log)
            elif name == "consolidation":
                res = run_consolidation(env, runs, consolidation, options, log)
            elif name == "dask":
                res = run_dask(env, runs, dask, options, log)
            else:
                if rerun_sample is None:
                    rerun_sample = env.seed(SampleSpec(
                        nodes=sizes.rerun_nodes, files=sizes.rerun_files, file_size=sizes.rerun_size,
                        exact_file_size=True, directory_objects=0, soft_link=False, multipart_size=0,
                        hidden_children=0, deployment_bound_rows=False, special_names=False, name="bench insert"))
                res = run_insert(env, runs, rerun_sample, log)
            res.seconds = time.perf_counter() - started
            results[name] = res
            log(table(res))
            log("")
        if "memory" in selection:
            results["memory"] = memory(results)
            log(table(results["memory"]))
    finally:
        log("stopping servers ...")
        env.stop()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - began
    meta = {"selection": "+".join(["smoke"] * smoke + selection), "runs": runs, "options": options,
            "sizes": sizes.__dict__, "total_seconds": round(total, 1), "prefect_api": "bench-wide server"
            if prefect_api_url is None else "given", "load_average": {"start": load_at_start, "end": _load()}}
    if "scale" in selection:
        meta["scale_sizes"] = scale.__dict__
    if "releases" in selection:
        meta["releases_sizes"] = releases.__dict__
    if "consolidation" in selection:
        meta["consolidation_sizes"] = consolidation.__dict__
    if "dask" in selection:
        meta["dask_sizes"] = dask.__dict__
    path = write_json(results, results_dir, meta)
    picture = _draw(path, log)
    log(f"load average (1/5/15 min) at the start {load_at_start}, at the end {meta['load_average']['end']} "
        f"({os.cpu_count()} cores)")
    log(f"\nmet: {sum(t.met for r in results.values() for t in r.targets)} of "
        f"{sum(len(r.targets) for r in results.values())} targets; bench took {total:.0f} s; results in {path}"
        + (f" (picture: {picture})" if picture else ""))
    return results, path


def _draw(path: Path, log: Callable[[str], None]) -> Path | None:
    """The results' picture beside their JSON (and as latest.png), if matplotlib is installed."""
    try:
        from .plot import draw

        picture = draw(json.loads(path.read_text()), path.with_suffix(".png"))
    except ImportError:
        log("no picture drawn: matplotlib is not installed (pip install -e '.[bench]')")
        return None
    except ValueError as exc:  # e.g. only the releases scenario: no chart of its kind
        log(f"no picture drawn: {exc}")
        return None
    shutil.copyfile(picture, path.parent / "latest.png")
    return picture


def _load() -> list[float]:
    """The machine's load averages (1, 5, 15 min): other work on the cores skews wall times."""
    return [round(x, 2) for x in os.getloadavg()]


def _warm_up(env: BenchEnv, log: Callable[[str], None]) -> None:
    """One small migration first: Prefect's first flow run in a new database is slow (once)."""
    from . import tools

    started = time.perf_counter()
    sample = env.seed(SampleSpec(nodes=1, files=3, hidden_children=0, multipart_size=0, directory_objects=0,
                                 deployment_bound_rows=False, special_names=False, name="bench warm-up"))
    dest = env.fresh_destination()
    try:
        tools.projmig(env, sample.uuid, dest)
    finally:
        env.drop_destination(dest)
    log(f"  warm-up migration in {time.perf_counter() - started:.1f} s")


def _parse_set(values: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in values:
        key, _, value = item.partition("=")
        try:
            options[key] = int(value)
        except ValueError:
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["datapaths"]:  # the data paths side by side (bench/datapaths.py)
        from .datapaths import main as datapaths

        return datapaths(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="+", choices=["all", "smoke", *SCENARIOS, *EXTRA])
    parser.add_argument("--runs", type=int, default=None, help="runs per tool (default 3; smoke: 1)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="a projmig MigrationOptions value for the projmig runs (e.g. task_concurrency=8)")
    parser.add_argument("--large-mib", type=int, default=None, help="size of the large object (default 1024)")
    parser.add_argument("--scale-points", default=None, metavar="N,N,...",
                        help="project sizes (objects) of the scale scenario (default 1000,10000,100000)")
    parser.add_argument("--release-studies", default=None, metavar="N,N,...",
                        help="studies per migration of the releases scenario (default 1,5,20)")
    parser.add_argument("--consolidation", default=None, metavar="USERSxSTUDIES",
                        help="users and studies per user of the consolidation scenario (default 50x10)")
    parser.add_argument("--dask-files", type=int, default=None, help="files of the dask scenario (default 10000)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the servers' data here (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true",
                        help="record every projmig run with py-spy into <results>/profiles (see bench/profile.py)")
    args = parser.parse_args(argv)
    smoke = "smoke" in args.scenarios
    sizes = Sizes.smoke() if smoke else Sizes()
    if args.large_mib:
        sizes.large = args.large_mib * MiB
    runs = args.runs or (1 if smoke else 3)
    scale = ScaleSizes.smoke() if smoke else ScaleSizes()
    if args.scale_points:
        scale.points = tuple(int(n) for n in args.scale_points.split(","))
    releases = ReleasesSizes.smoke() if smoke else ReleasesSizes()
    if args.release_studies:
        releases.studies = tuple(int(n) for n in args.release_studies.split(","))
    consolidation = ConsolidationSizes.smoke() if smoke else ConsolidationSizes()
    if args.consolidation:
        users, _, studies = args.consolidation.lower().partition("x")
        consolidation.users, consolidation.studies_per_user = int(users), int(studies)
    dask = DaskSizes.smoke() if smoke else DaskSizes()
    if args.dask_files:
        dask.files = args.dask_files
    run(args.scenarios, runs=runs, sizes=sizes, options=_parse_set(args.set), workdir=args.workdir,
        results_dir=args.results, profile=args.profile, scale=scale, releases=releases, consolidation=consolidation,
        dask=dask)
    return 0


if __name__ == "__main__":
    sys.exit(main())
