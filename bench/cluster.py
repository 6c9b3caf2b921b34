"""``python -m bench dask``: the many-small-files migration at 10,000 objects with its copy task runs
on a real Dask cluster (a ``dask scheduler`` and a ``dask worker`` process with two worker processes,
started here on 127.0.0.1, the flow given ``host.dask_address``), next to the same migration in one
process (issue 26, point 6). On this machine's 2 cores there is no target: the figure shows what
the cluster costs or gains where the workers share the cores with the flow and the servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projmig.sandbox import free_port
from projmig.sandbox.processes import spawn_logged, stop_process
from projmig.sandbox.sample import SampleSpec

from . import tools
from .env import BenchEnv
from .scenarios import BARE, KiB, ScenarioResult, run_rounds
from .tools import REPO, Sample

SINGLE, CLUSTER = "projmig one process", "projmig on a Dask cluster"


@dataclass
class DaskSizes:
    files: int = 10_000
    file_size: int = 64 * KiB
    workers: int = 2  # worker processes
    threads: int = 2  # per worker process

    @classmethod
    def smoke(cls) -> DaskSizes:
        return cls(files=20, file_size=4 * KiB)


@contextmanager
def dask_cluster(env: BenchEnv, sizes: DaskSizes) -> Iterator[str]:
    """A scheduler and a worker process with ``sizes.workers`` worker processes; their environment:
    this checkout importable and the bench's Prefect API (their task runs report to it)."""
    from distributed import Client

    bin_dir = Path(sys.executable).parent
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    child = {k: v for k, v in os.environ.items() if not k.startswith(("PROJMIG_", "PREFECT_", "AWS_"))}
    child.update(env.prefect_env(), PYTHONPATH=str(REPO))
    logs = env.workdir / "dask"
    logs.mkdir(exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, cmd in (
            ("scheduler", [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]),
            ("worker", [str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1", "--nworkers", str(sizes.workers),
                        "--nthreads", str(sizes.threads), "--no-dashboard", "--local-directory", str(logs / "space")]),
        ):
            processes.append(spawn_logged(cmd, env=child, log=logs / f"{name}.log", cwd=REPO))
            if name == "scheduler":
                time.sleep(1.0)
        with Client(address, timeout=60) as client:
            client.wait_for_workers(sizes.workers, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            stop_process(process, timeout=30, group=True)  # (a worker's own worker processes with it)


def run_dask(env: BenchEnv, runs: int, sizes: DaskSizes, options: dict[str, Any], log: Callable[[str], None]) -> ScenarioResult:
    sample = env.seed(SampleSpec(**{**BARE, "nodes": 5, "files": sizes.files, "file_size": sizes.file_size,
                                    "exact_file_size": True, "name": "bench dask"}))
    result = ScenarioResult(
        "dask", f"{len(sample.objects):,} objects of {sizes.file_size // KiB} KiB, copy task runs on a Dask cluster "
        f"({sizes.workers} worker processes × {sizes.threads} threads) vs in one process", runs,
        len(sample.objects), sample.total_bytes, reference=f"{SINGLE} (flow)")

    def migrate(label: str, address: str | None) -> Callable[[], list[Sample]]:
        def step() -> list[Sample]:
            dest = env.fresh_destination(new_bucket=True)  # the workers' cache is shared by the rounds
            try:
                settings = env.settings(sample.uuid, dest, options)
                if address:
                    settings["options"]["task_runner"] = "dask"
                    settings["host"] = {"dask_address": address}
                return list(tools.projmig(env, sample.uuid, dest, settings=settings, label=label))
            finally:
                env.drop_destination(dest)

        return step

    with dask_cluster(env, sizes) as address:
        log(f"  Dask scheduler at {address}, {sizes.workers} worker processes")
        run_rounds(runs, [migrate(SINGLE, None), migrate(CLUSTER, address)], result, log)
    result.notes.append(f"on the cluster: {result.ratio(f'{SINGLE} (flow)', f'{CLUSTER} (flow)'):.2f}x the one-process flow's speed "
                        f"(no target: 2 cores shared by the flow, the workers and the servers)")
    return result
