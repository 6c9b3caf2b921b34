"""The scale scenario: one project at growing sizes (default 1,000 / 10,000 / 100,000 objects: half
of them files, half in directory entries of 25 objects), and at each size every stage an operator
runs: ``plan``, the first migration, a no-op rerun (beside ``rclone copy --checksum`` on the same
data), ``verify`` (SHA-256 of every object) and the insert alone; peak RSS of each. At the largest
size (100,000 or more) the insert is measured once more on a project of that many file rows.

Beside the first migration, ``rclone copy`` and s5cmd (download, then upload) of the same objects
into an empty bucket. Targets (issue 26): the first migration at the largest size at least as fast as
``rclone copy``, its time and CPU per object no higher than at the size before; the no-op rerun at
least 2x ``rclone copy --checksum``; every stage's peak RSS under 600 MB. The other stages' growth
per object is shown, not a target. Wall time and CPU time are both recorded; on a busy machine the CPU seconds of projmig's process
are the steadier measure of the work it does (servers and other load change the wall time).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from projmig.sandbox.sample import SampleProject, SampleSpec

from . import tools
from .env import BenchEnv, Destination
from .scenarios import BARE, KiB, ScenarioResult, Target, run_rounds
from .tools import Sample

STAGES = ("plan", "first migration", "no-op rerun", "verify", "insert")
PEERS = ("rclone copy", "s5cmd down+up", "rclone copy --checksum")  # the other tools, as rows of the curve
LINEAR_LIMIT = 1.0  # the first migration's time (and CPU) per object at the largest size / at the size before
RERUN_LIMIT = 2.0  # rclone copy --checksum / projmig's no-op rerun
OBJECTS_PER_DIRECTORY = 25
EXPENSIVE = ("first migration", "verify")  # run once per size above ONCE_ABOVE objects
ONCE_ABOVE = 10_000


@dataclass
class ScaleSizes:
    points: tuple[int, ...] = (1_000, 10_000, 100_000)
    object_size: int = 1 * KiB
    nodes: int = 100
    rss_limit_mb: float = 600.0
    insert_rows_limit_s: float = 10.0  # the insert of `points[-1]` file rows, at the largest size only
    rows_sample_from: int = 100_000  # the dedicated file-rows insert runs when points[-1] >= this

    @classmethod
    def smoke(cls) -> ScaleSizes:
        return cls(points=(40, 200), nodes=3, rows_sample_from=200)


def scale_spec(objects: int, sizes: ScaleSizes) -> SampleSpec:
    """``objects`` objects: half of them files, half in directory entries of 25 objects."""
    directories = max(1, objects // (2 * OBJECTS_PER_DIRECTORY))
    files = objects - directories * OBJECTS_PER_DIRECTORY
    return SampleSpec(**{
        **BARE, "nodes": min(sizes.nodes, files), "files": files, "file_size": sizes.object_size,
        "exact_file_size": True, "directory_objects": OBJECTS_PER_DIRECTORY, "directories": directories,
        "directory_object_size": sizes.object_size, "name": f"bench scale {objects}",
    })


@dataclass
class _Point:
    objects: int
    rows: int
    seed_seconds: float
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def _stage_cpu(sample: Sample) -> float:
    detail = sample.detail
    mode = detail.get("mode", "cli")
    return detail["cpu_seconds"] if mode == "cli" else detail[f"{mode}_cpu_seconds"]


def run_scale(env: BenchEnv, runs: int, sizes: ScaleSizes, options: dict[str, Any],
              log: Callable[[str], None]) -> ScenarioResult:
    points = sorted(sizes.points)
    result = ScenarioResult(
        "scale", f"one project of {', '.join(f'{n:,}' for n in points)} objects (half files, half in directories "
        f"of {OBJECTS_PER_DIRECTORY}; {sizes.object_size // KiB} KiB each)", runs, 0, 0, reference="",
    )
    measured: list[_Point] = []
    for n in points:
        measured.append(_measure_point(env, n, runs if n <= ONCE_ABOVE else 1, runs, sizes, options, result, log))
    rows_sample = None
    if points[-1] >= sizes.rows_sample_from:
        rows_sample = _insert_file_rows(env, points[-1], runs, sizes, result, log)
    _summarize(result, measured, rows_sample, sizes)
    return result


def _measure_point(env: BenchEnv, n: int, expensive_runs: int, runs: int, sizes: ScaleSizes, options: dict[str, Any],
                   result: ScenarioResult, log: Callable[[str], None]) -> _Point:
    began = time.perf_counter()
    sample = env.seed(scale_spec(n, sizes))
    point = _Point(len(sample.objects), len(sample.file_ids), time.perf_counter() - began)
    log(f"  {n:,}: seeded {point.objects:,} objects and {point.rows:,} file rows in {point.seed_seconds:.1f} s")
    label = f"scale {n:,}"

    def keep(stage: str, out: Sample | tuple[Sample, Sample] | list[Sample]) -> list[Sample]:
        flow = out[0] if isinstance(out, (tuple, list)) else out
        flow = Sample(f"{label}: {stage}", flow.seconds, flow.peak_rss_mb, flow.tree_peak_rss_mb,
                      _stage_cpu(flow), flow.detail)
        point.samples.setdefault(stage, []).append(flow)
        return [flow]

    dest = env.fresh_destination()
    try:
        steps: list[Callable[[], Any]] = [
            lambda: keep("plan", tools.projmig(env, sample.uuid, dest, mode="plan", label="plan")),
        ]
        run_rounds(runs, steps, result, log)

        # each first migration into an empty destination; the last one's is where the reruns go
        for run in range(expensive_runs):
            target = dest if run == expensive_runs - 1 else None
            run_rounds(1, [lambda: keep("first migration", _first(env, sample, options, target))], result, log)
        first = point.samples["first migration"][-1].detail
        assert first["objects_copied"] == point.objects, first

        def peer(tool: str, copy: Callable[[Destination], Sample]) -> Callable[[], list[Sample]]:
            def step() -> list[Sample]:
                bucket = env.fresh_destination(with_db=False)
                try:
                    out = copy(bucket)
                finally:
                    env.drop_destination(bucket)
                point.samples.setdefault(tool, []).append(out)
                return [Sample(f"{label}: {tool}", out.seconds, out.peak_rss_mb, out.tree_peak_rss_mb, out.cpu_seconds)]

            return step

        run_rounds(expensive_runs, [
            peer("rclone copy", lambda d: tools.rclone(env, sample.uuid, d)),
            peer("s5cmd down+up", lambda d: tools.s5cmd_down_up(env, sample.uuid, d)),
        ], result, log)

        def rerun() -> list[Sample]:
            out = tools.projmig(env, sample.uuid, dest, options=options, label="rerun")
            assert out[0].detail["status"] == "already-migrated" and out[0].detail["copy_task_runs"] == 0, out[0].detail
            return keep("no-op rerun", out)

        def rclone() -> list[Sample]:
            out = tools.rclone(env, sample.uuid, dest, flags=["--checksum"], label="rclone copy --checksum")
            point.samples.setdefault("rclone copy --checksum", []).append(out)
            return [Sample(f"{label}: rclone copy --checksum", out.seconds, out.peak_rss_mb, out.tree_peak_rss_mb,
                           out.cpu_seconds)]

        run_rounds(runs, [rerun, rclone], result, log)

        def verify() -> list[Sample]:
            out = tools.projmig(env, sample.uuid, dest, mode="verify", label="verify")
            assert out[0].detail["equal"], out[0].detail["differences"]
            return keep("verify", out)

        run_rounds(expensive_runs, [verify], result, log)
    finally:
        env.drop_destination(dest)
    run_rounds(runs, [lambda: keep("insert", _insert(env, sample))], result, log)
    return point


def _first(env: BenchEnv, sample: SampleProject, options: dict[str, Any], dest: Destination | None) -> tuple[Sample, Sample]:
    """A first migration into ``dest`` (kept), or into a fresh destination (dropped after)."""
    target = dest or env.fresh_destination()
    try:
        return tools.projmig(env, sample.uuid, target, options=options, label="first migration")
    finally:
        if dest is None:
            env.drop_destination(target)


def _insert(env: BenchEnv, sample: SampleProject) -> tuple[Sample, Sample]:
    dest = env.fresh_destination()
    try:
        return tools.projmig(env, sample.uuid, dest, mode="insert", label="insert")
    finally:
        env.drop_destination(dest)


def _insert_file_rows(env: BenchEnv, rows: int, runs: int, sizes: ScaleSizes, result: ScenarioResult,
                      log: Callable[[str], None]) -> list[Sample]:
    began = time.perf_counter()
    sample = env.seed(SampleSpec(**{**BARE, "nodes": sizes.nodes, "files": rows, "file_size": 0,
                                    "exact_file_size": True, "name": f"bench {rows} file rows"}))
    log(f"  seeded {len(sample.file_ids):,} file rows (empty objects) in {time.perf_counter() - began:.1f} s")
    samples: list[Sample] = []

    def one() -> list[Sample]:
        flow, _ = _insert(env, sample)
        samples.append(Sample(f"insert of {rows:,} file rows", flow.seconds, flow.peak_rss_mb,
                              flow.tree_peak_rss_mb, _stage_cpu(flow), flow.detail))
        return samples[-1:]

    run_rounds(runs, [one], result, log)
    return samples


def _median(samples: list[Sample], what: str = "seconds") -> float:
    return statistics.median(s.cpu_seconds if what == "cpu" else s.seconds for s in samples)


def _summarize(result: ScenarioResult, points: list[_Point], rows_sample: list[Sample] | None, sizes: ScaleSizes) -> None:
    curve: dict[str, Any] = {"objects": [p.objects for p in points], "file_rows": [p.rows for p in points],
                             "seed_seconds": [round(p.seed_seconds, 1) for p in points], "stages": {}}
    for stage in (*STAGES, *PEERS):
        curve["stages"][stage] = {
            "seconds": [round(_median(p.samples[stage]), 3) for p in points],
            "cpu_seconds": [round(_median(p.samples[stage], "cpu"), 3) for p in points],
            "runs": [len(p.samples[stage]) for p in points],
            "us_per_object": [round(1e6 * _median(p.samples[stage]) / p.objects, 1) for p in points],
            "peak_rss_mb": [round(max(s.peak_rss_mb for s in p.samples[stage]), 1) for p in points],
        }
    result.split = {"curve": curve}
    width = 28
    header = f"{'objects:':24}" + "".join(f"{p.objects:>{width},}" for p in points)
    result.notes.append(f"{header}   (median s [CPU s] µs/object)")
    for stage, data in curve["stages"].items():
        cells = "".join(
            f"{f'{s:.2f} [{c:.1f}] {u:.0f}':>{width}}"
            for s, c, u in zip(data["seconds"], data["cpu_seconds"], data["us_per_object"])
        )
        result.notes.append(f"{stage:24}{cells}")
    result.notes.append(f"{'peak RSS MB (any stage)':24}" + "".join(
        f"{max(max(s.peak_rss_mb for s in p.samples[st]) for st in STAGES):>{width}.0f}" for p in points))
    result.notes.append(f"{'seeding the source (s)':24}" + "".join(f"{p.seed_seconds:>{width}.1f}" for p in points))

    last, before = points[-1], points[-2] if len(points) > 1 else None
    first = last.samples["first migration"]
    result.targets.append(Target(
        f"rclone copy time / projmig first migration time at {last.objects:,}",
        _median(last.samples["rclone copy"]) / _median(first), 1.0, True,
        note=f"(s5cmd down+up: {_median(last.samples['s5cmd down+up']) / _median(first):.2f}x)",
    ))
    if before is not None:
        for stage in STAGES:
            def per_object(p: _Point, what: str = "seconds") -> float:
                return _median(p.samples[stage], what) / p.objects

            wall = per_object(last) / per_object(before)
            cpu = per_object(last, "cpu") / max(1e-9, per_object(before, "cpu"))
            growth = f"{stage}: per object at {last.objects:,} / at {before.objects:,}"
            if stage == "first migration":
                result.targets.append(Target(f"{growth}, time", wall, LINEAR_LIMIT, False, inclusive=True))
                result.targets.append(Target(f"{growth}, CPU", cpu, LINEAR_LIMIT, False, inclusive=True))
            else:
                result.notes.append(f"{growth}: time {wall:.2f}x, CPU {cpu:.2f}x")
    rerun, rclone = last.samples["no-op rerun"], last.samples["rclone copy --checksum"]
    result.targets.append(Target(
        f"rclone --checksum time / projmig no-op rerun time at {last.objects:,}", _median(rclone) / _median(rerun),
        RERUN_LIMIT, True,
    ))
    stages = {stage: max(s.peak_rss_mb for p in points for s in p.samples[stage]) for stage in STAGES}
    if rows_sample:
        stages["insert of the file rows"] = max(s.peak_rss_mb for s in rows_sample)
    worst = max(stages, key=stages.__getitem__)
    result.targets.append(Target(f"peak RSS of a projmig process, every stage at every size ({worst})",
                                 stages[worst], sizes.rss_limit_mb, False, " MB"))
    if rows_sample:
        rows = rows_sample[0].detail["rows_per_table"]["file_meta_data"]
        seconds = _median(rows_sample)
        curve["file_rows_insert"] = {"file_rows": rows, "seconds": round(seconds, 3),
                                     "cpu_seconds": round(_median(rows_sample, "cpu"), 3),
                                     "rows_inserted": rows_sample[0].detail["rows_inserted"]}
        result.targets.append(Target(f"insert of {rows:,} file rows in one transaction", seconds,
                                     sizes.insert_rows_limit_s, False, " s", note=f"({rows / seconds:,.0f} rows/s)"))
