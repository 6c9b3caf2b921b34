"""Pictures of a bench run, written beside its JSON: the scale curve (time per object of every
stage against the project's size, wall and CPU) and the tool comparison (each scenario's median
rate per tool: objects/s, MiB/s for the large object). ``python -m bench.plot RESULTS.json [OUT.png]`` draws one from a saved run.

matplotlib is the ``bench`` extra (``pip install -e '.[bench]'``); without it the bench still
writes its JSON and says that no picture was drawn.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

# the tools of the comparison chart, in the order drawn; each scenario shows those it measured
COMPARED = {
    "small": ["projmig (flow)", "projmig (process)", "rclone copy", "s5cmd down+up", "raw aiobotocore"],
    "small same-endpoint": ["projmig same-endpoint (flow)", "projmig same-endpoint (process)",
                            "rclone same-endpoint", "s5cmd (server-side)"],
    "large": ["projmig (flow)", "projmig (process)", "rclone copy", "s5cmd down+up", "raw aiobotocore"],
    "mixed": ["projmig (flow)", "projmig (process)", "rclone copy", "s5cmd down+up", "raw aiobotocore"],
    "rerun": ["projmig rerun (flow)", "projmig rerun (process)", "projmig rerun, no server running (process)",
              "rclone copy --checksum"],
    "consolidation": ["projmig consolidation (flow)", "projmig single user (flow)", "projmig consolidation, dask (flow)"],
}
STAGE_ORDER = ["plan", "first migration", "no-op rerun", "verify", "insert", "rclone copy", "s5cmd down+up",
               "rclone copy --checksum"]


def _comparison(data: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]]]]:
    """(scenario title, [(tool, objects or MiB per second)]) for every compared scenario present."""
    out = []
    scenarios = data["scenarios"]
    for name, tools in COMPARED.items():
        scenario = scenarios.get(name.split()[0])
        if not scenario:
            continue
        measured = scenario["tools"]
        by_bytes = name == "large"
        rates = []
        for tool in tools:
            if tool in measured:
                entry = measured[tool]
                rate = (scenario["bytes"] / 2**20 if by_bytes else scenario["objects"]) / entry["median_seconds"]
                rates.append((tool, rate))
        if len(rates) > 1:
            unit = "MiB/s" if by_bytes else "objects/s"
            title = {"rerun": "no-op rerun"}.get(name, name)
            out.append((f"{title}: {scenario['objects']:,} objects ({unit})", rates))
    return out


def draw(data: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curve = data["scenarios"].get("scale", {}).get("split", {}).get("curve")
    compared = _comparison(data)
    panels = (2 if curve else 0) + len(compared)
    if panels == 0:
        raise ValueError("nothing to draw: neither the scale scenario nor a tool comparison in these results")
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.4 * columns, 4.0 * rows + 0.4), squeeze=False)
    cells = [ax for row in axes for ax in row]
    index = 0
    if curve:
        for what, title in (("seconds", "wall time"), ("cpu_seconds", "CPU time of the process")):
            ax = cells[index]
            index += 1
            for stage in STAGE_ORDER:
                values = curve["stages"].get(stage)
                if values is None:
                    continue
                style = "--" if stage.startswith(("rclone", "s5cmd")) else "-"
                ax.plot(curve["objects"], [1000 * v for v in _per_object(values[what], curve["objects"])],
                        style, marker="o", label=stage)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("objects in the project")
            ax.set_ylabel(f"ms of {title} per object")
            ax.set_title(f"scale: {title} per object by stage\n(flat or falling = linear)", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    for title, rates in compared:
        ax = cells[index]
        index += 1
        names = [tool for tool, _ in rates]
        values = [rate for _, rate in rates]
        colors = ["tab:blue" if n.startswith("projmig") else "tab:gray" for n in names]
        bars = ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), [n.replace(" (", "\n(") for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}", va="center", fontsize=7)
        ax.set_xlim(0, max(values) * 1.25)
    for ax in cells[index:]:
        ax.axis("off")
    meta = data.get("meta", {})
    load = meta.get("load_average", {})
    fig.suptitle(f"projmig bench {meta.get('selection', '')} {meta.get('time', '')}: medians of {meta.get('runs', '?')} "
                 f"runs\nload average {load.get('start', '?')} -> {load.get('end', '?')} (1/5/15 min)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _per_object(seconds: list[float], objects: list[int]) -> list[float]:
    return [s / n for s, n in zip(seconds, objects)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plot")
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    args = parser.parse_args()
    out = args.out or args.results.with_suffix(".png")
    print(draw(json.loads(args.results.read_text()), out))


if __name__ == "__main__":
    main()
