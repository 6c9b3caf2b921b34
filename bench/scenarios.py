"""The scenarios of issue 4, each measured against rclone (and s5cmd / raw aiobotocore where they
apply), tools interleaved within every round so that background load hits them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from projmig.sandbox.sample import SampleProject, SampleSpec

from . import tools
from .env import BenchEnv
from .tools import Sample

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# what the sample builder adds unless told otherwise: none of it in a benchmark's data
BARE = dict(directory_objects=0, soft_link=False, multipart_size=0, hidden_children=0,
            deployment_bound_rows=False, special_names=False)


@dataclass
class Target:
    what: str
    value: float
    limit: float
    higher_is_better: bool
    unit: str = "x"
    note: str = ""
    inclusive: bool = False  # a lower-is-better limit that may be reached ("no higher than")

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.value >= self.limit
        return self.value <= self.limit if self.inclusive else self.value < self.limit

    def line(self) -> str:
        op = ">=" if self.higher_is_better else ("<=" if self.inclusive else "<")
        mark = "MET" if self.met else "NOT MET"
        fmt = f"{self.value:.2f}{self.unit}"
        return f"{mark:7}  {self.what}: {fmt} (target {op} {self.limit:g}{self.unit}){'  ' + self.note if self.note else ''}"


@dataclass
class ScenarioResult:
    name: str
    title: str
    runs: int
    objects: int
    bytes: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    reference: str = "projmig (flow)"
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    split: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, sample: Sample) -> None:
        self.samples.setdefault(sample.tool, []).append(sample)

    def median(self, tool: str) -> float:
        return statistics.median(s.seconds for s in self.samples[tool])

    def ratio(self, tool: str, reference: str | None = None) -> float:
        """How many times as fast the reference (projmig) is as ``tool``: > 1 means projmig wins."""
        return self.median(tool) / self.median(reference or self.reference)

    def peak_rss(self, tool: str) -> float:
        return max(s.peak_rss_mb for s in self.samples[tool])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "runs": self.runs, "objects": self.objects, "bytes": self.bytes,
            "seconds": round(self.seconds, 1),
            "tools": {
                tool: {
                    "median_seconds": round(self.median(tool), 4),
                    "runs_seconds": [round(s.seconds, 4) for s in samples],
                    "mb_per_s": round(self.bytes / MiB / self.median(tool), 2) if self.bytes else None,
                    "objects_per_s": round(self.objects / self.median(tool), 1) if self.objects else None,
                    "peak_rss_mb": round(self.peak_rss(tool), 1),
                    "cpu_seconds": round(statistics.median(s.cpu_seconds for s in samples), 2),
                    "tree_peak_rss_mb": round(max(s.tree_peak_rss_mb for s in samples), 1),
                    "projmig_speedup": round(self.ratio(tool), 3) if self.reference in self.samples else None,
                    "details": [s.detail for s in samples if s.detail],
                }
                for tool, samples in self.samples.items()
            },
            "split": self.split,
            "targets": [{**t.__dict__, "met": t.met} for t in self.targets],
            "notes": self.notes,
        }


def projmig_split(result: ScenarioResult, tool: str = "projmig (flow)") -> None:
    """Median time split of projmig's flow: library work (transfers) vs. Prefect orchestration."""
    details = [s.detail for s in result.samples[tool]]
    med = lambda key: statistics.median(d[key] for d in details)  # noqa: E731
    result.split = {
        "flow_seconds": round(med("flow_seconds"), 3),
        "library_seconds": round(med("library_seconds"), 3),
        "transfer_seconds": round(med("transfer_seconds"), 3),
        "overhead_seconds": round(med("overhead_seconds"), 3),
        "overhead_share": round(statistics.median(d["overhead_seconds"] / d["flow_seconds"] for d in details), 4),
        "task_runs": int(med("task_runs")),
        "copy_task_runs": int(med("copy_task_runs")),
        "ms_per_task_run": round(med("ms_per_task_run"), 1),
        "cpu_seconds": round(med("cpu_seconds"), 2),
        "import_seconds": round(med("import_seconds"), 2),
    }
    stages = {k: round(statistics.median(d["stages"].get(k, 0.0) for d in details), 3) for k in details[0]["stages"]}
    result.split["stages"] = stages  # type: ignore[assignment]


SPREAD_LIMIT = 0.20  # a tool whose rounds spread more than this (max - min over the median)...
SPREAD_ROUNDS = 5  # ...gets its scenario run to this many rounds


def run_rounds(runs: int, steps: list[Callable[[], list[Sample] | Sample]], result: ScenarioResult, log: Callable[[str], None]) -> None:
    """``runs`` rounds of ``steps``; if any tool's rounds spread more than 20 % (and ``runs`` is at
    least 3), more rounds up to 5."""
    added: dict[str, list[float]] = {}
    total = runs
    run = 0
    while run < total:
        # each round starts one tool later: no tool always runs right after the same other one
        # (what one run leaves behind, a bucket being dropped or a warm cache, falls on each tool in turn)
        for step in steps[run % len(steps):] + steps[:run % len(steps)]:
            out = step()
            for sample in out if isinstance(out, (list, tuple)) else [out]:
                result.add(sample)
                added.setdefault(sample.tool, []).append(sample.seconds)
                log(f"  run {run + 1}/{total}  {sample.tool:32} {sample.seconds:8.2f} s  rss {sample.peak_rss_mb:6.0f} MB")
        run += 1
        if run == total and 3 <= total < SPREAD_ROUNDS:
            spread = {tool: (max(xs) - min(xs)) / statistics.median(xs) for tool, xs in added.items() if min(xs) > 0}
            wide = {tool: f"{100 * v:.0f} %" for tool, v in spread.items() if v > SPREAD_LIMIT}
            if wide:
                log(f"  rounds spread more than {100 * SPREAD_LIMIT:.0f} % ({wide}): {SPREAD_ROUNDS} rounds")
                result.notes.append(f"rounds spread more than {100 * SPREAD_LIMIT:.0f} % ({', '.join(f'{t} {v}' for t, v in wide.items())}): "
                                    f"{SPREAD_ROUNDS} rounds")
                total = SPREAD_ROUNDS
                result.runs = max(result.runs, total)


LIBRARY = "projmig library, no Prefect"  # the same migration through projmig.commands.migrate: what Prefect costs


def _library(env: BenchEnv, project: str, dest: Any, options: dict[str, Any]) -> list[Sample]:
    inner, whole = tools.projmig(env, project, dest, options=options, mode="library", label=LIBRARY)
    inner.tool, whole.tool = f"{LIBRARY} (pipeline)", f"{LIBRARY} (process)"
    return [inner, whole]


def _copy_steps(env: BenchEnv, sample: SampleProject, *, projmig_options: dict[str, Any], s5cmd: bool, raw: bool,
                raw_part: int, same_endpoint: bool, library: bool = False) -> list[Callable[[], Any]]:
    def fresh(run: Callable[[Any], Any], **kw: Any) -> Callable[[], Any]:
        def step() -> Any:
            dest = env.fresh_destination(**kw)
            try:
                return run(dest)
            finally:
                env.drop_destination(dest)

        return step

    steps = [
        fresh(lambda d: tools.projmig(env, sample.uuid, d, options=projmig_options)),
        fresh(lambda d: tools.rclone(env, sample.uuid, d), with_db=False),
    ]
    if s5cmd:
        steps.append(fresh(lambda d: tools.s5cmd_down_up(env, sample.uuid, d), with_db=False))
    if library:
        steps.append(fresh(lambda d: _library(env, sample.uuid, d, projmig_options)))
    if raw:
        steps.append(fresh(lambda d: tools.raw(env, sample.objects, d, part_size=raw_part), with_db=False))
    if same_endpoint:
        steps += [
            fresh(lambda d: tools.projmig(env, sample.uuid, d, options=projmig_options, label="projmig same-endpoint"),
                  same_endpoint=True),
            fresh(lambda d: tools.rclone(env, sample.uuid, d, same_endpoint=True, label="rclone same-endpoint"),
                  same_endpoint=True, with_db=False),
            fresh(lambda d: tools.s5cmd_same_endpoint(env, sample.uuid, d), same_endpoint=True, with_db=False),
        ]
    return steps


@dataclass
class Sizes:
    """Data sizes of the scenarios (``smoke`` shrinks them to seconds)."""

    large: int = 1 * GiB
    large_part: int = 16 * MiB
    small_files: int = 1000
    small_size: int = 64 * KiB
    mixed_files: int = 199  # + the multipart one = 200 files
    mixed_max: int = 50 * MiB
    mixed_dir_objects: int = 100
    rerun_files: int = 10_000
    rerun_size: int = 1 * KiB
    rerun_nodes: int = 100
    same_endpoint: bool = True
    ephemeral_rerun: bool = True  # also time a rerun that starts Prefect's ephemeral API (~10 s)

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(large=12 * MiB, large_part=5 * MiB, small_files=20, small_size=4 * KiB, mixed_files=8,
                   mixed_max=256 * KiB, mixed_dir_objects=4, rerun_files=30, rerun_nodes=3, same_endpoint=True,
                   ephemeral_rerun=False)


def run_large(env: BenchEnv, runs: int, sizes: Sizes, options: dict[str, Any], log: Callable[[str], None]) -> ScenarioResult:
    spec = SampleSpec(**{**BARE, "nodes": 1, "files": 0, "multipart_size": sizes.large,
                         "multipart_part_size": sizes.large_part, "name": "bench large"})
    sample = env.seed(spec)
    result = ScenarioResult("large", f"one {sizes.large / MiB:.0f} MiB object ({sizes.large_part // MiB} MiB parts), "
                            "cross-endpoint", runs, len(sample.objects), sample.total_bytes)
    run_rounds(runs, _copy_steps(env, sample, projmig_options=options, s5cmd=True, raw=True, raw_part=sizes.large_part,
                              same_endpoint=False), result, log)
    projmig_split(result)
    result.targets = against_the_faster(result, ("rclone copy", "s5cmd down+up"))
    result.notes.append(f"projmig against a raw aiobotocore loop: flow {result.ratio('raw aiobotocore'):.2f}x, "
                        f"whole process {result.ratio('raw aiobotocore', 'projmig (process)'):.2f}x")
    return result


FLOW_LIMIT = 1.0  # the flow against the faster tool (issue 26's targets)
PROCESS_LIMIT = 0.8  # the whole command, CLI start included, against the same tool


def against_the_faster(result: ScenarioResult, tools_: tuple[str, ...], flow: str = "projmig (flow)",
                       process: str = "projmig (process)", what: str = "projmig") -> list[Target]:
    """Two targets: ``flow`` >= 1.0x and ``process`` >= 0.8x the fastest of ``tools_`` (ratios of medians)."""
    fastest = min(tools_, key=result.median)
    others = "; ".join(f"{t} {result.ratio(t, flow):.2f}x" for t in tools_)
    return [
        Target(f"{what} flow / {fastest}", result.ratio(fastest, flow), FLOW_LIMIT, True, note=f"({others})"),
        Target(f"{what} whole process / {fastest}", result.ratio(fastest, process), PROCESS_LIMIT, True),
    ]


def run_small(env: BenchEnv, runs: int, sizes: Sizes, options: dict[str, Any], log: Callable[[str], None]) -> ScenarioResult:
    spec = SampleSpec(**{**BARE, "nodes": 5, "files": sizes.small_files, "file_size": sizes.small_size,
                         "exact_file_size": True, "name": "bench many small"})
    sample = env.seed(spec)
    result = ScenarioResult("small", f"{len(sample.objects)} objects of {sizes.small_size // KiB} KiB", runs,
                            len(sample.objects), sample.total_bytes)
    run_rounds(runs, _copy_steps(env, sample, projmig_options=options, s5cmd=True, raw=True, raw_part=16 * MiB,
                              same_endpoint=sizes.same_endpoint, library=True), result, log)
    projmig_split(result)
    result.targets = against_the_faster(result, ("s5cmd down+up",))
    result.notes.append(
        f"Prefect's cost (the same migration without it, {LIBRARY}): flow {result.median('projmig (flow)'):.2f} s against "
        f"{result.median(f'{LIBRARY} (pipeline)'):.2f} s; whole process {result.median('projmig (process)'):.2f} s against "
        f"{result.median(f'{LIBRARY} (process)'):.2f} s; s5cmd down+up / the library's pipeline: "
        f"{result.ratio('s5cmd down+up', f'{LIBRARY} (pipeline)'):.2f}x")
    result.notes.append(f"rclone copy: {result.ratio('rclone copy'):.2f}x the flow")
    if "s5cmd (server-side)" in result.samples:
        result.targets += against_the_faster(result, ("s5cmd (server-side)",), "projmig same-endpoint (flow)",
                                             "projmig same-endpoint (process)", "projmig same-endpoint")
        result.notes.append(f"rclone same-endpoint: {result.ratio('rclone same-endpoint', 'projmig same-endpoint (flow)'):.2f}x")
    result.notes.append(f"Prefect orchestration: {100 * result.split['overhead_share']:.0f} % of the flow's time "
                        f"({result.split['task_runs']} task runs, {result.split['ms_per_task_run']:.0f} ms each)")
    return result


def run_mixed(env: BenchEnv, runs: int, sizes: Sizes, options: dict[str, Any], log: Callable[[str], None]) -> ScenarioResult:
    spec = SampleSpec(nodes=5, files=sizes.mixed_files, file_size=sizes.mixed_max, log_file_sizes=True,
                      directory_objects=sizes.mixed_dir_objects, directory_object_size=64 * KiB,
                      multipart_size=40 * MiB if sizes.mixed_max > MiB else 6 * MiB,
                      hidden_children=0, name="bench mixed")
    sample = env.seed(spec)
    result = ScenarioResult("mixed", f"5 nodes, {sizes.mixed_files + 1} files of 1 KiB-{sizes.mixed_max / MiB:g} MiB "
                            f"(log-uniform; one multipart) + a directory of {sizes.mixed_dir_objects} objects",
                            runs, len(sample.objects), sample.total_bytes)
    run_rounds(runs, _copy_steps(env, sample, projmig_options=options, s5cmd=True, raw=True, raw_part=16 * MiB,
                              same_endpoint=False), result, log)
    projmig_split(result)
    result.targets = against_the_faster(result, ("rclone copy", "s5cmd down+up"))
    return result


def run_rerun(env: BenchEnv, runs: int, sizes: Sizes, options: dict[str, Any], log: Callable[[str], None]) -> tuple[ScenarioResult, SampleProject]:
    spec = SampleSpec(**{**BARE, "nodes": sizes.rerun_nodes, "files": sizes.rerun_files, "file_size": sizes.rerun_size,
                         "exact_file_size": True, "name": "bench rerun"})
    began = time.perf_counter()
    sample = env.seed(spec)
    log(f"  seeded {len(sample.objects)} objects in {time.perf_counter() - began:.1f} s")
    result = ScenarioResult("rerun", f"no-op rerun after a complete migration of {len(sample.objects)} objects "
                            f"of {sizes.rerun_size // KiB} KiB ({sizes.rerun_nodes} nodes)",
                            runs, len(sample.objects), sample.total_bytes, reference="projmig rerun (flow)")
    dest = env.fresh_destination()
    try:
        first, first_proc = tools.projmig(env, sample.uuid, dest, options=options, label="projmig first run")
        assert first.detail["objects_copied"] == len(sample.objects), first.detail
        result.add(first)
        result.add(first_proc)
        log(f"  first migration: {first.seconds:.1f} s flow ({len(sample.objects) / first.seconds:.0f} obj/s), "
            f"insert stage {first.detail['stages'].get('insert', 0):.2f} s")

        def projmig_rerun() -> list[Sample]:
            flow, proc = tools.projmig(env, sample.uuid, dest, options=options, label="projmig rerun")
            assert flow.detail["status"] == "already-migrated" and flow.detail["copy_task_runs"] == 0, flow.detail
            return [flow, proc]

        def ephemeral_rerun() -> list[Sample]:
            return list(tools.projmig(env, sample.uuid, dest, options=options, ephemeral=True,
                                      label="projmig rerun, own ephemeral API"))

        def local_api_rerun() -> list[Sample]:
            # the CLI without PREFECT_API_URL: its local Prefect server, started once (below) and reused
            return list(tools.projmig(env, sample.uuid, dest, options=options, local_api=True,
                                      label="projmig rerun, local API"))

        def no_server_rerun() -> list[Sample]:
            # what an operator's plain `projmig migrate` meets first: no Prefect server anywhere (the
            # CLI runs the pipeline in its own process, nothing recorded in Prefect)
            env.stop_local_api()
            flow, proc = tools.projmig(env, sample.uuid, dest, options=options, local_api=True,
                                       label="projmig rerun, no server running")
            assert flow.detail["prefect"] is False, "with no server running the CLI ran a flow"
            return [flow, proc]

        def no_server_prefect_rerun() -> list[Sample]:
            # the same with --prefect: the CLI starts its local server (which then stays for later commands)
            env.stop_local_api()
            return list(tools.projmig(env, sample.uuid, dest, options=options, local_api=True, cli_args=["--prefect"],
                                      label="projmig rerun --prefect, no server running"))

        if sizes.ephemeral_rerun:
            tools.projmig(env, sample.uuid, dest, options=options, local_api=True, cli_args=["--prefect"],
                          label="local API start")
        steps = [
            projmig_rerun,
            lambda: tools.rclone(env, sample.uuid, dest, flags=["--checksum"], label="rclone copy --checksum"),
            *([ephemeral_rerun, local_api_rerun, no_server_rerun, no_server_prefect_rerun] if sizes.ephemeral_rerun else []),
        ]
        run_rounds(runs, steps, result, log)
    finally:
        env.drop_destination(dest)
        env.stop_local_api()
    projmig_split(result, "projmig rerun (flow)")
    # what the CLI costs beyond the flow, per way of reaching a Prefect API (medians)
    for label in ("projmig rerun", "projmig rerun, local API", "projmig rerun, own ephemeral API",
                  "projmig rerun, no server running", "projmig rerun --prefect, no server running"):
        if f"{label} (process)" in result.samples:
            overhead = result.median(f"{label} (process)") - result.median(f"{label} (flow)")
            result.notes.append(f"CLI process overhead (process - flow), {label}: {overhead:.2f} s")
    result.targets = [
        Target("rclone --checksum time / projmig no-op rerun time (flow)", result.ratio("rclone copy --checksum"),
               RERUN_LIMIT, True,
               note=f"(whole process, Prefect server up: {result.ratio('rclone copy --checksum', 'projmig rerun (process)'):.2f}x)"),
    ]
    if "projmig rerun, no server running (process)" in result.samples:
        cold, warm = "projmig rerun, no server running (process)", "projmig rerun (process)"
        result.targets.append(Target(
            "rclone --checksum / projmig no-op rerun, CLI with no Prefect server running (whole processes)",
            result.ratio("rclone copy --checksum", cold), RERUN_LIMIT, True,
            note=f"(it takes {result.median(cold) / result.median(warm):.2f}x the time of a CLI run with a server up)"))
    return result, sample


RERUN_LIMIT = 2.0  # a no-op rerun against `rclone copy --checksum` (issue 26: no worse than 2.51x measured)


def run_insert(env: BenchEnv, runs: int, sample: SampleProject, log: Callable[[str], None]) -> ScenarioResult:
    result = ScenarioResult("insert", f"single-transaction insert of {len(sample.file_ids)} file rows + "
                            f"{len(sample.node_ids)} nodes (projmig alone)", runs, 0, 0, reference="projmig insert (flow)")

    def one() -> Sample:
        dest = env.fresh_destination()
        try:
            flow, _ = tools.projmig(env, sample.uuid, dest, mode="insert", label="projmig insert")
            return flow
        finally:
            env.drop_destination(dest)

    run_rounds(runs, [one], result, log)
    rows = result.samples["projmig insert (flow)"][0].detail["rows_inserted"]
    med = result.median("projmig insert (flow)")
    result.split = {"rows": rows, "rows_per_s": round(rows / med), "insert_seconds": round(med, 3),
                    "rows_per_table": result.samples["projmig insert (flow)"][0].detail["rows_per_table"]}
    result.targets = [Target(f"insert of {rows} rows", med, 2.0, False, " s", note=f"({rows / med:,.0f} rows/s)")]
    return result


def memory(results: dict[str, ScenarioResult]) -> ScenarioResult:
    out = ScenarioResult("memory", "peak RSS of projmig's process (ru_maxrss) per scenario", 0, 0, 0)
    worst = 0.0
    for name, res in results.items():
        for tool, samples in res.samples.items():
            if tool.startswith("projmig") and "(process)" in tool or tool == "projmig insert (flow)":
                peak = max(s.peak_rss_mb for s in samples)
                out.notes.append(f"{name:7} {tool:40} peak RSS {peak:6.0f} MB   (process tree incl. children: "
                                 f"{max(s.tree_peak_rss_mb for s in samples):.0f} MB)")
                worst = max(worst, peak)
    out.targets = [Target("largest peak RSS of a projmig process", worst, 400, False, " MB")]
    return out
