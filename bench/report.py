"""Tables for people, JSON for machines."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from .scenarios import MiB, ScenarioResult


def table(result: ScenarioResult) -> str:
    lines = [f"== {result.name}: {result.title}" + (f"  (median of {result.runs} runs)" if result.runs else "")]
    if result.samples:
        lines.append(f"{'tool':42} {'median s':>9}  {'runs (s)':24} {'MiB/s':>7} {'obj/s':>8} {'CPU s':>6} {'RSS MB':>7}"
                     "  projmig speed ÷ tool")
        for tool, samples in result.samples.items():
            med = result.median(tool)
            runs = " ".join(f"{s.seconds:.2f}" for s in samples)
            mbs = f"{result.bytes / MiB / med:7.1f}" if result.bytes else f"{'':7}"
            ops = f"{result.objects / med:8.1f}" if result.objects else f"{'':8}"
            ratio = f"{result.ratio(tool):.2f}x" if result.reference in result.samples else ""
            cpu = statistics.median(s.cpu_seconds for s in samples)
            lines.append(f"{tool:42} {med:9.2f}  {runs:24} {mbs} {ops} {cpu:6.1f} {result.peak_rss(tool):7.0f}  {ratio:>8}")
    split = result.split
    if "overhead_seconds" in split:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in split["stages"].items())  # type: ignore[union-attr]
        lines.append(
            f"projmig time split (medians): flow {split['flow_seconds']:.2f} s = projmig's own work "
            f"{split['library_seconds']:.2f} s (copy task bodies {split['transfer_seconds']:.2f} s) + Prefect orchestration "
            f"{split['overhead_seconds']:.2f} s ({100 * split['overhead_share']:.1f}%); {split['task_runs']} task runs "
            f"({split['copy_task_runs']} copy) -> {split['ms_per_task_run']:.0f} ms of orchestration per task run; "
            f"CPU {split['cpu_seconds']:.1f} s; imports before the flow {split['import_seconds']:.1f} s"
        )
        lines.append(f"projmig stages (s): {stages}")
    elif split and not {"curve", "points", "ratios", "skipped"} & set(split):  # (those scenarios say theirs in notes)
        lines.append("  " + ", ".join(f"{k}: {v}" for k, v in split.items()))
    lines += [f"  {n}" for n in result.notes]
    if result.targets:
        lines.append("targets:")
        lines += [f"  {t.line()}" for t in result.targets]
    return "\n".join(lines)


def write_json(results: dict[str, ScenarioResult], out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = {
        "meta": {**meta, "host": platform.node(), "python": platform.python_version(), "time": stamp},
        "scenarios": {name: r.to_json() for name, r in results.items()},
    }
    path = out_dir / f"bench-{meta.get('selection', 'run')}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    (out_dir / "latest.json").write_text(json.dumps(data, indent=2, default=str))
    return path
